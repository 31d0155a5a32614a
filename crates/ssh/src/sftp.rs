//! Per-file decisions inside an SFTP channel (protocol version 3,
//! draft-ietf-secsh-filexfer-02, what OpenSSH's `sftp`, `scp` and `sftp-server` speak).
//!
//! The relay cuts both directions of the channel into SFTP packets (length-prefixed; a
//! packet may span SSH data messages and one message may carry several packets) and
//! forwards only whole packets, so the gateway can answer a request itself between them.
//!
//! - `OPEN` is decided as Cedar `file_transfer` with `direction` (`download` when opened
//!   for reading only, `upload` when opened for writing, appending, creating or
//!   truncating) and the `path`, before it reaches the host. Refused: the gateway answers
//!   `SSH_FX_PERMISSION_DENIED` with the refusal (naming the policy) and also writes it to
//!   the channel's stderr, which OpenSSH's clients print; the host never sees the request.
//! - Requests that change the host's files by path (`REMOVE`, `RENAME`, `MKDIR`, `RMDIR`,
//!   `SETSTAT`, `FSETSTAT`, `SYMLINK` and OpenSSH's `posix-rename`, `hardlink` and
//!   `lsetstat` extensions) are decided the same way with `direction = "upload"` and an
//!   `operation`; requests naming two paths are decided once per path.
//! - Unknown requests and extensions are answered `SSH_FX_OP_UNSUPPORTED` by the gateway.
//! - Each opened file is audited when it is closed (or when the channel ends with it
//!   open): path, direction, bytes read and written, and whether the close succeeded.
//! - A malformed or oversized packet from the client ends the channel: the client reads
//!   why on stderr and the audit log has a `protocol_error` record.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde_json::json;

/// The largest SFTP packet accepted from either side (its length field excluded):
/// OpenSSH's own limit (256 KiB) and room for a request's header.
pub const MAX_PACKET: usize = 256 * 1024 + 1024;

const INIT: u8 = 1;
const VERSION: u8 = 2;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const LSTAT: u8 = 7;
const FSTAT: u8 = 8;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const OPENDIR: u8 = 11;
const READDIR: u8 = 12;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const REALPATH: u8 = 16;
const STAT: u8 = 17;
const RENAME: u8 = 18;
const READLINK: u8 = 19;
const SYMLINK: u8 = 20;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
const EXTENDED: u8 = 200;

const PFLAG_WRITE: u32 = 0x02;
const PFLAG_APPEND: u32 = 0x04;
const PFLAG_CREAT: u32 = 0x08;
const PFLAG_TRUNC: u32 = 0x10;

pub const FX_OK: u32 = 0;
pub const FX_PERMISSION_DENIED: u32 = 3;
pub const FX_OP_UNSUPPORTED: u32 = 8;

/// Extensions that only read (or act on handles already decided), relayed as they are.
const READ_ONLY_EXTENSIONS: &[&str] = &[
    "statvfs@openssh.com",
    "fstatvfs@openssh.com",
    "fsync@openssh.com",
    "limits@openssh.com",
    "expand-path@openssh.com",
    "home-directory",
    "users-groups-by-id@openssh.com",
    "copy-data",
];

/// Cuts a byte stream into SFTP packets (each with its 4-byte length prefix).
#[derive(Default)]
pub struct Framer {
    buf: BytesMut,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet, length prefix included; `Err` for a length the protocol
    /// does not allow (the stream cannot be trusted after it).
    pub fn next_packet(&mut self) -> Result<Option<Bytes>, String> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len == 0 {
            return Err("an SFTP packet of length 0".into());
        }
        if len > MAX_PACKET {
            return Err(format!(
                "an SFTP packet of {len} bytes, over the limit of {MAX_PACKET} bytes"
            ));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(4 + len).freeze()))
    }

    /// Bytes of a packet not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Reads the fields of one packet body.
