//! The single writer of the log: records are sealed (seq, prev, hash) in one order, and
//! appends are acknowledged only once they are written (and, with `fsync = "always"`,
//! durable), so the chain never forks and a failed write is never mistaken for a recorded
//! one. With `fsync = "always"` one thread owns the files. With group commit the appending
//! task seals and writes in place (no thread hop per record) and a second thread fsyncs
//! what was written and moves `HEAD`, so no appender waits for the disk. Sealing and
//! writing take separate locks: a record is sealed in about a microsecond, and one `write`
//! carries every record sealed before it, so concurrent appenders share writes instead of
//! queueing behind each other's.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::chain::{self, Chain, Fields, GENESIS};
use crate::read::{list_segments, segment_name, split_lines};
use crate::{AuditError, AuditEvent, AuditOptions, FsyncPolicy};

/// A handle on the open log; clones share the one writer thread.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

/// Append latency (enqueue to durable acknowledgement), for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyStats {
    /// Appends acknowledged (successfully or not).
    pub count: u64,
    /// Sum of their latencies, in microseconds.
    pub sum_us: u64,
    /// Largest latency seen, in microseconds.
    pub max_us: u64,
    /// Batches made durable, i.e. fsyncs of the log.
    pub batches: u64,
}

/// Contents of the `HEAD` file.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

struct Inner {
    tx: Option<mpsc::Sender<Job>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Group commit: the writer, used in place by appenders (no writer thread); the
    /// group-commit thread holds a weak reference to write what [`AuditLog::submit`] left.
    direct: Option<Arc<Direct>>,
}

/// Group commit's writer, shared by the appending tasks. Lock order: `files`, then `tip`,
/// then the group state's `pending`.
struct Direct {
    /// Held only to seal a record or to take the sealed lines.
    tip: Mutex<Tip>,
    /// Held while writing; `None` once closed.
    files: Mutex<Option<Writer>>,
    group: Arc<GroupState>,
}

/// The end of the chain as sealed so far, and the sealed lines no write has carried out.
struct Tip {
    seq: u64,
    hash: String,
    lines: Vec<u8>,
    /// Since the lines were last taken, a submitted record told the group-commit thread to
    /// write them if no append does.
    announced: bool,
}

impl Tip {
    fn new(seq: u64, hash: String) -> Self {
        Self {
            seq,
            hash,
            lines: Vec::new(),
            announced: false,
        }
    }

    /// Seals `fields` as the next record; returns its seq.
    fn seal(&mut self, fields: &Fields) -> Result<u64, String> {
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let seq = self.seq + 1;
        self.hash = chain::seal_fields(&mut self.lines, seq, &time, &self.hash, fields)
            .map_err(|e| format!("cannot serialise event: {e}"))?;
        self.lines.push(b'\n');
        self.seq = seq;
        Ok(seq)
    }

    /// Moves the sealed lines into `out` (empty); returns the last one's seq and hash.
    fn take(&mut self, out: &mut Vec<u8>) -> (u64, String) {
        std::mem::swap(&mut self.lines, out);
        self.announced = false;
        (self.seq, self.hash.clone())
    }
}

struct Shared {
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    head: Mutex<(u64, String)>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
    batches: AtomicU64,
}

enum Reply {
    Async(oneshot::Sender<Result<u64, AuditError>>),
    Blocking(mpsc::SyncSender<Result<u64, AuditError>>),
    /// [`AuditLog::submit`]: nobody waits.
    None,
}

enum Job {
    Append {
        event: AuditEvent,
        queued: Instant,
        reply: Reply,
    },
    /// Points the writer's segment handle at another file, to exercise the failure path
    /// with a real failing device.
    #[cfg(test)]
    Redirect { path: PathBuf, done: mpsc::SyncSender<()> },
}

struct Writer {
    dir: PathBuf,
    opts: AuditOptions,
    shared: Arc<Shared>,
    segment_no: u64,
    /// Shared with the group-commit thread, which fsyncs it.
    segment: Arc<File>,
    segment_len: u64,
    /// The seq of the last record written.
    written: u64,
    /// Lines on their way to the files (kept for its capacity).
    buf: Vec<u8>,
    failed: Option<String>,
    /// Group commit: hands written records to the thread that makes them durable.
    group: Option<GroupCommit>,
    /// Held for the writer's lifetime; the OS lock goes with the file handle.
    _lock: File,
}

