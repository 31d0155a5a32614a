//! File names and sizes of a legacy scp transfer (`scp -O`, the rcp protocol), read from the
//! sending side's stream: `C0644 SIZE NAME` then SIZE bytes then a status byte for each
//! file, `D0755 0 NAME` ... `E` around directories, `T...` for times. The transfer as a
//! whole was decided when the command was (`scp -t PATH` / `scp -f PATH`); this only
//! observes, so each file can be audited with its name and byte count.

use crate::sftp::FileRecord;

/// Longer header lines are not scp's: stop observing (the channel's byte counts remain).
const MAX_LINE: usize = 8192;

enum State {
    Line(Vec<u8>),
    Data {
        path: String,
        size: u64,
        left: u64,
    },
    Status {
        path: String,
        size: u64,
    },
    /// Not the rcp protocol (or broken): observe nothing more.
    Lost,
}

/// Observes the sending side of one legacy scp channel.
pub struct ScpObserver {
    /// The path from the command line (`scp -t PATH` / `scp -f PATH`).
    path: String,
    direction: &'static str,
    /// `-r` or `-d`: the path is a directory the files go into.
    into_dir: bool,
    dirs: Vec<String>,
    state: State,
    /// The request that decided the transfer.
    request: u64,
}

impl ScpObserver {
    pub fn new(path: String, direction: &'static str, into_dir: bool, request: u64) -> Self {
        Self {
            path,
            direction,
            into_dir,
            dirs: Vec::new(),
            state: State::Line(Vec::new()),
            request,
        }
    }

    /// Where a file named `name` in the current directory lands (upload) or comes from
    /// (download: the host names files relative to the requested path's directory).
    fn file_path(&self, name: &str) -> String {
        let base = if self.direction == "upload" {
            if self.dirs.is_empty() && !self.into_dir {
                return self.path.clone();
            }
            Some(self.path.trim_end_matches('/'))
        } else {
            self.path.rfind('/').map(|i| &self.path[..i])
        };
        let mut parts: Vec<&str> = base.into_iter().collect();
        parts.extend(self.dirs.iter().map(String::as_str));
        parts.push(name);
        parts.join("/")
    }

    /// Feeds bytes the sender sent; returns the files finished in them.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<FileRecord> {
        let mut done = Vec::new();
        while !data.is_empty() {
            match &mut self.state {
                State::Lost => break,
                State::Line(line) => {
                    let end = data.iter().position(|b| *b == b'\n');
                    let take = end.map_or(data.len(), |i| i + 1);
                    line.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if line.len() > MAX_LINE {
                        self.state = State::Lost;
                    } else if end.is_some() {
                        let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                        self.header(&text);
                    }
                }
                State::Data { left, .. } => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0
                        && let State::Data { path, size, .. } = std::mem::replace(&mut self.state, State::Lost)
                    {
                        self.state = State::Status { path, size };
                    }
                }
                State::Status { .. } => {
                    let ok = data[0] == 0;
                    if let State::Status { path, size } = std::mem::replace(&mut self.state, State::Line(Vec::new())) {
                        done.push(self.record(path, size, ok));
                    }
                    // An error status is followed by its message line: read it as a line.
                    if ok {
                        data = &data[1..];
                    }
                }
            }
        }
        done
    }

    fn header(&mut self, line: &str) {
        let mut parts = line.splitn(3, ' ');
        let (Some(head), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            // `E`, or `T mtime 0 atime 0` (four fields, caught here by the size check), or an
            // error line from the sender.
            if line == "E" {
                self.dirs.pop();
            }
            self.state = State::Line(Vec::new());
            return;
        };
        let (kind, size) = (head.as_bytes().first().copied(), size.parse::<u64>());
        self.state = match (kind, size) {
            (Some(b'C'), Ok(size)) if !name.contains('/') => {
                let path = self.file_path(name);
                if size == 0 {
                    State::Status { path, size }
                } else {
                    State::Data { path, size, left: size }
                }
            }
            (Some(b'D'), Ok(_)) if !name.contains('/') => {
                // The first directory of `scp -r DIR host:TARGET` lands in TARGET.
                self.dirs.push(name.to_string());
                State::Line(Vec::new())
            }
            (Some(b'T'), _) => State::Line(Vec::new()),
            _ if line.starts_with('\u{1}') || line.starts_with('\u{2}') => State::Line(Vec::new()),
            _ => State::Lost,
        };
    }

    fn record(&self, path: String, size: u64, ok: bool) -> FileRecord {
        let (bytes_read, bytes_written) = if self.direction == "upload" {
            (0, size)
        } else {
            (size, 0)
        };
        FileRecord {
            request: self.request,
            path,
            direction: self.direction.to_string(),
            bytes_read,
            bytes_written,
            completed: ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_an_upload_are_named_and_counted() {
        let mut o = ScpObserver::new("/srv/up.bin".into(), "upload", false, 3);
        let mut stream = b"C0644 5 local.bin\n".to_vec();
        stream.extend_from_slice(b"hello\0");
        let mut done = Vec::new();
        for b in &stream {
            done.extend(o.feed(&[*b]));
        }
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].path, "/srv/up.bin");
        assert_eq!((done[0].bytes_written, done[0].completed), (5, true));
    }

    #[test]
    fn recursive_downloads_name_each_file() {
        let mut o = ScpObserver::new("/var/log/app".into(), "download", true, 4);
        // `scp -r host:/var/log/app .`: the host sends the directory itself, then its files.
        let done = o
            .feed(b"T1 0 1 0\nD0755 0 app\nC0644 3 a.log\nabc\0C0644 0 empty\n\0E\nC0600 2 x\nhi\x01scp: read error\n");
        let got: Vec<_> = done
            .iter()
            .map(|f| (f.path.as_str(), f.bytes_read, f.completed))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/var/log/app/a.log", 3, true),
                ("/var/log/app/empty", 0, true),
                ("/var/log/x", 2, false)
            ]
        );
    }

    #[test]
    fn a_single_download_keeps_its_path() {
        let mut o = ScpObserver::new("/etc/hosts".into(), "download", false, 1);
        let done = o.feed(b"C0644 2 hosts\nab\0");
        assert_eq!(done[0].path, "/etc/hosts");
        let mut o = ScpObserver::new("/etc/*.conf".into(), "download", false, 1);
        let done = o.feed(b"C0644 2 a.conf\nab\0");
        assert_eq!(done[0].path, "/etc/a.conf");
    }

    #[test]
    fn garbage_stops_observing() {
        let mut o = ScpObserver::new("/x".into(), "upload", false, 1);
        assert!(o.feed(b"not scp at all\nC0644 1 y\nz\0").is_empty());
    }
}