struct Fields<'a> {
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.data.len() < n {
            return Err("a truncated SFTP packet".into());
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let hi = u64::from(self.u32()?);
        let lo = u64::from(self.u32()?);
        Ok(hi << 32 | lo)
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A path, `.` and `..` resolved lexically (the host's symbolic links are not).
    fn path(&mut self) -> Result<Result<String, ()>, String> {
        Ok(String::from_utf8(self.string()?.to_vec())
            .map(|p| lexical(&p))
            .map_err(|_| ()))
    }
}

/// `path` with empty and `.` components dropped and `..` applied to the component before
/// it, so `/srv/x/../release/a` is decided as `/srv/release/a`. A relative path keeps the
/// `..` it cannot resolve; `/..` stays `/`.
pub fn lexical(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// A packet's type, request id (none for INIT and VERSION) and the fields after them.
fn header(packet: &[u8]) -> Result<(u8, u32, Fields<'_>), String> {
    let mut f = Fields { data: &packet[4..] };
    let kind = f.u8()?;
    let id = if kind == INIT || kind == VERSION { 0 } else { f.u32()? };
    Ok((kind, id, f))
}

/// `SSH_FXP_STATUS` for request `id`.
pub fn status(id: u32, code: u32, message: &str) -> Bytes {
    let mut body = Vec::with_capacity(21 + message.len());
    body.push(STATUS);
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message.as_bytes());
    body.extend_from_slice(&2u32.to_be_bytes());
    body.extend_from_slice(b"en");
    let mut packet = Vec::with_capacity(4 + body.len());
    packet.extend_from_slice(&(body.len() as u32).to_be_bytes());
    packet.extend_from_slice(&body);
    Bytes::from(packet)
}

/// One check policy must pass before a request reaches the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub direction: &'static str,
    pub operation: &'static str,
    pub path: String,
}

impl Check {
    pub fn context(&self) -> serde_json::Value {
        json!({ "direction": self.direction, "operation": self.operation, "path": self.path })
    }
}

/// What to do with one packet from the client.
#[derive(Debug, PartialEq)]
pub enum ClientStep {
    /// Relay it to the host.
    Forward(Bytes),
    /// Relay it only if every check is permitted; else answer `id` with permission denied.
    Decide {
        packet: Bytes,
        id: u32,
        checks: Vec<Check>,
        /// The request opens a file: remember it until the host answers with a handle.
        opens: bool,
    },
    /// Answer the client without asking the host.
    Answer(Bytes),
}

/// A file the host opened for the client.
#[derive(Clone, Debug)]
struct OpenFile {
    path: String,
    direction: &'static str,
    request: u64,
    bytes_read: u64,
    bytes_written: u64,
}

/// A request the host has not answered yet, when its answer matters to the audit.
enum Pending {
    Open {
        path: String,
        direction: &'static str,
        request: u64,
    },
    Read {
        handle: Vec<u8>,
    },
    Write {
        handle: Vec<u8>,
        len: u64,
    },
    Close {
        handle: Vec<u8>,
    },
}

/// A closed (or abandoned) file, for its `file_transferred` record.
#[derive(Clone, Debug, PartialEq)]
pub struct FileRecord {
    pub request: u64,
    pub path: String,
    pub direction: String,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub completed: bool,
}

/// The state of one SFTP channel: requests in flight and the host's open file handles.
#[derive(Default)]
pub struct Tracker {
    pending: HashMap<u32, Pending>,
    files: HashMap<Vec<u8>, OpenFile>,
    version_seen: bool,
}

/// Upper bound on requests in flight whose answers are tracked (OpenSSH keeps 64 reads
/// or writes in flight by default); a client past it is broken or hostile.
const MAX_PENDING: usize = 4096;
/// Upper bound on files open at once on one channel.
const MAX_FILES: usize = 1024;