/// The writer's side of group commit.
struct GroupCommit {
    state: Arc<GroupState>,
    thread: JoinHandle<()>,
}

/// What the writer has written and the syncer has not yet made durable.
struct GroupState {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The writer, to write submitted records no append carried out in time.
    writer: std::sync::OnceLock<std::sync::Weak<Direct>>,
}

#[derive(Default)]
struct Pending {
    /// The segment the last records went to, and the last record: `(seq, hash)`.
    written: Option<(Arc<File>, u64, String)>,
    /// When the oldest record not yet fsynced was written (or submitted).
    since: Option<Instant>,
    /// Submitted records may wait in the tip, unwritten.
    deferred: bool,
    stop: bool,
}

/// Records per batch at most, so one batch's latency stays bounded under a flood.
const MAX_BATCH: usize = 4096;

pub(crate) const HEAD_FILE: &str = "HEAD";

impl AuditLog {
    /// Opens (or creates) the log in `dir`, checks its tail against `HEAD` and starts the
    /// writer thread. Refuses a log whose tail does not verify, naming the bad record.
    pub fn open(dir: &Path, opts: AuditOptions) -> Result<Self, AuditError> {
        fs::create_dir_all(dir).map_err(|e| AuditError::io("create audit directory", dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| AuditError::io("open lock file", &lock_path, e))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => AuditError::Locked(dir.to_owned()),
            fs::TryLockError::Error(e) => AuditError::io("lock audit directory", &lock_path, e),
        })?;

