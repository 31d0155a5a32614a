//! The accept loop every frontend shares: a bounded number of connections, one task each,
//! and an orderly stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// How long the loop pauses after a failed `accept` (typically EMFILE), so a full file
/// table does not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Resolves once `shutdown` turns true (or its sender is gone, which means the same).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Accepts connections on `listener` and runs `connection` for each in its own task, with
/// at most `max_connections` open at once: past the limit the loop stops accepting and new
/// clients wait in the kernel's backlog rather than being accepted and dropped. When
/// `shutdown` turns true the listener is closed and the loop waits for every connection
/// task to finish (each gets the shutdown signal too, to say goodbye in its protocol).
///
/// `name` is the protocol's name for the logs.
pub async fn serve_connections<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
    mut connection: F,
) where
    F: FnMut(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut shutdown) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut shutdown) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(protocol = name, %error, "Accept failed.");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Interactive protocols: every round trip counts.
        let _ = tcp.set_nodelay(true);
        let task = connection(tcp, peer, shutdown.clone());
        tasks.spawn(async move {
            task.await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// The TLS settings of a listener that carries callers' tokens: a certificate and its key
/// together, or plaintext, and plaintext only on loopback (demos and tests). `section`
/// names the config section in the message, `why` says why TLS is needed there.
pub fn check_listener_tls(
    section: &str,
    listen: SocketAddr,
    tls_cert: Option<&Path>,
    tls_key: Option<&Path>,
    allow_plaintext: bool,
    why: &str,
) -> Result<(), String> {
    if tls_cert.is_some() != tls_key.is_some() {
        return Err(format!("{section}.tls_cert and {section}.tls_key go together"));
    }
    if allow_plaintext && !listen.ip().is_loopback() {
        return Err(format!(
            "{section}.allow_plaintext: plaintext is allowed only on a loopback listener, not {listen}"
        ));
    }
    if tls_cert.is_none() && !allow_plaintext {
        return Err(format!(
            "{section}.tls_cert: {why}, so the listener needs TLS (or allow_plaintext = true on loopback)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A connection task that greets, then holds the connection until the client closes it
    /// or the gateway stops.
    async fn greeter(mut tcp: TcpStream, open: Arc<AtomicUsize>, mut shutdown: watch::Receiver<bool>) {
        open.fetch_add(1, Ordering::SeqCst);
        let _ = tcp.write_all(b"hello\n").await;
        let mut buf = [0u8; 1];
        tokio::select! {
            _ = tcp.read(&mut buf) => {}
            _ = stopped(&mut shutdown) => { let _ = tcp.write_all(b"bye\n").await; }
        }
        open.fetch_sub(1, Ordering::SeqCst);
    }

    async fn greeting(tcp: &mut TcpStream) -> Option<String> {
        let mut buf = [0u8; 6];
        match tokio::time::timeout(Duration::from_millis(300), tcp.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(String::from_utf8_lossy(&buf).into_owned()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn holds_back_connections_past_the_limit_and_says_goodbye_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&open);
        let server = tokio::spawn(serve_connections(
            "test",
            listener,
            2,
            shutdown,
            move |tcp, _, shutdown| greeter(tcp, Arc::clone(&counter), shutdown),
        ));

        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert_eq!(greeting(&mut first).await.as_deref(), Some("hello\n"));
        assert_eq!(greeting(&mut second).await.as_deref(), Some("hello\n"));
        // The third waits in the backlog: connected at TCP level, never served.
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert_eq!(greeting(&mut third).await, None);
        assert_eq!(open.load(Ordering::SeqCst), 2);

        // One leaves, the third is served.
        drop(first);
        assert_eq!(greeting(&mut third).await.as_deref(), Some("hello\n"));

        // Shutdown: every open connection hears it, the loop returns once they are done,
        // and nobody new is accepted.
        stop.send(true).unwrap();
        let mut bye = [0u8; 4];
        second.read_exact(&mut bye).await.unwrap();
        assert_eq!(&bye, b"bye\n");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(open.load(Ordering::SeqCst), 0);
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn listener_tls_needs_a_pair_and_plaintext_only_on_loopback() {
        let cert = Some(Path::new("c.pem"));
        let loopback: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:1".parse().unwrap();
        let check = |listen, cert, key, plain| check_listener_tls("x", listen, cert, key, plain, "tokens travel");
        assert!(check(public, cert, cert, false).is_ok());
        assert!(check(loopback, None, None, true).is_ok());
        assert_eq!(
            check(public, cert, None, false).unwrap_err(),
            "x.tls_cert and x.tls_key go together"
        );
        assert!(
            check(public, None, None, true)
                .unwrap_err()
                .starts_with("x.allow_plaintext: ")
        );
        let missing = check(loopback, None, None, false).unwrap_err();
        assert!(
            missing.starts_with("x.tls_cert: tokens travel, so the listener needs TLS"),
            "{missing}"
        );
    }
}
