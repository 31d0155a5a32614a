//! A real `gatehouse serve` process for end-to-end tests: its own temp dir, a free admin
//! port, the development issuer, and a copy of the example policies. Stopped on drop, even
//! when the test fails.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The repository's `policies/` directory.
pub fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

/// Copies a directory tree (policy sets are small).
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// How to start a test gateway.
pub struct GatewayBuilder {
    bin: PathBuf,
    extra_config: String,
    admin_tls: Option<(PathBuf, PathBuf)>,
}

/// A running gateway.
pub struct TestGateway {
    dir: tempfile::TempDir,
    bin: PathBuf,
    config: PathBuf,
    admin: SocketAddr,
    child: Child,
    admin_tls: bool,
}

impl GatewayBuilder {
    /// `bin` is the gatehouse binary (`env!("CARGO_BIN_EXE_gatehouse")` in its tests).
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            extra_config: String::new(),
            admin_tls: None,
        }
    }

    /// Serve the admin listener over TLS with this certificate chain and key (PEM files).
    pub fn admin_tls(mut self, cert: &Path, key: &Path) -> Self {
        self.admin_tls = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    /// TOML appended to the generated config (frontend sections, targets, ...).
    /// `{dir}` is replaced by the gateway's temp dir.
    pub fn config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self.extra_config.push('\n');
        self
    }

    pub fn start(self) -> anyhow::Result<TestGateway> {
        let dir = tempfile::Builder::new().prefix("gatehouse-gw-").tempdir()?;
        copy_dir(&repo_policies(), &dir.path().join("policies"))?;
        let port = free_port()?;
        let admin: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = dir.path().join("gatehouse.toml");
        let tls = match &self.admin_tls {
            Some((cert, key)) => format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display()),
            None => String::new(),
        };
        let text = format!(
            "state_dir = \"state\"\n\n[admin]\nlisten = \"{admin}\"\n{tls}\n[identity.dev_issuer]\nenabled = true\n\n[policy]\ndir = \"policies\"\nreload_interval = \"200ms\"\n\n{}",
            self.extra_config.replace("{dir}", &dir.path().display().to_string())
        );
        std::fs::write(&config, text)?;
        let log = std::fs::File::create(dir.path().join("gateway.log"))?;
        let child = Command::new(&self.bin)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,gatehouse=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let mut gateway = TestGateway {
            dir,
            bin: self.bin,
            config,
            admin,
            child,
            admin_tls: self.admin_tls.is_some(),
        };
        gateway.wait_healthy()?;
        Ok(gateway)
    }
}

impl TestGateway {
    fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("gateway exited ({status}) before it was healthy:\n{}", self.log());
            }
            // Over TLS the plain-HTTP probe cannot speak; a bound listener is the signal.
            let up = if self.admin_tls {
                TcpStream::connect_timeout(&self.admin, Duration::from_secs(1)).is_ok()
            } else {
                matches!(self.get("/healthz"), Ok((200, _)))
            };
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("gateway not healthy after 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The gateway process's id (benchmarks read its CPU time from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("state/audit")
    }

    /// What the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Runs the gatehouse CLI with `args` (no config flag added).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(&self.bin).args(args).stdin(Stdio::null()).output()?)
    }

    /// Runs `gatehouse approvals ARGS` against this gateway as the holder of `token`.
    pub fn approvals(&self, token: &str, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(&self.bin)
            .arg("approvals")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("GATEHOUSE_TOKEN", token)
            .stdin(Stdio::null())
            .output()?)
    }

    /// A development token for `sub` in `groups`; `agent` mints a workload token.
    pub fn mint(&self, sub: &str, groups: &[&str], agent: bool) -> anyhow::Result<String> {
        self.mint_for(sub, groups, agent, "10m")
    }

    /// Like [`TestGateway::mint`] with a lifetime such as "3s".
    pub fn mint_for(&self, sub: &str, groups: &[&str], agent: bool, ttl: &str) -> anyhow::Result<String> {
        let config = self.config.display().to_string();
        let groups = groups.join(",");
        let mut args = vec!["token", "mint", "--config", &config, "--sub", sub, "--ttl", ttl];
        if !groups.is_empty() {
            args.extend(["--groups", &groups]);
        }
        if agent {
            args.push("--agent");
        }
        let out = self.cli(&args)?;
        if !out.status.success() {
            bail!("token mint failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// A plain HTTP/1.0 request to the admin listener: (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.admin, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", self.admin);
        if let Some(token) = bearer {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status line")?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.request("GET", path, None, None)
    }

    /// Kills the gateway outright (SIGKILL: no draining, like a crash or a lost machine)
    /// and starts it again on the same config and state directory.
    pub fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("gateway.log"))?;
        self.child = Command::new(&self.bin)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,gatehouse=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot restart {}", self.bin.display()))?;
        self.wait_healthy()
    }

    /// Sends SIGHUP (policy reload).
    pub fn hangup(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -HUP failed");
        Ok(())
    }

    /// Sends SIGTERM (graceful shutdown) and waits up to `timeout` for the process to exit;
    /// returns its exit status (kills it when it does not exit in time, and fails).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "the gateway did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Polls `check` every 25 ms until it returns true or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        check()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        // Already exited (terminate): its pid may belong to someone else by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first so the gateway drains and flushes; then make sure it is gone.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
