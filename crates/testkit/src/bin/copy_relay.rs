//! A bare TCP relay, the baseline a protocol-aware gateway is compared against in
//! `bench/pgbench.sh`: whatever the gateway costs beyond this is parsing, policy and audit.
//!
//! Usage: `copy-relay LISTEN_ADDR TARGET_ADDR`. Runs until killed.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(target), None) = (args.next(), args.next(), args.next()) else {
        bail!("usage: copy-relay LISTEN_ADDR TARGET_ADDR");
    };
    let listen: SocketAddr = listen.parse().with_context(|| format!("bad listen address {listen}"))?;
    let target: SocketAddr = target.parse().with_context(|| format!("bad target address {target}"))?;
    // The same runtime flavour as `gatehouse serve`, so the comparison is like for like.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(listen, target))
}

async fn serve(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: keep serving the connections we have.
                eprintln!("copy-relay: accept failed: {error}");
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(error) = relay(client, target).await {
                eprintln!("copy-relay: connection from {peer}: {error:#}");
            }
        });
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let mut upstream = TcpStream::connect(target)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    upstream.set_nodelay(true)?;
    copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