        let (seq, hash, segment_no) = resume(dir)?;
        let segment_no = segment_no.unwrap_or(1);
        let seg_path = dir.join(segment_name(segment_no));
        let segment = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&seg_path)
            .map_err(|e| AuditError::io("open segment", &seg_path, e))?;
        let segment_len = segment
            .metadata()
            .map_err(|e| AuditError::io("stat segment", &seg_path, e))?
            .len();
        sync_dir(dir)?;

        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
            head: Mutex::new((seq, hash.clone())),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        });
        let group = match opts.fsync {
            FsyncPolicy::Always => None,
            FsyncPolicy::Group { max_delay } => {
                let state = Arc::new(GroupState {
                    pending: Mutex::new(Pending::default()),
                    wake: Condvar::new(),
                    writer: std::sync::OnceLock::new(),
                });
                let syncer = Syncer {
                    dir: dir.to_owned(),
                    shared: shared.clone(),
                    state: state.clone(),
                    max_delay,
                    head_written: Instant::now(),
                    head_behind: None,
                };
                let thread = std::thread::Builder::new()
                    .name("audit-sync".into())
                    .spawn(move || syncer.run())
                    .map_err(|e| AuditError::io("start group-commit thread", dir, e))?;
                Some(GroupCommit { state, thread })
            }
        };
        let writer = Writer {
            dir: dir.to_owned(),
            opts,
            shared: shared.clone(),
            segment_no,
            segment: Arc::new(segment),
            segment_len,
            written: seq,
            buf: Vec::new(),
            failed: None,
            group,
            _lock: lock,
        };
        tracing::info!(dir = %dir.display(), seq, "Audit log opened.");
        let tip = Tip::new(seq, hash);
        if let Some(group) = &writer.group {
            // Group commit: a write is a short syscall, made by the appending task itself;
            // the disk waits happen on the group-commit thread.
            let state = Arc::clone(&group.state);
            let direct = Arc::new(Direct {
                tip: Mutex::new(tip),
                files: Mutex::new(Some(writer)),
                group: Arc::clone(&state),
            });
            let _ = state.writer.set(Arc::downgrade(&direct));
            return Ok(Self {
                inner: Arc::new(Inner {
                    tx: None,
                    shared,
                    thread: None,
                    direct: Some(direct),
                }),
            });
        }
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx, tip))
            .map_err(|e| AuditError::io("start writer thread", dir, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx: Some(tx),
                shared,
                thread: Some(thread),
                direct: None,
            }),
        })
    }

    /// Appends `event`; returns its seq once it is written (group commit) or durable
    /// (`fsync = "always"`).
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        if let Some(direct) = &self.inner.direct {
            return self.append_direct(direct, event);
        }
        let (tx, rx) = oneshot::channel();
        self.send(event, Reply::Async(tx))?;
        rx.await.map_err(|_| AuditError::WriterGone)?
    }

    /// [`Self::append`] for callers outside an async runtime (the CLI).
    pub fn append_blocking(&self, event: AuditEvent) -> Result<u64, AuditError> {
        if let Some(direct) = &self.inner.direct {
            return self.append_direct(direct, event);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(event, Reply::Blocking(tx))?;
        rx.recv().map_err(|_| AuditError::WriterGone)?
    }

    /// Seals the record, then writes it unless another appender's write already carried
    /// it (a write takes every line sealed before it).
    fn append_direct(&self, direct: &Direct, event: AuditEvent) -> Result<u64, AuditError> {
        if !self.healthy() {
            return Err(AuditError::Unhealthy(self.last_error().unwrap_or_default()));
        }
        let queued = Instant::now();
        let fields = self.fields(&event)?;
        let seq = lock(&direct.tip).seal(&fields).map_err(|e| self.failure(&e))?;
        let mut guard = lock(&direct.files);
        let writer = guard.as_mut().ok_or(AuditError::WriterGone)?;
        let written = if writer.written < seq {
            writer.write_tip(&direct.tip, false)
        } else {
            Ok(())
        };
        writer.record_latency(queued);
        written.map_err(AuditError::Unhealthy)?;
        if writer.written < seq {
            // Sealed after a failed write: never written.
            return Err(AuditError::Unhealthy(self.last_error().unwrap_or_default()));
        }
        Ok(seq)
    }

    fn fields(&self, event: &AuditEvent) -> Result<Fields, AuditError> {
        Fields::of(event).map_err(|e| self.failure(&format!("cannot serialise event: {e}")))
    }

    /// Fails the log with `e`.
    fn failure(&self, e: &str) -> AuditError {
        self.inner.shared.fail(e);
        AuditError::Unhealthy(e.to_owned())
    }

    /// Records `event` without waiting for it to be written: for what happened after a
    /// request was already decided and forwarded (how a statement completed), where no
    /// caller needs the acknowledgement. The record is sealed into the chain now, in order;
    /// with group commit it is written together with the next appended record, or by the
    /// group-commit thread within its delay, and made durable with them; with
    /// `fsync = "always"` the writer thread writes and fsyncs it in its next batch. A
    /// record submitted just before the gateway process dies can be lost; one appended is
    /// never. Fails only when the log is already unhealthy.
    pub fn submit(&self, event: AuditEvent) -> Result<(), AuditError> {
        let Some(direct) = &self.inner.direct else {
            return self.send(event, Reply::None);
        };
        if !self.healthy() {
            return Err(AuditError::Unhealthy(self.last_error().unwrap_or_default()));
        }
        let fields = self.fields(&event)?;
        let mut tip = lock(&direct.tip);
        tip.seal(&fields).map_err(|e| self.failure(&e))?;
        if !tip.announced {
            // The first record waiting since the last write: the group-commit thread
            // writes it within its delay unless an append carries it first.
            tip.announced = true;
            let mut pending = lock(&direct.group.pending);
            pending.deferred = true;
            if pending.since.is_none() {
                pending.since = Some(Instant::now());
                direct.group.wake.notify_one();
            }
        }
        Ok(())
    }

    /// False once a write or fsync failed; the gateway must then refuse new requests.
    pub fn healthy(&self) -> bool {
        self.inner.shared.healthy.load(Ordering::Acquire)
    }

    /// The failure that made the log unhealthy.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last durable record: `(seq, hash)`, `(0, GENESIS)` for an empty log.
    pub fn head(&self) -> (u64, String) {
        self.inner
            .shared
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Append latency so far.
    pub fn write_latency(&self) -> LatencyStats {
        let s = &self.inner.shared;
        LatencyStats {
            count: s.count.load(Ordering::Relaxed),
            sum_us: s.sum_us.load(Ordering::Relaxed),
            max_us: s.max_us.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
        }
    }

    fn send(&self, event: AuditEvent, reply: Reply) -> Result<(), AuditError> {
        if !self.healthy() {
            return Err(AuditError::Unhealthy(self.last_error().unwrap_or_default()));
        }
        let tx = self.inner.tx.as_ref().ok_or(AuditError::WriterGone)?;
        tx.send(Job::Append {
            event,
            queued: Instant::now(),
            reply,
        })
        .map_err(|_| AuditError::WriterGone)
    }

    #[cfg(test)]
    pub(crate) fn redirect_segment(&self, path: &Path) {
        if let Some(direct) = &self.inner.direct {
            let mut guard = lock(&direct.files);
            let writer = guard.as_mut().expect("writer open");
            writer.segment = Arc::new(OpenOptions::new().write(true).open(path).expect("open redirect target"));
            return;
        }
        let (done, wait) = mpsc::sync_channel(1);
        let job = Job::Redirect {
            path: path.to_owned(),
            done,
        };
        self.inner
            .tx
            .as_ref()
            .expect("writer running")
            .send(job)
            .expect("writer running");
        wait.recv().expect("writer redirected");
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("head", &self.head())
            .field("healthy", &self.healthy())
            .finish()
    }
}

impl Drop for Inner {
    /// Closing the channel lets the writer finish what is queued; joining releases the
    /// directory lock before `drop` returns, so the log can be reopened at once.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("The audit writer thread panicked.");
        }
        if let Some(direct) = &self.direct {
            direct.close();
        }
    }
}

