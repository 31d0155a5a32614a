//! A bare TLS-terminating HTTP/1.1 relay, the floor `bench/kube.sh` measures the Kubernetes
//! gateway against: it terminates the client's TLS, parses each request and response, and
//! forwards them over its own TLS connection with its own bearer token — what any HTTPS
//! reverse proxy must do — and nothing else (no identity, policy, audit or masking).
//! Whatever the gateway costs beyond this is its own work.
//!
//! Usage: `https-relay LISTEN_ADDR CERT_PEM KEY_PEM UPSTREAM_ADDR UPSTREAM_CA_PEM TOKEN`.
//! Each client connection gets one upstream connection (the cheapest pairing there is);
//! bodies stream both ways. Runs until killed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderValue};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Body = BoxBody<Bytes, hyper::Error>;

struct Upstream {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    auth: HeaderValue,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key, upstream, ca, token] = args.as_slice() else {
        bail!("usage: https-relay LISTEN_ADDR CERT_PEM KEY_PEM UPSTREAM_ADDR UPSTREAM_CA_PEM TOKEN");
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listen: SocketAddr = listen.parse().with_context(|| format!("bad listen address {listen}"))?;
    let server = server_config(Path::new(cert), Path::new(key))?;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(ca).with_context(|| format!("cannot read {ca}"))? {
        roots.add(der?)?;
    }
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let upstream = Arc::new(Upstream {
        addr: upstream
            .parse()
            .with_context(|| format!("bad upstream address {upstream}"))?,
        tls: tokio_rustls::TlsConnector::from(Arc::new(client)),
        auth: HeaderValue::from_str(&format!("Bearer {token}"))?,
    });
    // The same runtime flavour as `gatehouse serve`, so the comparison is like for like.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(
        listen,
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        upstream,
    ))
}

fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("cannot read {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

async fn serve(listen: SocketAddr, acceptor: tokio_rustls::TlsAcceptor, upstream: Arc<Upstream>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("https-relay: accept failed: {error}");
                continue;
            }
        };
        let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
        tokio::spawn(async move {
            if let Err(error) = relay(client, acceptor, upstream).await {
                eprintln!("https-relay: connection from {peer}: {error:#}");
            }
        });
    }
}

async fn relay(client: TcpStream, acceptor: tokio_rustls::TlsAcceptor, upstream: Arc<Upstream>) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let Ok(client) = acceptor.accept(client).await else {
        return Ok(()); // a connection that never spoke TLS (kube-bench's readiness probe)
    };
    let tcp = TcpStream::connect(upstream.addr)
        .await
        .with_context(|| format!("cannot connect to {}", upstream.addr))?;
    tcp.set_nodelay(true)?;
    let tls = upstream.tls.connect(ServerName::try_from("localhost")?, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let sender = Arc::new(Mutex::new(sender));
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        let (sender, auth) = (sender.clone(), upstream.auth.clone());
        async move {
            request.headers_mut().insert(AUTHORIZATION, auth);
            let request = request.map(|body| body.boxed());
            let mut sender = sender.lock().await;
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            Ok::<_, hyper::Error>(response.map(|body| body.boxed()))
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await?;
    Ok(())
}
