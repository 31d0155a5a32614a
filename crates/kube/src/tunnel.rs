//! exec, attach and port-forward once both sides have switched to WebSocket: the bytes are
//! relayed unchanged in both directions, and for exec and attach a copy of each direction is
//! read as frames and written to the session recording before it is forwarded, so nothing
//! reaches the program or the client unrecorded. A recording that cannot be written, or bytes
//! that are not WebSocket frames, end the tunnel.
//!
//! At gateway shutdown an open tunnel gets a grace period ([`SHUTDOWN_GRACE`]) to end by
//! itself; then each direction stops at the next frame boundary, both sides get a WebSocket
//! close frame (1001, going away), the recording is finished and the request audited, and
//! [`Tunnels::drained`] lets the listener wait for all of that before the process exits.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gatehouse_core::recording::Recorder;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::watch;

use crate::websocket::{Direction, Event, FrameReader};

/// How a tunnel ended, for the audit record of its request.
#[derive(Clone, Debug, Default)]
pub struct TunnelEnd {
    /// Bytes from the client to the API server.
    pub bytes_in: u64,
    /// Bytes from the API server to the client.
    pub bytes_out: u64,
    /// The program's exit as the API server reported it (`exit 0`, `exit 3`, ...), if it did.
    pub exit: Option<String>,
    /// Why the tunnel ended early, if it did.
    pub error: Option<String>,
}

/// What one direction ended with.
struct Pumped {
    bytes: u64,
    error: Option<String>,
    /// Stopped by shutdown, with everything read forwarded; `true` when that ended at a
    /// frame boundary (so a close frame may follow).
    stopped: Option<bool>,
}

/// Time an open stream gets to end by itself once the gateway shuts down.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The open tunnels of one listener: they observe the gateway's shutdown, and the listener
/// waits until each has closed, finished its recording and written its audit record.
pub struct Tunnels {
    shutdown: OnceLock<watch::Receiver<bool>>,
    open: watch::Sender<usize>,
}