impl Direct {
    /// Writes what was submitted and not yet written, then stops the group-commit thread.
    fn close(&self) {
        let Some(mut writer) = lock(&self.files).take() else {
            return;
        };
        if let Err(e) = writer.write_tip(&self.tip, false) {
            tracing::error!(error = %e, "Writing the last submitted audit records failed.");
        }
        writer.close();
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>, mut tip: Tip) {
        let mut batch = Vec::new();
        while let Ok(first) = rx.recv() {
            self.collect(first, &mut batch);
            // Natural group commit: whatever queued up meanwhile shares this write.
            while batch.len() < MAX_BATCH
                && let Ok(job) = rx.try_recv()
            {
                self.collect(job, &mut batch);
            }
            if batch.is_empty() {
                continue;
            }
            let durable = matches!(self.opts.fsync, FsyncPolicy::Always);
            self.commit(&mut tip, std::mem::take(&mut batch), durable);
        }
        self.close();
    }

    /// The syncer makes what was written durable and stops; the directory lock goes with
    /// `self`.
    fn close(mut self) {
        if let Some(group) = self.group.take() {
            lock(&group.state.pending).stop = true;
            group.state.wake.notify_one();
            if group.thread.join().is_err() {
                tracing::error!("The audit group-commit thread panicked.");
            }
        }
    }

    fn fail(&mut self, e: &str) {
        if self.failed.is_none() {
            self.shared.fail(e);
            self.failed = Some(e.to_string());
        }
    }

    fn collect(&mut self, job: Job, batch: &mut Vec<(AuditEvent, Instant, Reply)>) {
        match job {
            Job::Append { event, queued, reply } => batch.push((event, queued, reply)),
            #[cfg(test)]
            Job::Redirect { path, done } => {
                self.segment = Arc::new(
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .expect("open redirect target"),
                );
                let _ = done.send(());
            }
        }
    }

    /// Seals, writes (and with `durable`, fsyncs) and acknowledges one batch. On failure
    /// every waiting sender gets the error and the log stays refused. Records of a failed
    /// batch may still be on disk (e.g. written but not fsynced, or HEAD failed): they
    /// verify, so the log can hold more than was acknowledged but never less.
    fn commit(&mut self, tip: &mut Tip, batch: Vec<(AuditEvent, Instant, Reply)>, durable: bool) {
        let result = self
            .seal_batch(tip, batch.iter().map(|(e, _, _)| e))
            .and_then(|first| self.write_sealed(|buf| tip.take(buf), durable).map(|()| first));
        for (i, (_, queued, reply)) in batch.into_iter().enumerate() {
            let answer = match &result {
                Ok(first_seq) => Ok(first_seq + i as u64),
                Err(e) => Err(AuditError::Unhealthy(e.clone())),
            };
            if !matches!(reply, Reply::None) {
                self.record_latency(queued);
            }
            // A caller that gave up waiting no longer needs the answer.
            let _ = match reply {
                Reply::Async(tx) => tx.send(answer).map_err(drop),
                Reply::Blocking(tx) => tx.send(answer).map_err(drop),
                Reply::None => Ok(()),
            };
        }
    }

