//! exec, attach and port-forward once both sides have switched to WebSocket: the bytes are
//! relayed unchanged in both directions, and for exec and attach a copy of each direction is
//! read as frames and written to the session recording before it is forwarded, so nothing
//! reaches the program or the client unrecorded. A recording that cannot be written, or bytes
//! that are not WebSocket frames, end the tunnel.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_core::recording::Recorder;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

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
}

/// A recording shared by both directions, with what the status channel said.
struct Shared {
    recorder: Recorder,
    exit: Option<String>,
}

/// Time the other direction gets to finish once one has ended (the close handshake).
const LINGER: Duration = Duration::from_secs(5);

/// Relays until both sides close, `deadline` passes (the session's token expires), or the
/// recording fails. Returns the recorder for closing, with the outcome.
pub async fn relay(
    client: Upgraded,
    upstream: Upgraded,
    recorder: Option<Recorder>,
    deadline: Duration,
) -> (TunnelEnd, Option<Recorder>) {
    let shared = recorder.map(|recorder| Arc::new(Mutex::new(Shared { recorder, exit: None })));
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let inbound = pump(client_read, upstream_write, Direction::FromClient, shared.clone());
    let outbound = pump(upstream_read, client_write, Direction::FromServer, shared.clone());
    tokio::pin!(inbound, outbound);
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
        }
        if !lingering {
            lingering = true;
            linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
        }
    }
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

async fn pump<R, W>(mut from: R, mut to: W, direction: Direction, shared: Option<Arc<Mutex<Shared>>>) -> Pumped
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = shared.as_ref().map(|_| FrameReader::new(direction));
    let mut buf = vec![0u8; 32 * 1024];
    let mut bytes = 0u64;
    let failed = |bytes, error: String| Pumped {
        bytes,
        error: Some(error),
    };
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return Pumped { bytes, error: None };
            }
            Ok(n) => n,
            // A peer that drops the connection ends its direction; not the gateway's failure.
            Err(_) => return Pumped { bytes, error: None },
        };
        if let (Some(frames), Some(shared)) = (frames.as_mut(), shared.as_ref()) {
            let events = match frames.push(&buf[..n]) {
                Ok(events) => events,
                Err(e) => return failed(bytes, format!("the stream could not be recorded: {e}")),
            };
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            for event in events {
                if let Err(e) = record(&mut s, direction, event) {
                    tracing::error!(error = %e, "Recording write failed; closing the exec stream.");
                    return failed(bytes, format!("the recording could not be written: {e}"));
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return Pumped { bytes, error: None };
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
