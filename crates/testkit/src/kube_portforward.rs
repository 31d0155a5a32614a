//! The test API server's `pods/portforward` over WebSocket, as the kubelet serves it to the
//! Python client and other WebSocket clients (`v4.channel.k8s.io`, ports in the `ports=`
//! query): two channels per port, data (`2i`) and error (`2i + 1`), and the server's first
//! frame on each carries the port as two little-endian bytes. Each port is forwarded to
//! `127.0.0.1:<port>`, the "pod". kubectl 1.31+ tunnels SPDY inside the WebSocket
//! (`SPDY/3.1+portforward.k8s.io`), which this server does not speak: it answers 400.

use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::kube::Body;
use crate::kube_exec::plain;

/// The one WebSocket port-forward protocol served (the kubelet's binary one).
const PROTOCOL: &str = "v4.channel.k8s.io";

/// Answers the upgrade and forwards each port once the connection is handed over.
pub(crate) fn upgrade(mut request: Request<Incoming>) -> Response<Body> {
    let headers = request.headers();
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_websocket {
        return plain(
            400,
            "BadRequest",
            "the test API server speaks port-forward over WebSocket only",
        );
    }
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PROTOCOL);
    if !offered {
        return plain(
            400,
            "BadRequest",
            "the test API server speaks port-forward over v4.channel.k8s.io only (not SPDY tunnelled in WebSocket)",
        );
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(400, "BadRequest", "no Sec-WebSocket-Key");
    };
    let mut ports = Vec::new();
    for pair in request.uri().query().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "ports" {
            for p in crate::kube::decode(v).split(',') {
                match p.trim().parse::<u16>() {
                    Ok(port) if port != 0 => ports.push(port),
                    _ => return plain(400, "BadRequest", &format!("invalid port {p:?}")),
                }
            }
        }
    }
    if ports.is_empty() {
        return plain(400, "BadRequest", "query parameter \"ports\" is required");
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        run(ws, ports).await;
    });
    let mut response = Response::new(crate::kube_exec::body(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderValue::from_static(PROTOCOL),
    );
    response
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn run(ws: Ws, ports: Vec<u16>) {
    let (mut sink, mut stream) = ws.split();
    // Frames to the client, from every port's reader.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    // Bytes from the client, per port.
    let mut writers = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        let [lo, hi] = port.to_le_bytes();
        for channel in [data, error] {
            if sink.send(Message::Binary(vec![channel, lo, hi].into())).await.is_err() {
                return;
            }
        }
        let (to_port, mut from_client) = mpsc::channel::<Vec<u8>>(16);
        writers.push(to_port);
        let tx = tx.clone();
        tokio::spawn(async move {
            let tcp = match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    let mut frame = vec![error];
                    frame.extend_from_slice(format!("error forwarding port {port} to pod: {e}").as_bytes());
                    let _ = tx.send(frame).await;
                    return;
                }
            };
            let (mut read, mut write) = tcp.into_split();
            let writer = tokio::spawn(async move {
                while let Some(bytes) = from_client.recv().await {
                    if write.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                let _ = write.shutdown().await;
            });
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(data);
                        frame.extend_from_slice(&buf[..n]);
                        if tx.send(frame).await.is_err() {
                            break;
                        }
                    }
                }
            }
            writer.abort();
        });
    }
    drop(tx);
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(frame) => {
                    if sink.send(Message::Binary(frame.into())).await.is_err() {
                        return;
                    }
                }
                // Every port's connection ended: so does the stream, as the kubelet's does.
                None => break,
            },
            message = stream.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    let Some((&channel, rest)) = data.split_first() else { continue };
                    if channel % 2 == 0
                        && let Some(w) = writers.get(usize::from(channel / 2))
                    {
                        let _ = w.send(rest.to_vec()).await;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = sink.send(Message::Close(None)).await;
}