    /// Seals a batch into `tip` unless the log has failed; returns its first seq.
    fn seal_batch<'a>(&mut self, tip: &mut Tip, events: impl Iterator<Item = &'a AuditEvent>) -> Result<u64, String> {
        self.check()?;
        let first = tip.seq + 1;
        for event in events {
            let sealed = Fields::of(event)
                .map_err(|e| format!("cannot serialise event: {e}"))
                .and_then(|fields| tip.seal(&fields));
            if let Err(e) = sealed {
                self.fail(&e);
                return Err(e);
            }
        }
        Ok(first)
    }

    /// Writes every line sealed in `tip` so far (group commit: the caller's and whatever
    /// other appenders sealed meanwhile). The tip is locked only to take the lines.
    fn write_tip(&mut self, tip: &Mutex<Tip>, durable: bool) -> Result<(), String> {
        self.write_sealed(|buf| lock(tip).take(buf), durable)
    }

    /// Writes the lines `take` moves into the writer's buffer (returning the last one's seq
    /// and hash); the buffer keeps its capacity for the next write.
    fn write_sealed(&mut self, take: impl FnOnce(&mut Vec<u8>) -> (u64, String), durable: bool) -> Result<(), String> {
        let mut buf = std::mem::take(&mut self.buf);
        let (seq, hash) = take(&mut buf);
        let result = self.write_checked(&buf, seq, &hash, durable);
        buf.clear();
        self.buf = buf;
        result
    }

    /// The log has not failed, here or on the group-commit thread.
    fn check(&self) -> Result<(), String> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            // The group-commit thread failed to fsync: nothing more is acknowledged.
            None if !self.shared.healthy.load(Ordering::Acquire) => {
                Err(lock(&self.shared.last_error).clone().unwrap_or_default())
            }
            None => Ok(()),
        }
    }

    /// Writes sealed `lines`, the last of them `(seq, hash)`, unless the log has failed; a
    /// failure now fails the log.
    fn write_checked(&mut self, lines: &[u8], seq: u64, hash: &str, durable: bool) -> Result<(), String> {
        self.check()?;
        if lines.is_empty() {
            return Ok(());
        }
        let result = self.write_lines(lines, seq, hash, durable);
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    /// Writes whole lines, starting a new segment before a line that would take the
    /// current one past its size (a segment is complete and durable before the next one
    /// starts; a line larger than a segment gets one of its own).
    fn write_lines(&mut self, lines: &[u8], seq: u64, hash: &str, durable: bool) -> Result<(), String> {
        let max = self.opts.segment_max_bytes;
        let mut rest = lines;
        while !rest.is_empty() {
            let fits = if self.segment_len + rest.len() as u64 <= max {
                rest.len()
            } else {
                whole_lines_within(rest, max.saturating_sub(self.segment_len))
            };
            let take = if fits == 0 && self.segment_len == 0 {
                rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1)
            } else {
                fits
            };
            if take == 0 {
                self.segment
                    .sync_data()
                    .map_err(|e| format!("cannot fsync {}: {e}", segment_name(self.segment_no)))?;
                self.rotate()?;
                continue;
            }
            let (now, later) = rest.split_at(take);
            (&*self.segment)
                .write_all(now)
                .map_err(|e| format!("cannot write {}: {e}", segment_name(self.segment_no)))?;
            self.segment_len += now.len() as u64;
            rest = later;
        }
        if durable {
            self.segment
                .sync_data()
                .map_err(|e| format!("cannot fsync {}: {e}", segment_name(self.segment_no)))?;
        }
        self.written = seq;
        if durable {
            // The records are durable now; HEAD only has to follow.
            self.shared.batches.fetch_add(1, Ordering::Relaxed);
            write_head(&self.dir, seq, hash)?;
            *lock(&self.shared.head) = (seq, hash.to_owned());
        } else if let Some(group) = &self.group {
            // HEAD moves only after the fsync, so it never names a record a crash could lose:
            // the syncer fsyncs this segment, then writes HEAD.
            let mut pending = lock(&group.state.pending);
            pending.written = Some((Arc::clone(&self.segment), seq, hash.to_owned()));
            if pending.since.is_none() {
                pending.since = Some(Instant::now());
                group.state.wake.notify_one();
            }
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), String> {
        let next = self.segment_no + 1;
        let path = self.dir.join(segment_name(next));
        self.segment = Arc::new(
            OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        );
        sync_dir(&self.dir).map_err(|e| e.to_string())?;
        self.segment_no = next;
        self.segment_len = 0;
        Ok(())
    }
}

