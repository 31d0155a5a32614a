//! `bench/kube.sh`: requests per second through the Kubernetes gateway against the same
//! requests sent directly to the testkit's API server, with the same client for all.
//!
//! Usage: `kube-bench GATEHOUSE_BIN [SECONDS] [CONCURRENCY]`. Starts the test API server
//! (seeded with 1,000 Secrets in namespace `bulk`), a `gatehouse serve`, and the two floors a
//! gateway is compared against, found next to this binary: `copy-relay` (bytes copied over
//! TCP; the client's TLS goes through to the API server) and `https-relay` (TLS terminated,
//! each request parsed and forwarded over the relay's own TLS connection with its own token,
//! nothing else). For each of GET of one pod and LIST of the 1,000 Secrets (masked through
//! the gateway) it runs CONCURRENCY keep-alive HTTPS connections, each sending one request
//! after another for SECONDS, in the order direct, copy relay, HTTPS relay, gateway. Prints
//! requests per second for each and the gateway's ratios to direct and to the HTTPS relay,
//! and the CPU time (user + system, from `/proc`) each proxy process spent per request: unlike
//! requests per second, that figure hardly depends on what else the machine is doing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use gatehouse_testkit::gateway::{GatewayBuilder, free_port};
use gatehouse_testkit::kube::KubeApiServer;
use gatehouse_testkit::tls::TestCerts;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;

/// Where to send and as whom.
#[derive(Clone)]
struct Target {
    /// The proxy process in the path (none for direct): its CPU per request is reported.
    proxy: Option<u32>,
    port: u16,
    prefix: String,
    token: String,
    roots: Arc<rustls::RootCertStore>,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(bin) = args.next() else {
        bail!("usage: kube-bench GATEHOUSE_BIN [SECONDS] [CONCURRENCY]");
    };
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let concurrency: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let api = KubeApiServer::start()?;
    for i in 0..1000 {
        api.put(
            "secrets",
            "bulk",
            serde_json::json!({"metadata": {"name": format!("secret-{i:04}")}, "type": "Opaque",
                "data": {"password": "aHVudGVyMi1wcm9kLXNlY3JldA==", "user": "YWRtaW4="}}),
        )?;
    }
    let upstream = api.write_kubeconfig()?;
    let dir = tempfile::tempdir()?;
    let certs = TestCerts::generate(dir.path())?;
    let port = free_port()?;
    let gw = GatewayBuilder::new(PathBuf::from(bin))
        .config(&format!(
            "[kube]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n[[kube.clusters]]\nname = \"dev\"\nkubeconfig = \"{}\"\nlabels = {{ env = \"dev\" }}\n",
            certs.server_cert.display(),
            certs.server_key.display(),
            upstream.display()
        ))
        .start()?;
    let token = gw.mint("bench", &[], false)?;
    let roots = |ca: &std::path::Path| -> anyhow::Result<Arc<rustls::RootCertStore>> {
        let mut store = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)? {
            store.add(cert?)?;
        }
        Ok(Arc::new(store))
    };
    let api_port: u16 = api.url().rsplit(':').next().unwrap_or("0").parse()?;
    let direct = Target {
        proxy: None,
        port: api_port,
        prefix: String::new(),
        token: api.token().to_string(),
        roots: roots(api.ca_cert())?,
    };
    let gateway = Target {
        proxy: Some(gw.pid()),
        port,
        prefix: "/clusters/dev".into(),
        token,
        roots: roots(&certs.ca_cert)?,
    };

    let bins = std::env::current_exe()?
        .parent()
        .context("kube-bench has no directory")?
        .to_path_buf();
    let api_addr = format!("127.0.0.1:{api_port}");
    let copy_port = free_port()?;
    let _copy = Relay::start(
        &bins.join("copy-relay"),
        &[&format!("127.0.0.1:{copy_port}"), &api_addr],
    )?;
    let https_port = free_port()?;
    let _https = Relay::start(
        &bins.join("https-relay"),
        &[
            &format!("127.0.0.1:{https_port}"),
            &certs.server_cert.display().to_string(),
            &certs.server_key.display().to_string(),
            &api_addr,
            &api.ca_cert().display().to_string(),
            api.token(),
        ],
    )?;
    let copy = Target {
        proxy: Some(_copy.0.id()),
        port: copy_port,
        ..direct.clone()
    };
    let https = Target {
        proxy: Some(_https.0.id()),
        port: https_port,
        prefix: String::new(),
        token: "unused-the-relay-sends-its-own".into(),
        roots: gateway.roots.clone(),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("kube-bench: {seconds} s per run, {concurrency} connections, keep-alive; requests per second");
    println!(
        "{:<18} {:>9} {:>11} {:>11} {:>9}   gateway/direct  gateway/https-relay",
        "", "direct", "copy-relay", "https-relay", "gateway"
    );
    for (name, path) in [
        ("GET pod", "/api/v1/namespaces/shop/pods/web-0"),
        ("LIST 1000 secrets", "/api/v1/namespaces/bulk/secrets"),
    ] {
        let mut rates = Vec::new();
        let mut sizes = Vec::new();
        let mut cpu = Vec::new();
        for target in [&direct, &copy, &https, &gateway] {
            let (rate, size, us) = runtime.block_on(run(target, path, seconds, concurrency))?;
            rates.push(rate);
            sizes.push(size);
            cpu.push(us);
        }
        println!(
            "{name:<18} {:>9.1} {:>11.1} {:>11.1} {:>9.1}   {:>13.2}x  {:>18.2}x",
            rates[0],
            rates[1],
            rates[2],
            rates[3],
            rates[3] / rates[0],
            rates[3] / rates[2]
        );
        println!(
            "{:<18} (response bytes: direct {}, copy-relay {}, https-relay {}, gateway {})",
            "", sizes[0], sizes[1], sizes[2], sizes[3]
        );
        println!(
            "{:<18} (proxy CPU per request: copy-relay {:.1} µs, https-relay {:.1} µs, gateway {:.1} µs; gateway/https-relay {:.2}x)",
            "",
            cpu[1],
            cpu[2],
            cpu[3],
            cpu[3] / cpu[2]
        );
    }
    drop(gw);
    drop(api);
    Ok(())
}

