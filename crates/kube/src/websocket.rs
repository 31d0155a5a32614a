//! A passive WebSocket frame reader (RFC 6455) for the Kubernetes channel protocols: the
//! gateway relays the upgraded stream byte for byte and feeds a copy of each direction here to
//! record what went through. Payloads stream out as they arrive (a large frame is never
//! buffered); each data message's first byte is its channel (0 stdin, 1 stdout, 2 stderr,
//! 3 the final status, 4 resize; in v5 `255 n` closes channel n). No extension may be in use
//! (the gateway strips `Sec-WebSocket-Extensions`), so reserved bits are a protocol error.

/// What a stretch of bytes carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Payload bytes of a binary message on `channel`; one message may arrive in many pieces.
    Data { channel: u8, data: Vec<u8> },
    /// A close frame.
    Close,
}

/// Why a stream could not be read as WebSocket frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("a WebSocket frame uses reserved bits (no extension was negotiated)")]
    Reserved,
    #[error("a WebSocket frame's masking does not match its direction")]
    Masking,
    #[error("a WebSocket control frame is fragmented or longer than 125 bytes")]
    Control,
    #[error("a WebSocket continuation frame has no message to continue, or a message interrupts another")]
    Fragmentation,
    #[error("unknown WebSocket opcode {0}")]
    Opcode(u8),
}

/// Which side wrote the bytes: clients mask every frame, servers never do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    FromClient,
    FromServer,
}

/// Incremental reader of one direction of a WebSocket connection.
pub struct FrameReader {
    direction: Direction,
    /// Header bytes gathered so far (at most 14).
    header: Vec<u8>,
    /// The frame whose payload is being read.
    frame: Option<Frame>,
    /// A data message is open (its first frame lacked FIN).
    in_message: bool,
    /// The open message's channel, once its first payload byte was seen; `None` for text.
    channel: Option<u8>,
    /// The open message is text (not part of the channel protocols: not recorded).
    text: bool,
}

struct Frame {
    opcode: u8,
    fin: bool,
    remaining: u64,
    mask: Option<[u8; 4]>,
    offset: usize,
}

impl FrameReader {
    pub fn new(direction: Direction) -> Self {
        Self {
            direction,
            header: Vec::with_capacity(14),
            frame: None,
            in_message: false,
            channel: None,
            text: false,
        }
    }

    /// True when the bytes so far end exactly at a frame's end (a control frame, such as a
    /// close, may be written next without breaking the stream).
    pub fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.frame.is_none()
    }

    /// Reads `bytes` (any split), returning what they completed or continued.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Event>, FrameError> {
        let mut events = Vec::new();
        while !bytes.is_empty() || self.frame.as_ref().is_some_and(|f| f.remaining == 0) {
            let Some(frame) = self.frame.as_mut() else {
                let needed = header_len(&self.header);
                let take = needed.saturating_sub(self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() == header_len(&self.header) {
                    self.start_frame()?;
                }
                continue;
            };
            let take = usize::try_from(frame.remaining).unwrap_or(usize::MAX).min(bytes.len());
            let mut payload = bytes[..take].to_vec();
            bytes = &bytes[take..];
            if let Some(mask) = frame.mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[(frame.offset + i) % 4];
                }
            }
            frame.offset += take;
            frame.remaining -= take as u64;
            let (opcode, fin, done) = (frame.opcode, frame.fin, frame.remaining == 0);
            if opcode < 8 && !self.text && !payload.is_empty() {
                let data = match self.channel {
                    Some(_) => payload,
                    None => {
                        self.channel = Some(payload[0]);
                        payload.split_off(1)
                    }
                };
                if let Some(channel) = self.channel
                    && !data.is_empty()
                {
                    events.push(Event::Data { channel, data });
                }
            }
            if done {
                self.frame = None;
                if opcode == 8 {
                    events.push(Event::Close);
                } else if opcode < 8 && fin {
                    self.in_message = false;
                    self.channel = None;
                    self.text = false;
                }
            }
        }
        Ok(events)
    }

    fn start_frame(&mut self) -> Result<(), FrameError> {
        let h = std::mem::take(&mut self.header);
        let (fin, reserved, opcode) = (h[0] & 0x80 != 0, h[0] & 0x70, h[0] & 0x0f);
        let masked = h[1] & 0x80 != 0;
        if reserved != 0 {
            return Err(FrameError::Reserved);
        }
        if masked != (self.direction == Direction::FromClient) {
            return Err(FrameError::Masking);
        }
        let (len, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]), 10),
            n => (u64::from(n), 2),
        };
        let mask = masked.then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        match opcode {
            8..=10 if !fin || len > 125 => return Err(FrameError::Control),
            8..=10 => {}
            0 if !self.in_message => return Err(FrameError::Fragmentation),
            0 => {}
            1 | 2 if self.in_message => return Err(FrameError::Fragmentation),
            1 | 2 => {
                self.in_message = true;
                self.text = opcode == 1;
                self.channel = None;
            }
            other => return Err(FrameError::Opcode(other)),
        }
        self.frame = Some(Frame {
            opcode,
            fin,
            remaining: len,
            mask,
            offset: 0,
        });
        Ok(())
    }
}