/// Group commit's second thread: fsyncs what the writer wrote, at most `max_delay` after
/// it was written, then moves HEAD — at most every [`HEAD_INTERVAL`], and on close.
struct Syncer {
    dir: PathBuf,
    shared: Arc<Shared>,
    state: Arc<GroupState>,
    max_delay: Duration,
    /// When HEAD was last rewritten.
    head_written: Instant,
    /// The last fsynced record, when HEAD does not name it yet.
    head_behind: Option<(u64, String)>,
}

/// How often group commit rewrites HEAD while records keep coming. HEAD is a crash-safety
/// marker (it never names an unsynced record, and a log shorter than HEAD says is refused);
/// a HEAD behind the log is fine (see `resume`), so rewriting it — a file create, write,
/// fsync and rename — after every 5 ms fsync would cost more than the fsync itself.
const HEAD_INTERVAL: Duration = Duration::from_millis(100);

impl Syncer {
    fn run(mut self) {
        let state = Arc::clone(&self.state);
        loop {
            let mut pending = lock(&state.pending);
            while pending.since.is_none() && !pending.stop {
                if self.head_behind.is_some() {
                    // Records stopped coming: let HEAD catch up once the interval is over.
                    let wait = HEAD_INTERVAL.saturating_sub(self.head_written.elapsed());
                    let (guard, timeout) = state
                        .wake
                        .wait_timeout(pending, wait)
                        .unwrap_or_else(PoisonError::into_inner);
                    pending = guard;
                    if timeout.timed_out() && pending.since.is_none() {
                        drop(pending);
                        self.move_head();
                        pending = lock(&state.pending);
                    }
                } else {
                    pending = state.wake.wait(pending).unwrap_or_else(PoisonError::into_inner);
                }
            }
            let Some(since) = pending.since else {
                self.move_head();
                return; // stopped with nothing left to sync
            };
            let stopping = pending.stop;
            // Records submitted from now on announce themselves again.
            let deferred = std::mem::take(&mut pending.deferred);
            drop(pending);
            if !stopping {
                // Let more records join this fsync, up to the promised delay.
                std::thread::sleep(self.max_delay.saturating_sub(since.elapsed()));
            }
            if deferred {
                self.write_deferred();
            }
            let mut pending = lock(&state.pending);
            let written = pending.written.take();
            // Submitted after the lines were taken above: the next round writes them (a
            // failed log writes nothing more, and a stopping writer wrote its own).
            let again = pending.deferred && !stopping && self.shared.healthy.load(Ordering::Acquire);
            pending.since = again.then(Instant::now);
            drop(pending);
            if let Some((segment, seq, hash)) = written {
                self.sync(&segment, seq, &hash, stopping);
            }
        }
    }

    fn sync(&mut self, segment: &File, seq: u64, hash: &str, stopping: bool) {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = segment.sync_data() {
            self.shared.fail(&format!("cannot fsync the audit segment: {e}"));
            return;
        }
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        *lock(&self.shared.head) = (seq, hash.to_owned());
        self.head_behind = Some((seq, hash.to_owned()));
        if stopping || self.head_written.elapsed() >= HEAD_INTERVAL {
            self.move_head();
        }
    }

    /// Writes what was submitted and no append has carried out since (the writer's locks
    /// are taken only here, never while holding `pending`).
    fn write_deferred(&self) {
        let Some(direct) = self.state.writer.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let mut guard = lock(&direct.files);
        if let Some(writer) = guard.as_mut()
            && let Err(e) = writer.write_tip(&direct.tip, false)
        {
            tracing::error!(error = %e, "Writing submitted audit records failed.");
        }
    }

    /// Rewrites HEAD to name the last fsynced record, if it does not yet.
    fn move_head(&mut self) {
        let Some((seq, hash)) = self.head_behind.take() else {
            return;
        };
        if !self.shared.healthy.load(Ordering::Acquire) {
            return;
        }
        match write_head(&self.dir, seq, &hash) {
            Ok(()) => self.head_written = Instant::now(),
            Err(e) => self.shared.fail(&e),
        }
    }
}

impl Shared {
    /// Marks the log unhealthy with `e`; from then on every append is refused.
    fn fail(&self, e: &str) {
        let mut last = lock(&self.last_error);
        if last.is_none() {
            tracing::error!(error = %e, "Audit log write failed; refusing further appends.");
            *last = Some(e.to_string());
        }
        self.healthy.store(false, Ordering::Release);
    }
}

