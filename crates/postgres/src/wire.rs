//! Message framing shared by both legs: whole messages are cut from a read buffer by
//! their length field, and decoded with pgwire only where the gateway needs to look.

use bytes::{Buf, BytesMut};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};

/// One whole protocol message: type byte, length, body.
#[derive(Debug)]
pub struct Frame {
    /// Message type byte.
    pub tag: u8,
    /// The complete message, type byte and length included.
    pub bytes: BytesMut,
}

/// A message that cannot be framed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length field is below 4 or above the limit for this direction.
    #[error("invalid message length {length} for message type {tag:?}")]
    Length {
        /// Message type.
        tag: char,
        /// Length field.
        length: i64,
    },
}

/// Cut the next whole message from `buf`, if it is all there.
pub fn try_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let length = i64::from((&buf[1..5]).get_i32());
    let Ok(len) = usize::try_from(length) else {
        return Err(FrameError::Length {
            tag: char::from(tag),
            length,
        });
    };
    if len < 4 || len > max_len {
        return Err(FrameError::Length {
            tag: char::from(tag),
            length,
        });
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        tag,
        bytes: buf.split_to(len + 1),
    }))
}

/// Decoding context after startup, for both directions.
pub fn context() -> DecodeContext {
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    ctx
}

/// Decode a framed message as a concrete pgwire type.
pub fn decode<M: Message>(frame: &Frame) -> Result<M, pgwire::error::PgWireError> {
    let mut bytes = frame.bytes.clone();
    M::decode(&mut bytes, &context())?.ok_or(pgwire::error::PgWireError::InvalidStartupMessage)
}

/// Encode a pgwire message onto an output buffer.
pub fn encode<M: Message>(msg: &M, out: &mut BytesMut) -> Result<(), pgwire::error::PgWireError> {
    msg.encode(out)
}

/// What a server sends once a login succeeded: AuthenticationOk, each ParameterStatus, the
/// BackendKeyData the client will cancel with, and ReadyForQuery (idle).
pub fn put_login_ok(out: &mut bytes::BytesMut, params: &[(String, String)], key: (i32, i32)) {
    use bytes::BufMut as _;
    out.put_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
    for (name, value) in params {
        out.put_u8(b'S');
        out.put_i32(i32::try_from(4 + name.len() + 1 + value.len() + 1).unwrap_or(i32::MAX));
        out.put_slice(name.as_bytes());
        out.put_u8(0);
        out.put_slice(value.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(b'K');
    out.put_i32(12);
    out.put_i32(key.0);
    out.put_i32(key.1);
    out.put_slice(&[b'Z', 0, 0, 0, 5, b'I']);
}