/// A relay process, killed when dropped.
struct Relay(Child);

impl Relay {
    fn start(bin: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (cargo build --release -p gatehouse-testkit)",
                    bin.display()
                )
            })?;
        let relay = Relay(child);
        let port: u16 = args[0].rsplit(':').next().unwrap_or("0").parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("{} did not listen on port {port}", bin.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(relay)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Requests per second over `seconds`, the size of the last response body, and the CPU time
/// the proxy in the path spent per request meanwhile, in microseconds (0 for direct).
async fn run(target: &Target, path: &str, seconds: u64, concurrency: usize) -> anyhow::Result<(f64, u64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let size = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (target, stop, done, size) = (target.clone(), stop.clone(), done.clone(), size.clone());
        let path = format!("{}{path}", target.prefix);
        workers.push(tokio::spawn(
            async move { worker(target, path, stop, done, size).await },
        ));
    }
    // A warm-up second (connections, TLS, the gateway's session cache), then the measurement.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_count = done.load(Ordering::SeqCst);
    let cpu_before = target.proxy.map(cpu_seconds).transpose()?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let count = done.load(Ordering::SeqCst) - start_count;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = target.proxy.map(cpu_seconds).transpose()?;
    let cpu_us = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if count > 0 => (after - before) * 1e6 / count as f64,
        _ => 0.0,
    };
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.context("worker panicked")??;
    }
    Ok((count as f64 / elapsed, size.load(Ordering::SeqCst), cpu_us))
}

/// User + system CPU time the process has used so far, in seconds (`/proc/PID/stat`).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = fields
        .get(11..13)
        .context("short /proc stat")?
        .iter()
        .map(|f| f.parse::<f64>())
        .sum::<Result<f64, _>>()?;
    Ok(ticks / clock_ticks()?)
}

/// Clock ticks per second, the unit of `/proc` CPU times (`getconf CLK_TCK`), asked once.
fn clock_ticks() -> anyhow::Result<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    if let Some(ticks) = TICKS.get() {
        return Ok(*ticks);
    }
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let ticks: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;
    Ok(*TICKS.get_or_init(|| ticks))
}

async fn worker(
    target: Target,
    path: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    size: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(target.roots.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", target.port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let tls = connector.connect(name, tcp).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let auth = format!("Bearer {}", target.token);
    while !stop.load(Ordering::SeqCst) {
        let request = http::Request::get(path.as_str())
            .header(http::header::HOST, "localhost")
            .header(http::header::AUTHORIZATION, auth.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())?;
        send.ready().await?;
        let response = send.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        size.store(body.len() as u64, Ordering::SeqCst);
        done.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}
