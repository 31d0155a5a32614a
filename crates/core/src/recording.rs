//! Session recordings (SSH shells, Kubernetes exec and attach) as asciicast v2
//! (<https://docs.asciinema.org/manual/asciicast/v2/>): a JSON header line, then one
//! `[seconds, "o", text]` line per chunk of output (`"i"` for input, `"r"` for a terminal
//! resize, `"m"` for a marker such as an exit status), so that `gatehouse replay` and any
//! asciicast player read them. The writer hashes what it writes, so the audit log can carry
//! the file's SHA-256.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

/// An open recording. Output is split into UTF-8 text at chunk boundaries: an incomplete
/// character at the end of a chunk waits for the next one.
pub struct Recorder {
    path: PathBuf,
    out: BufWriter<File>,
    digest: aws_lc_rs::digest::Context,
    bytes: u64,
    started: Instant,
    pending: Vec<u8>,
    pending_input: Vec<u8>,
}

/// What a closed recording is, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

impl Recorder {
    /// Creates `path` (mode 0600) and writes the header.
    pub fn create(path: &Path, width: u32, height: u32, term: &str, title: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        let mut recorder = Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            bytes: 0,
            started: Instant::now(),
            pending: Vec::new(),
            pending_input: Vec::new(),
        };
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = json!({
            "version": 2,
            "width": width.max(1),
            "height": height.max(1),
            "timestamp": timestamp,
            "env": { "TERM": term },
            "title": title,
        });
        recorder.line(&header)?;
        Ok(recorder)
    }

    /// Records output bytes.
    pub fn output(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.pending.extend_from_slice(data);
        let text = take_utf8(&mut self.pending);
        if text.is_empty() {
            return Ok(());
        }
        let at = self.elapsed();
        self.line(&json!([at, "o", text]))
    }

    /// Records input bytes (what the client sent to the program).
    pub fn input(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.pending_input.extend_from_slice(data);
        let text = take_utf8(&mut self.pending_input);
        if text.is_empty() {
            return Ok(());
        }
        let at = self.elapsed();
        self.line(&json!([at, "i", text]))
    }

    /// Records a marker, e.g. how the program ended.
    pub fn marker(&mut self, label: &str) -> std::io::Result<()> {
        let at = self.elapsed();
        self.line(&json!([at, "m", label]))
    }

    /// Records a terminal resize.
    pub fn resize(&mut self, width: u32, height: u32) -> std::io::Result<()> {
        let at = self.elapsed();
        self.line(&json!([at, "r", format!("{width}x{height}")]))
    }

    /// Flushes and closes the file; what remains of an incomplete character is written
    /// with replacement characters.
    pub fn finish(mut self) -> std::io::Result<Written> {
        for (kind, pending) in [
            ("i", std::mem::take(&mut self.pending_input)),
            ("o", std::mem::take(&mut self.pending)),
        ] {
            if !pending.is_empty() {
                let rest = String::from_utf8_lossy(&pending).into_owned();
                let at = self.elapsed();
                self.line(&json!([at, kind, rest]))?;
            }
        }
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(Written {
            path: self.path,
            bytes: self.bytes,
            sha256: hex::encode(self.digest.finish().as_ref()),
        })
    }

    fn elapsed(&self) -> f64 {
        // Microsecond resolution, as asciinema writes it.
        (self.started.elapsed().as_micros() as f64) / 1_000_000.0
    }

    fn line(&mut self, value: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.digest.update(&line);
        self.bytes += line.len() as u64;
        Ok(())
    }
}

/// Takes the longest valid UTF-8 prefix of `buf` (invalid bytes become U+FFFD), leaving
/// only an incomplete trailing character behind.
fn take_utf8(buf: &mut Vec<u8>) -> String {
    let mut text = String::new();
    let mut rest: &[u8] = buf;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // from_utf8 just validated this prefix.
                text.push_str(&String::from_utf8_lossy(valid));
                match e.error_len() {
                    Some(n) => {
                        text.push('\u{FFFD}');
                        rest = &after[n..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *buf = keep;
    text
}

/// One event read back from a recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub at: Duration,
    pub kind: String,
    pub data: String,
}

/// Reads a recording: its header and events, checked for shape.
pub fn read(path: &Path) -> Result<(Value, Vec<Event>), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = BufReader::new(file).lines();
    let header: Value = match lines.next() {
        Some(Ok(line)) => serde_json::from_str(&line).map_err(|e| format!("{}: bad header: {e}", path.display()))?,
        _ => return Err(format!("{}: empty recording", path.display())),
    };
    if header["version"] != 2 {
        return Err(format!("{}: not an asciicast v2 recording", path.display()));
    }
    let mut events = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("{}: line {}: not an asciicast event", path.display(), n + 2);
        let value: Value = serde_json::from_str(&line).map_err(|_| bad())?;
        let (Some(at), Some(kind), Some(data)) = (value[0].as_f64(), value[1].as_str(), value[2].as_str()) else {
            return Err(bad());
        };
        if !(at.is_finite() && at >= 0.0) {
            return Err(bad());
        }
        events.push(Event {
            at: Duration::from_secs_f64(at),
            kind: kind.to_owned(),
            data: data.to_owned(),
        });
    }
    Ok((header, events))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_kept_whole() {
        let mut buf = "aé".as_bytes()[..2].to_vec();
        assert_eq!(take_utf8(&mut buf), "a");
        assert_eq!(buf, vec![0xc3]);
        buf.extend_from_slice(&[0xa9, b'!']);
        assert_eq!(take_utf8(&mut buf), "é!");
        assert!(buf.is_empty());
        let mut bad = vec![b'x', 0xff, b'y'];
        assert_eq!(take_utf8(&mut bad), "x\u{FFFD}y");
    }

    #[test]
    fn a_recording_reads_back_and_its_hash_is_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let mut r = Recorder::create(&path, 80, 24, "xterm", "test").unwrap();
        r.output(b"hello \xc3").unwrap();
        r.output(b"\xa9\r\n").unwrap();
        r.resize(100, 30).unwrap();
        let written = r.finish().unwrap();
        let content = std::fs::read(&path).unwrap();
        assert_eq!(written.bytes, content.len() as u64);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &content);
        assert_eq!(written.sha256, hex::encode(digest.as_ref()));
        let (header, events) = read(&path).unwrap();
        assert_eq!(header["width"], 80);
        let text: String = events
            .iter()
            .filter(|e| e.kind == "o")
            .map(|e| e.data.as_str())
            .collect();
        assert_eq!(text, "hello é\r\n");
        assert_eq!(events.last().unwrap().kind, "r");
        assert!(
            Recorder::create(&path, 80, 24, "xterm", "again").is_err(),
            "never overwrites"
        );
    }
}