/// Held by a tunnel's request until its audit record is written.
pub struct TunnelGuard(watch::Sender<usize>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Default for Tunnels {
    fn default() -> Self {
        Self {
            shutdown: OnceLock::new(),
            open: watch::channel(0).0,
        }
    }
}

impl Tunnels {
    /// Remembers the gateway's shutdown flag (the first call wins; every connection passes
    /// the same one).
    pub fn observe(&self, shutdown: &watch::Receiver<bool>) {
        let _ = self.shutdown.get_or_init(|| shutdown.clone());
    }

    /// Counts a new tunnel; returns its guard and the shutdown flag it watches.
    pub fn enter(&self) -> (TunnelGuard, watch::Receiver<bool>) {
        self.open.send_modify(|n| *n += 1);
        let shutdown = self
            .shutdown
            .get()
            .cloned()
            // Not observed yet (no connection has passed one): a flag that never turns.
            .unwrap_or_else(|| watch::channel(false).1);
        (TunnelGuard(self.open.clone()), shutdown)
    }

    /// Resolves once every tunnel has closed and been audited.
    pub async fn drained(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }
}

/// Resolves once `flag` is true, or never if its sender is gone while false.
async fn turned(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A close frame with status 1001 (going away), as a server sends it (unmasked).
const CLOSE_FROM_SERVER: [u8; 4] = [0x88, 0x02, 0x03, 0xe9];

/// The same as a client sends it: masked (with a fixed key; masking protects proxies from
/// chosen plaintext, and these two bytes are no one's choice).
fn close_from_client() -> [u8; 8] {
    let key = [0x5a, 0x17, 0xc3, 0x2e];
    [0x88, 0x82, key[0], key[1], key[2], key[3], 0x03 ^ key[0], 0xe9 ^ key[1]]
}

/// A recording shared by both directions, with what the status channel said.
struct Shared {
    recorder: Recorder,
    exit: Option<String>,
}

/// Time the other direction gets to finish once one has ended (the close handshake).
const LINGER: Duration = Duration::from_secs(5);

/// Relays until both sides close, `deadline` passes (the session's token expires), the
/// recording fails, or `shutdown` turns true and [`SHUTDOWN_GRACE`] passes. Returns the
/// recorder for closing, with the outcome.
pub async fn relay(
    client: Upgraded,
    upstream: Upgraded,
    recorder: Option<Recorder>,
    deadline: Duration,
    shutdown: watch::Receiver<bool>,
) -> (TunnelEnd, Option<Recorder>) {
    relay_io(
        TokioIo::new(client),
        TokioIo::new(upstream),
        recorder,
        deadline,
        shutdown,
    )
    .await
}

async fn relay_io<C, U>(
    client: C,
    upstream: U,
    recorder: Option<Recorder>,
    deadline: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> (TunnelEnd, Option<Recorder>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let shared = recorder.map(|recorder| Arc::new(Mutex::new(Shared { recorder, exit: None })));
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    // Turned true when the grace period is over: each direction stops at its next read.
    let (close_tx, close_rx) = watch::channel(false);
    let mut inbound = Box::pin(pump(
        &mut client_read,
        &mut upstream_write,
        Direction::FromClient,
        shared.clone(),
        close_rx.clone(),
    ));
    let mut outbound = Box::pin(pump(
        &mut upstream_read,
        &mut client_write,
        Direction::FromServer,
        shared.clone(),
        close_rx,
    ));
    let grace = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(grace);
    let mut stopping = false;
    let expired = tokio::time::sleep(deadline);
    tokio::pin!(expired);
    let mut end = TunnelEnd::default();
    let mut done_in: Option<Pumped> = None;
    let mut done_out: Option<Pumped> = None;
    let linger = tokio::time::sleep(deadline);
    tokio::pin!(linger);
    let mut lingering = false;
    while done_in.is_none() || done_out.is_none() {
        tokio::select! {
            p = &mut inbound, if done_in.is_none() => {
                let failed = p.error.is_some();
                done_in = Some(p);
                if failed { break; }
            }
            p = &mut outbound, if done_out.is_none() => {
                let failed = p.error.is_some();
                done_out = Some(p);
                if failed { break; }
            }
            _ = &mut expired => {
                end.error = Some("the session's token expired; the stream was closed".into());
                break;
            }
            _ = &mut linger, if lingering => break,
            _ = turned(&mut shutdown), if !stopping => {
                stopping = true;
                grace.as_mut().reset(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                continue;
            }
            _ = &mut grace, if stopping => {
                let _ = close_tx.send(true);
                end.error = Some("the gateway shut down; the stream was closed".into());
                // Each direction finishes what it has read, then stops; one that cannot (a
                // peer that reads nothing) is cut off without a close frame.
                let stopped = tokio::time::timeout(Duration::from_secs(2), async {
                    tokio::join!(
                        async { match done_in.take() { Some(p) => p, None => (&mut inbound).await } },
                        async { match done_out.take() { Some(p) => p, None => (&mut outbound).await } },
                    )
                })
                .await;
                if let Ok((i, o)) = stopped {
                    done_in = Some(i);
                    done_out = Some(o);
                }
                break;
            }
        }
        if !lingering {
            lingering = true;
            linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
        }
    }
    let at_boundary = |p: &Option<Pumped>| p.as_ref().and_then(|p| p.stopped) == Some(true);
    let (close_client, close_upstream) = (at_boundary(&done_out), at_boundary(&done_in));
    drop(inbound);
    drop(outbound);
    if close_client {
        let _ = client_write.write_all(&CLOSE_FROM_SERVER).await;
    }
    if close_upstream {
        let _ = upstream_write.write_all(&close_from_client()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = client_write.shutdown().await;
        let _ = upstream_write.shutdown().await;
    })
    .await;
    for (pumped, bytes) in [(done_in, &mut end.bytes_in), (done_out, &mut end.bytes_out)] {
        if let Some(p) = pumped {
            *bytes = p.bytes;
            if end.error.is_none() {
                end.error = p.error;
            }
        }
    }
    let recorder = shared.and_then(Arc::into_inner).map(|s| {
        let s = s.into_inner().unwrap_or_else(|p| p.into_inner());
        end.exit = s.exit;
        s.recorder
    });
    (end, recorder)
}

/// One direction. Every stream's frames are read (to know where a close frame may go at
/// shutdown); only a recorded stream's are written down.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    direction: Direction,
    shared: Option<Arc<Mutex<Shared>>>,
    mut close: watch::Receiver<bool>,
) -> Pumped
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = FrameReader::new(direction);
    let mut buf = vec![0u8; 32 * 1024];
    let mut bytes = 0u64;
    let failed = |bytes, error: String| Pumped {
        bytes,
        error: Some(error),
        stopped: None,
    };
    let ended = |bytes| Pumped {
        bytes,
        error: None,
        stopped: None,
    };
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = turned(&mut close) => {
                return Pumped { bytes, error: None, stopped: Some(frames.at_boundary()) };
            }
        };
        let n = match read {
            Ok(0) => {
                let _ = to.shutdown().await;
                return ended(bytes);
            }
            Ok(n) => n,
            // A peer that drops the connection ends its direction; not the gateway's failure.
            Err(_) => return ended(bytes),
        };
        let events = match frames.push(&buf[..n]) {
            Ok(events) => events,
            Err(e) if shared.is_some() => return failed(bytes, format!("the stream could not be recorded: {e}")),
            Err(e) => return failed(bytes, format!("the stream is not WebSocket frames: {e}")),
        };
        if let Some(shared) = shared.as_ref() {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            for event in events {
                if let Err(e) = record(&mut s, direction, event) {
                    tracing::error!(error = %e, "Recording write failed; closing the exec stream.");
                    return failed(bytes, format!("the recording could not be written: {e}"));
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return ended(bytes);
        }
        bytes += n as u64;
    }
}

fn record(s: &mut Shared, direction: Direction, event: Event) -> std::io::Result<()> {
    let Event::Data { channel, data } = event else {
        return Ok(());
    };
    match (direction, channel) {
        (Direction::FromClient, 0) => s.recorder.input(&data),
        (Direction::FromClient, 4) => match resize(&data) {
            Some((width, height)) => s.recorder.resize(width, height),
            None => Ok(()),
        },
        (Direction::FromServer, 1 | 2) => s.recorder.output(&data),
        (Direction::FromServer, 3) => {
            let exit = exit_of(&data);
            s.recorder.marker(&exit)?;
            s.exit = Some(exit);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A resize message: `{"Width": 80, "Height": 24}`.
fn resize(data: &[u8]) -> Option<(u32, u32)> {
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let dim = |k: &str| value[k].as_u64().and_then(|v| u32::try_from(v).ok());
    Some((dim("Width")?, dim("Height")?))
}

/// The status channel's `Status` as `exit N` (or its message when it carries no exit code).
fn exit_of(data: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return "status: unreadable".into();
    };
    if value["status"] == "Success" {
        return "exit 0".into();
    }
    let code = value["details"]["causes"].as_array().and_then(|causes| {
        causes
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
    });
    match code {
        Some(code) => format!("exit {code}"),
        None => format!("status: {}", value["message"].as_str().unwrap_or("Failure")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_read_from_the_status_channel() {
        assert_eq!(exit_of(br#"{"metadata":{},"status":"Success"}"#), "exit 0");
        let failed = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_of(failed), "exit 3");
        assert_eq!(
            exit_of(br#"{"status":"Failure","message":"no such container"}"#),
            "status: no such container"
        );
        assert_eq!(resize(br#"{"Width":120,"Height":40}"#), Some((120, 40)));
        assert_eq!(resize(b"nonsense"), None);
    }
}