/// How many bytes of `lines` are whole lines within `room` bytes.
fn whole_lines_within(lines: &[u8], room: u64) -> usize {
    let room = usize::try_from(room).unwrap_or(usize::MAX).min(lines.len());
    lines[..room].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Replaces HEAD with `(seq, hash)` atomically and durably.
fn write_head(dir: &Path, seq: u64, hash: &str) -> Result<(), String> {
    let tmp = dir.join("HEAD.tmp");
    let head = Head {
        seq,
        hash: hash.to_owned(),
    };
    let mut body = serde_json::to_vec(&head).map_err(|e| e.to_string())?;
    body.push(b'\n');
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_data()?;
        fs::rename(&tmp, dir.join(HEAD_FILE))
    };
    write().map_err(|e| format!("cannot update HEAD: {e}"))
}

impl Writer {
    fn record_latency(&self, queued: Instant) {
        let us = u64::try_from(queued.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.shared.count.fetch_add(1, Ordering::Relaxed);
        self.shared.sum_us.fetch_add(us, Ordering::Relaxed);
        self.shared.max_us.fetch_max(us, Ordering::Relaxed);
    }
}

/// Finds where the chain continues: checks the last segment (chained from the last
/// record of the one before) against `HEAD`, dropping a torn final line that was never
/// acknowledged. Returns `(seq, hash, last segment number)`.
fn resume(dir: &Path) -> Result<(u64, String, Option<u64>), AuditError> {
    let head = read_head(dir)?;
    let segments = list_segments(dir)?;
    let Some(&(last_no, ref last_path)) = segments.last() else {
        if let Some(h) = head.filter(|h| h.seq > 0) {
            return Err(AuditError::Corrupt(Box::new(chain::VerifyProblem {
                seq: Some(1),
                segment: segment_name(1),
                line: 1,
                kind: chain::ProblemKind::Truncated { head_seq: h.seq },
                message: format!("no segment files, but HEAD says seq {} was written", h.seq),
            })));
        }
        return Ok((0, GENESIS.to_owned(), None));
    };

    let mut chain = Chain::resume_anywhere();
    if let Some(h) = &head {
        chain.expect_head(h.seq, &h.hash);
    }
    if segments.len() >= 2 {
        let (prev_no, prev_path) = &segments[segments.len() - 2];
        let data = fs::read(prev_path).map_err(|e| AuditError::io("read segment", prev_path, e))?;
        let lines = split_lines(&data);
        if let Some((n, line)) = lines.lines.last() {
            chain
                .push(&segment_name(*prev_no), *n, line)
                .map_err(|p| AuditError::Corrupt(Box::new(p)))?;
        }
    } else {
        chain = Chain::new();
        if let Some(h) = &head {
            chain.expect_head(h.seq, &h.hash);
        }
    }
    let data = fs::read(last_path).map_err(|e| AuditError::io("read segment", last_path, e))?;
    let lines = split_lines(&data);
    let name = segment_name(last_no);
    for (n, line) in &lines.lines {
        chain
            .push(&name, *n, line)
            .map_err(|p| AuditError::Corrupt(Box::new(p)))?;
    }
    // A head older than the tail we checked is fine; a newer one means records are gone.
    let (seq, hash) = chain
        .finish(&name, lines.lines.len() + 1)
        .map_err(|p| AuditError::Corrupt(Box::new(p)))?;
    if lines.torn.is_some() {
        let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        drop_torn_tail(last_path, keep, data.len() - keep)?;
    }
    Ok((seq, hash, Some(last_no)))
}

/// Cuts an unterminated final line once the complete records before it verified: the
/// writer acknowledges only after a whole batch is written and fsynced, and `HEAD`
/// vouched for everything before the torn bytes, so they were never acknowledged.
fn drop_torn_tail(path: &Path, keep: usize, torn: usize) -> Result<(), AuditError> {
    tracing::warn!(segment = %path.display(), bytes = torn, "Dropping a torn, unacknowledged final audit line.");
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| AuditError::io("open segment", path, e))?;
    f.set_len(keep as u64)
        .map_err(|e| AuditError::io("truncate torn line", path, e))?;
    f.sync_data().map_err(|e| AuditError::io("fsync segment", path, e))
}

pub(crate) fn read_head(dir: &Path) -> Result<Option<Head>, AuditError> {
    let path = dir.join(HEAD_FILE);
    match fs::read(&path) {
        Ok(data) => Ok(Some(serde_json::from_slice(&data)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::io("read HEAD", path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io("fsync audit directory", dir, e))
}

#[cfg(test)]
mod tests;