impl Tracker {
    /// Classifies one whole packet from the client. `Err`: malformed; close the channel.
    pub fn client_packet(&mut self, packet: Bytes) -> Result<ClientStep, String> {
        let (kind, id, mut f) = header(&packet)?;
        if self.pending.len() >= MAX_PENDING {
            return Err(format!("more than {MAX_PENDING} SFTP requests in flight"));
        }
        let one = |direction, operation, path: Result<String, ()>| -> Result<Vec<Check>, ClientStep> {
            match path {
                Ok(path) => Ok(vec![Check {
                    direction,
                    operation,
                    path,
                }]),
                Err(()) => Err(ClientStep::Answer(status(
                    id,
                    FX_PERMISSION_DENIED,
                    "gatehouse: paths that are not UTF-8 are refused",
                ))),
            }
        };
        let step = match kind {
            INIT => ClientStep::Forward(packet),
            OPEN => {
                let path = f.path()?;
                let pflags = f.u32()?;
                let writes = pflags & (PFLAG_WRITE | PFLAG_APPEND | PFLAG_CREAT | PFLAG_TRUNC) != 0;
                let direction = if writes { "upload" } else { "download" };
                match one(direction, "open", path) {
                    Ok(checks) => {
                        if self.files.len() >= MAX_FILES {
                            return Ok(ClientStep::Answer(status(
                                id,
                                FX_PERMISSION_DENIED,
                                "gatehouse: too many files open on this channel",
                            )));
                        }
                        ClientStep::Decide {
                            packet,
                            id,
                            checks,
                            opens: true,
                        }
                    }
                    Err(answer) => answer,
                }
            }
            CLOSE => {
                let handle = f.string()?.to_vec();
                self.pending.insert(id, Pending::Close { handle });
                ClientStep::Forward(packet)
            }
            READ => {
                let handle = f.string()?.to_vec();
                f.u64()?;
                f.u32()?;
                if self.files.contains_key(&handle) {
                    self.pending.insert(id, Pending::Read { handle });
                }
                ClientStep::Forward(packet)
            }
            WRITE => {
                let handle = f.string()?.to_vec();
                f.u64()?;
                let len = f.string()?.len() as u64;
                if self.files.contains_key(&handle) {
                    self.pending.insert(id, Pending::Write { handle, len });
                }
                ClientStep::Forward(packet)
            }
            FSETSTAT => {
                let handle = f.string()?;
                match self.files.get(handle) {
                    Some(file) => ClientStep::Decide {
                        id,
                        checks: vec![Check {
                            direction: "upload",
                            operation: "setstat",
                            path: file.path.clone(),
                        }],
                        packet,
                        opens: false,
                    },
                    // A directory's handle or an unknown one: not a file this channel opened.
                    None => ClientStep::Answer(status(
                        id,
                        FX_PERMISSION_DENIED,
                        "gatehouse: attributes can be set only on files opened on this channel",
                    )),
                }
            }
            REMOVE | MKDIR | RMDIR | SETSTAT => {
                let operation = match kind {
                    REMOVE => "remove",
                    MKDIR => "mkdir",
                    RMDIR => "rmdir",
                    _ => "setstat",
                };
                match one("upload", operation, f.path()?) {
                    Ok(checks) => ClientStep::Decide {
                        packet,
                        id,
                        checks,
                        opens: false,
                    },
                    Err(answer) => answer,
                }
            }
            RENAME | SYMLINK => {
                let operation = if kind == RENAME { "rename" } else { "symlink" };
                self.two_paths(packet.clone(), id, operation, &mut f)?
            }
            LSTAT | FSTAT | OPENDIR | READDIR | REALPATH | STAT | READLINK => ClientStep::Forward(packet),
            EXTENDED => {
                let name = String::from_utf8_lossy(f.string()?).into_owned();
                match name.as_str() {
                    "posix-rename@openssh.com" => self.two_paths(packet.clone(), id, "rename", &mut f)?,
                    "hardlink@openssh.com" => self.two_paths(packet.clone(), id, "hardlink", &mut f)?,
                    "lsetstat@openssh.com" => match one("upload", "setstat", f.path()?) {
                        Ok(checks) => ClientStep::Decide {
                            packet,
                            id,
                            checks,
                            opens: false,
                        },
                        Err(answer) => answer,
                    },
                    n if READ_ONLY_EXTENSIONS.contains(&n) => ClientStep::Forward(packet),
                    _ => ClientStep::Answer(status(
                        id,
                        FX_OP_UNSUPPORTED,
                        &format!("gatehouse: the SFTP extension {name:?} is not relayed"),
                    )),
                }
            }
            other => ClientStep::Answer(status(
                id,
                FX_OP_UNSUPPORTED,
                &format!("gatehouse: SFTP request type {other} is not relayed"),
            )),
        };
        Ok(step)
    }

    fn two_paths(
        &mut self,
        packet: Bytes,
        id: u32,
        operation: &'static str,
        f: &mut Fields<'_>,
    ) -> Result<ClientStep, String> {
        let (first, second) = (f.path()?, f.path()?);
        let (Ok(first), Ok(second)) = (first, second) else {
            return Ok(ClientStep::Answer(status(
                id,
                FX_PERMISSION_DENIED,
                "gatehouse: paths that are not UTF-8 are refused",
            )));
        };
        let checks = vec![
            Check {
                direction: "upload",
                operation,
                path: first,
            },
            Check {
                direction: "upload",
                operation,
                path: second,
            },
        ];
        Ok(ClientStep::Decide {
            packet,
            id,
            checks,
            opens: false,
        })
    }

    /// The OPEN with request `id` was permitted as audit request `request`.
    pub fn opening(&mut self, id: u32, check: &Check, request: u64) {
        self.pending.insert(
            id,
            Pending::Open {
                path: check.path.clone(),
                direction: check.direction,
                request,
            },
        );
    }

