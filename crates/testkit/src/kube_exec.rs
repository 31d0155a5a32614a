//! The test API server's `pods/exec` and `pods/attach`: a WebSocket upgrade speaking the
//! Kubernetes channel protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io`) that runs a real local
//! process in place of the container. Channel 0 is stdin, 1 stdout, 2 stderr, 3 the final
//! `Status` (with the exit code), 4 terminal resizes, and in v5 `255 n` closes channel n.
//! `attach` attaches to `cat`, as if the container's main process echoed its input.

use std::collections::BTreeMap;
use std::process::Stdio;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::kube::Body;

/// The channel protocols served, best first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// What an upgrade request asks for, read from its query.
pub(crate) struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
    pub container: Option<String>,
}

impl ExecRequest {
    pub(crate) fn parse(query: &str, attach: bool) -> Self {
        let mut command = Vec::new();
        let mut flags = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (crate::kube::decode(k), crate::kube::decode(v));
            if k == "command" {
                command.push(v);
            } else {
                flags.insert(k, v);
            }
        }
        if attach {
            command = vec!["cat".into()];
        }
        let on = |k: &str| flags.get(k).is_some_and(|v| v == "true" || v == "1");
        Self {
            command,
            stdin: on("stdin"),
            tty: on("tty"),
            container: flags.get("container").cloned(),
        }
    }
}

/// Answers the upgrade (101 with the chosen subprotocol) and runs the process once the
/// connection is handed over; anything else is answered as the API server would.
pub(crate) fn upgrade(mut request: Request<Incoming>, exec: ExecRequest) -> Response<Body> {
    let headers = request.headers();
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_websocket {
        return plain(400, "BadRequest", "the test API server speaks exec over WebSocket only");
    }
    if exec.container.as_deref() == Some("answers-200") {
        // A misbehaving server (or a proxy in between) that answers an upgrade with 200.
        let mut response = Response::new(body(Bytes::from_static(b"this is not a tunnel")));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
        return response;
    }
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return plain(400, "BadRequest", "offer v5.channel.k8s.io or v4.channel.k8s.io");
    };
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(400, "BadRequest", "no Sec-WebSocket-Key");
    };
    if exec.command.is_empty() {
        return plain(
            400,
            "BadRequest",
            "you must specify at least one command for the container",
        );
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let v5 = *protocol == PROTOCOLS[0];
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        run(ws, exec, v5).await;
    });
    let mut response = Response::new(body(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderValue::from_static(protocol),
    );
    response
}

pub(crate) fn plain(code: u16, reason: &str, message: &str) -> Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    let mut response = Response::new(body(Bytes::from(status.to_string())));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn body(bytes: Bytes) -> Body {
    Full::new(bytes).boxed()
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn run(ws: Ws, exec: ExecRequest, v5: bool) {
    let (mut sink, mut stream) = ws.split();
    let mut command = tokio::process::Command::new(&exec.command[0]);
    command
        .args(&exec.command[1..])
        .stdin(if exec.stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": format!("failed to exec in container: {e}")});
            let _ = sink.send(channel(3, status.to_string().as_bytes())).await;
            let _ = sink.close().await;
            return;
        }
    };
    let mut stdin = child.stdin.take();
    let (tx, mut rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    // With a tty, stderr joins stdout as a terminal would show it.
    let stderr_channel = if exec.tty { 1 } else { 2 };
    for (id, out) in [
        (
            1u8,
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ),
        (stderr_channel, child.stderr.take().map(|s| Box::new(s) as _)),
    ] {
        let Some(mut out) = out else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = out.read(&mut buf).await {
                if n == 0 || tx.send((id, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some((id, data)) => {
                    if sink.send(channel(id, &data)).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            message = stream.next() => match message {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(0) => {
                        if let Some(s) = stdin.as_mut() && s.write_all(&data[1..]).await.is_err() {
                            stdin = None;
                        }
                    }
                    Some(255) if v5 && data.get(1) == Some(&0) => stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
    drop(stdin);
    let status = match child.wait().await {
        Ok(s) if s.success() => json!({"metadata": {}, "status": "Success"}),
        Ok(s) => {
            let code = s.code().unwrap_or(128);
            failure(&exec.command, code)
        }
        Err(e) => json!({"metadata": {}, "status": "Failure", "reason": "InternalError", "message": e.to_string()}),
    };
    let _ = sink.send(channel(3, status.to_string().as_bytes())).await;
    // A normal closure (1000), as the API server ends a stream; a bare close (1005) makes
    // kubectl report an error.
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(normal))).await;
    // Let the client's close answer arrive before the connection drops.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(m)) = stream.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
}

/// The `Status` the kubelet sends for a non-zero exit code.
fn failure(command: &[String], code: i32) -> Value {
    json!({"metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

fn channel(id: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(id);
    bytes.extend_from_slice(data);
    Message::Binary(bytes.into())
}