/// The length of a frame header, as far as the bytes so far tell (2 until the second byte).
fn header_len(h: &[u8]) -> usize {
    let Some(&second) = h.get(1) else { return 2 };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    match second & 0x7f {
        126 => 4 + mask,
        127 => 10 + mask,
        _ => 2 + mask,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n < 65536 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    fn data(events: &[Event]) -> Vec<(u8, Vec<u8>)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Data { channel, data } => Some((*channel, data.clone())),
                Event::Close => None,
            })
            .collect()
    }

    #[test]
    fn masked_client_frames_read_byte_by_byte() {
        let key = Some([1, 2, 3, 4]);
        let mut bytes = frame(true, 2, b"\x00echo hi\n", key);
        bytes.extend(frame(true, 2, b"\x04{\"Width\":80,\"Height\":24}", key));
        bytes.extend(frame(true, 8, b"\x03\xe8", key));
        let mut reader = FrameReader::new(Direction::FromClient);
        let mut events = Vec::new();
        for b in &bytes {
            events.extend(reader.push(std::slice::from_ref(b)).unwrap());
        }
        let mut joined: Vec<(u8, Vec<u8>)> = Vec::new();
        for (c, d) in data(&events) {
            match joined.last_mut() {
                Some((lc, ld)) if *lc == c => ld.extend(d),
                _ => joined.push((c, d)),
            }
        }
        assert_eq!(
            joined,
            vec![
                (0, b"echo hi\n".to_vec()),
                (4, b"{\"Width\":80,\"Height\":24}".to_vec())
            ]
        );
        assert_eq!(events.last(), Some(&Event::Close));
    }

    #[test]
    fn fragmented_and_long_server_messages_keep_their_channel() {
        let big = vec![b'x'; 70_000];
        let mut first = vec![2u8];
        first.extend_from_slice(b"err");
        let mut bytes = frame(false, 2, &first, None);
        bytes.extend(frame(true, 9, b"ping", None)); // control frames may interleave
        bytes.extend(frame(true, 0, &big, None));
        bytes.extend(frame(true, 2, b"\x01out", None));
        let mut reader = FrameReader::new(Direction::FromServer);
        let events = reader.push(&bytes).unwrap();
        let d = data(&events);
        assert_eq!(d[0], (2, b"err".to_vec()));
        assert_eq!(d[1].0, 2);
        assert_eq!(d[1].1.len(), 70_000);
        assert_eq!(d[2], (1, b"out".to_vec()));
    }

    #[test]
    fn protocol_errors_are_refused() {
        let mut r = FrameReader::new(Direction::FromServer);
        assert_eq!(
            r.push(&frame(true, 2, b"\x01x", Some([9, 9, 9, 9]))),
            Err(FrameError::Masking)
        );
        let mut r = FrameReader::new(Direction::FromServer);
        assert_eq!(r.push(&[0xc2, 0x01, 0x01]), Err(FrameError::Reserved));
        let mut r = FrameReader::new(Direction::FromServer);
        assert_eq!(r.push(&frame(true, 0, b"x", None)), Err(FrameError::Fragmentation));
        let mut r = FrameReader::new(Direction::FromServer);
        assert_eq!(r.push(&frame(false, 9, b"x", None)), Err(FrameError::Control));
        let mut r = FrameReader::new(Direction::FromServer);
        assert_eq!(r.push(&frame(true, 3, b"x", None)), Err(FrameError::Opcode(3)));
    }
}