    /// Reads one whole packet from the host; returns the files it closed. `Err`: the host
    /// broke the protocol (or speaks a version other than 3).
    pub fn host_packet(&mut self, packet: &[u8]) -> Result<Option<FileRecord>, String> {
        let (kind, id, mut f) = header(packet)?;
        if kind == VERSION {
            let version = f.u32()?;
            if version != 3 {
                return Err(format!(
                    "the host speaks SFTP version {version}; the gateway relays only version 3"
                ));
            }
            self.version_seen = true;
            return Ok(None);
        }
        if !self.version_seen {
            return Err("the host answered before agreeing on the SFTP version".into());
        }
        let Some(pending) = self.pending.remove(&id) else {
            return Ok(None);
        };
        match (pending, kind) {
            (
                Pending::Open {
                    path,
                    direction,
                    request,
                },
                HANDLE,
            ) => {
                let handle = f.string()?.to_vec();
                self.files.insert(
                    handle,
                    OpenFile {
                        path,
                        direction,
                        request,
                        bytes_read: 0,
                        bytes_written: 0,
                    },
                );
            }
            (Pending::Read { handle }, DATA) => {
                let len = f.string()?.len() as u64;
                if let Some(file) = self.files.get_mut(&handle) {
                    file.bytes_read += len;
                }
            }
            (Pending::Write { handle, len }, STATUS) => {
                if f.u32()? == FX_OK
                    && let Some(file) = self.files.get_mut(&handle)
                {
                    file.bytes_written += len;
                }
            }
            (Pending::Close { handle }, STATUS) => {
                let ok = f.u32()? == FX_OK;
                if let Some(file) = self.files.remove(&handle) {
                    return Ok(Some(record(file, ok)));
                }
            }
            _ => {}
        }
        Ok(None)
    }

    /// Files still open when the channel ends.
    pub fn abandoned(&mut self) -> Vec<FileRecord> {
        let mut files: Vec<OpenFile> = self.files.drain().map(|(_, f)| f).collect();
        files.sort_by_key(|f| f.request);
        files.into_iter().map(|f| record(f, false)).collect()
    }
}

fn record(file: OpenFile, completed: bool) -> FileRecord {
    FileRecord {
        request: file.request,
        path: file.path,
        direction: file.direction.into(),
        bytes_read: file.bytes_read,
        bytes_written: file.bytes_written,
        completed,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn packet(kind: u8, id: Option<u32>, fields: &[&[u8]]) -> Bytes {
        let mut body = vec![kind];
        if let Some(id) = id {
            body.extend_from_slice(&id.to_be_bytes());
        }
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        Bytes::from(p)
    }

    fn s(text: &[u8]) -> Vec<u8> {
        let mut v = (text.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(text);
        v
    }

    #[test]
    fn packets_are_cut_across_and_within_chunks() {
        let a = packet(INIT, None, &[&3u32.to_be_bytes()]);
        let b = packet(STAT, Some(7), &[&s(b"/tmp")]);
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        let mut framer = Framer::default();
        let mut out = Vec::new();
        for byte in &all {
            framer.push(&[*byte]);
            while let Some(p) = framer.next_packet().unwrap() {
                out.push(p);
            }
        }
        assert_eq!(out, vec![a.clone(), b.clone()]);
        framer.push(&all);
        assert_eq!(framer.next_packet().unwrap(), Some(a));
        assert_eq!(framer.next_packet().unwrap(), Some(b));
        assert_eq!(framer.next_packet().unwrap(), None);
        assert_eq!(framer.pending(), 0);
    }

    #[test]
    fn oversized_and_empty_packets_are_errors() {
        let mut framer = Framer::default();
        framer.push(&0x7fff_ffffu32.to_be_bytes());
        assert!(framer.next_packet().unwrap_err().contains("over the limit"));
        let mut framer = Framer::default();
        framer.push(&[0, 0, 0, 0, 1]);
        assert!(framer.next_packet().is_err());
    }

    #[test]
    fn opens_are_decided_by_direction_and_files_are_counted() {
        let mut t = Tracker::default();
        t.host_packet(&packet(VERSION, None, &[&3u32.to_be_bytes()])).unwrap();
        let read = packet(
            OPEN,
            Some(1),
            &[&s(b"/etc/hosts"), &1u32.to_be_bytes(), &0u32.to_be_bytes()],
        );
        let ClientStep::Decide { checks, opens, .. } = t.client_packet(read).unwrap() else {
            panic!("an open is decided")
        };
        assert!(opens);
        assert_eq!(checks[0].direction, "download");
        assert_eq!(checks[0].path, "/etc/hosts");
        t.opening(1, &checks[0], 5);
        t.host_packet(&packet(HANDLE, Some(1), &[&s(b"h1")])).unwrap();
        t.client_packet(packet(
            READ,
            Some(2),
            &[&s(b"h1"), &0u64.to_be_bytes(), &100u32.to_be_bytes()],
        ))
        .unwrap();
        t.host_packet(&packet(DATA, Some(2), &[&s(&[0u8; 42])])).unwrap();
        t.client_packet(packet(CLOSE, Some(3), &[&s(b"h1")])).unwrap();
        let done = t.host_packet(&status(3, FX_OK, "")).unwrap().unwrap();
        assert_eq!(
            done,
            FileRecord {
                request: 5,
                path: "/etc/hosts".into(),
                direction: "download".into(),
                bytes_read: 42,
                bytes_written: 0,
                completed: true
            }
        );

        let write = packet(OPEN, Some(4), &[&s(b"up"), &0x1au32.to_be_bytes(), &0u32.to_be_bytes()]);
        let ClientStep::Decide { checks, .. } = t.client_packet(write).unwrap() else {
            panic!("an open is decided")
        };
        assert_eq!(checks[0].direction, "upload");
        t.opening(4, &checks[0], 6);
        t.host_packet(&packet(HANDLE, Some(4), &[&s(b"h2")])).unwrap();
        t.client_packet(packet(
            WRITE,
            Some(5),
            &[&s(b"h2"), &0u64.to_be_bytes(), &s(&[1u8; 10])],
        ))
        .unwrap();
        t.host_packet(&status(5, FX_OK, "")).unwrap();
        let left = t.abandoned();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].bytes_written, left[0].completed), (10, false));
    }

    #[test]
    fn changes_by_path_are_decided_and_unknown_requests_answered() {
        let mut t = Tracker::default();
        let rename = packet(RENAME, Some(9), &[&s(b"/a"), &s(b"/b")]);
        let ClientStep::Decide { checks, opens, .. } = t.client_packet(rename).unwrap() else {
            panic!("a rename is decided")
        };
        assert!(!opens);
        assert_eq!(
            checks
                .iter()
                .map(|c| (c.operation, c.path.as_str()))
                .collect::<Vec<_>>(),
            vec![("rename", "/a"), ("rename", "/b")]
        );
        let ext = packet(
            EXTENDED,
            Some(10),
            &[&s(b"posix-rename@openssh.com"), &s(b"/a"), &s(b"/c")],
        );
        assert!(matches!(t.client_packet(ext).unwrap(), ClientStep::Decide { .. }));
        let odd = packet(EXTENDED, Some(11), &[&s(b"nobody@example.com")]);
        assert!(matches!(t.client_packet(odd).unwrap(), ClientStep::Answer(_)));
        let stat = packet(STAT, Some(12), &[&s(b"/a")]);
        assert!(matches!(t.client_packet(stat).unwrap(), ClientStep::Forward(_)));
        let truncated = packet(OPEN, Some(13), &[&100u32.to_be_bytes(), b"/short"]);
        assert!(t.client_packet(truncated).is_err());
        let bad = packet(REMOVE, Some(14), &[&s(&[0xff, 0xfe])]);
        assert!(matches!(t.client_packet(bad).unwrap(), ClientStep::Answer(_)));
    }

    #[test]
    fn paths_are_decided_after_dot_dot() {
        assert_eq!(lexical("/srv/x/../release//./a"), "/srv/release/a");
        assert_eq!(lexical("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(lexical("a/../../b"), "../b");
        assert_eq!(lexical("./"), ".");
        assert_eq!(lexical("/"), "/");
        let mut t = Tracker::default();
        let open = packet(
            OPEN,
            Some(1),
            &[&s(b"/tmp/ok/../locked/x"), &2u32.to_be_bytes(), &0u32.to_be_bytes()],
        );
        let ClientStep::Decide { checks, .. } = t.client_packet(open).unwrap() else {
            panic!("an open is decided")
        };
        assert_eq!(checks[0].path, "/tmp/locked/x");
    }

    #[test]
    fn only_version_3_is_relayed() {
        let mut t = Tracker::default();
        assert!(t.host_packet(&packet(VERSION, None, &[&6u32.to_be_bytes()])).is_err());
        let mut t = Tracker::default();
        assert!(t.host_packet(&status(1, FX_OK, "")).is_err());
    }
}
