//! A throwaway OpenSSH `sshd` per test, from the machine's own Debian package: the real
//! target the SSH gateway talks to, on a free loopback port with its own host key, its own
//! authorized key and a config in a temp dir. Stopped and removed on drop, even when the
//! test panicked.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::gateway::free_port;

/// A running `sshd` owned by a test. The login user is the user running the tests (root
/// in CI, allowed with `PermitRootLogin prohibit-password`); the only way in is the
/// generated client key, which stands for the gateway's credential.
pub struct SshServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    /// `ssh-ed25519 AAAA...`, without the comment.
    host_key: String,
    login_user: String,
}

const SSHD: &str = "/usr/sbin/sshd";
const HOST: &str = "127.0.0.1";
/// sshd refuses to start without its privilege separation directory; Debian's service
/// unit creates it, which never ran in a container.
const PRIVSEP_DIR: &str = "/run/sshd";
const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
const CLIENT_KEY_FILE: &str = "gateway_ed25519";
const CONFIG_FILE: &str = "sshd_config";
const LOG_FILE: &str = "sshd.log";

/// Serialises the one-off package installation between servers starting in parallel.
static INSTALL: Mutex<()> = Mutex::new(());

impl SshServer {
    /// Generates keys and a config in a temp dir and starts `sshd` on a free loopback
    /// port; returns once it answers `ssh-keyscan` with its own host key.
    pub fn start() -> anyhow::Result<SshServer> {
        ensure_installed()?;
        ensure_privsep_dir()?;
        let login_user = current_user()?;
        let dir = tempfile::Builder::new().prefix("gatehouse-sshd").tempdir()?;
        keygen(&dir.path().join(HOST_KEY_FILE), "gatehouse-test-host")?;
        keygen(&dir.path().join(CLIENT_KEY_FILE), "gatehouse-test-gateway")?;
        std::fs::copy(
            dir.path().join(format!("{CLIENT_KEY_FILE}.pub")),
            dir.path().join("authorized_keys"),
        )?;
        let host_key = public_key(&dir.path().join(format!("{HOST_KEY_FILE}.pub")))?;
        let penalties = supports_per_source_penalties();
        let mut server = SshServer {
            dir,
            child: None,
            port: 0,
            host_key,
            login_user,
        };
        // The port is picked by binding port 0; another process could take it before sshd
        // binds, so a failed start retries with a fresh port.
        let mut last_error = None;
        for _ in 0..5 {
            server.port = free_port()?;
            std::fs::write(server.config_path(), server.config(penalties))?;
            let log = std::fs::File::create(server.dir.path().join(LOG_FILE))?;
            let child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(server.config_path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {SSHD}"))?;
            server.child = Some(child);
            match server.wait_ready() {
                Ok(()) => {
                    std::fs::write(
                        server.known_hosts_path(),
                        format!("{}\n", server.host_key_public_line()),
                    )?;
                    return Ok(server);
                }
                Err(error) => {
                    server.stop();
                    last_error = Some(format!("{error:#}\n{}", server.log()));
                }
            }
        }
        bail!("sshd did not start: {}", last_error.unwrap_or_default())
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host to connect to.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The host key as a `known_hosts` line: `[127.0.0.1]:PORT ssh-ed25519 AAAA...`.
    pub fn host_key_public_line(&self) -> String {
        format!("[{HOST}]:{} {}", self.port, self.host_key)
    }

    /// A `known_hosts` file holding just [`Self::host_key_public_line`].
    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The private key sshd accepts (OpenSSH format, mode 0600): the gateway's credential.
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join(CLIENT_KEY_FILE)
    }

    /// The account to log in as: the user running the tests.
    pub fn login_user(&self) -> &str {
        &self.login_user
    }

    /// The server's temp dir, for marker files and extra keys.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `[[ssh.targets]]` block that puts this sshd behind the gateway as `name`, with
    /// the gateway logging in with the generated client key; `labels` is the body of a TOML
    /// inline table such as `env = "prod"`.
    pub fn target_toml(&self, name: &str, labels: &str) -> String {
        format!(
            r#"
[[ssh.targets]]
name = "{name}"
host = "{host}"
port = {port}
login = "{login}"
private_key_file = "{key}"
known_hosts = "{known_hosts}"
labels = {{ {labels} }}
"#,
            host = self.host(),
            port = self.port(),
            login = self.login_user(),
            key = self.client_key_path().display(),
            known_hosts = self.known_hosts_path().display(),
        )
    }

    /// What sshd wrote to stderr so far; for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG_FILE)).unwrap_or_default()
    }

    /// The real `ssh` client, set up to log in directly with the client key and to check
    /// the host key strictly; append the remote command with `.arg(...)`. It reads no
    /// user config, agent or other identity, and never prompts.
    pub fn ssh_command(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(self.client_key_path())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts_path().display()))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "UpdateHostKeys=no",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "LogLevel=ERROR",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg(format!("{}@{HOST}", self.login_user))
            .stdin(Stdio::null());
        cmd
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join(CONFIG_FILE)
    }

    fn config(&self, per_source_penalties: bool) -> String {
        let dir = self.dir.path().display();
        let mut config = format!(
            "ListenAddress {HOST}:{port}\n\
             HostKey {dir}/{HOST_KEY_FILE}\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             PidFile {dir}/sshd.pid\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             StrictModes no\n\
             UsePAM no\n\
             X11Forwarding no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             AcceptEnv LANG LC_*\n\
             Subsystem sftp internal-sftp\n",
            port = self.port,
        );
        if per_source_penalties {
            // OpenSSH 9.8+ would lock 127.0.0.1 out after a few refused logins, which tests
            // of refusals cause on purpose.
            config.push_str("PerSourcePenalties no\n");
        }
        config
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let key_blob = self.host_key.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("sshd exited with {status}");
            }
            // Another process may own the port: only our own host key proves it is ours.
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                let out = Command::new("ssh-keyscan")
                    .args(["-T", "5", "-t", "ed25519", "-p"])
                    .arg(self.port.to_string())
                    .arg(HOST)
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
                    .context("running ssh-keyscan")?;
                if String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .any(|field| field == key_blob)
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("sshd not ready on port {} after 30s", self.port);
            }
            // Polling a starting server: a short pause between connection attempts.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        self.stop();
        // TempDir removes the directory when `dir` drops after this.
    }
}

/// Installs Debian's `openssh-server` once when `sshd` is missing (the justfile's setup
/// recipe does this on fresh machines; this covers a machine set up before it did).
fn ensure_installed() -> anyhow::Result<()> {
    let _guard = INSTALL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if Path::new(SSHD).exists() {
        return Ok(());
    }
    let out = Command::new("apt-get")
        .args(["install", "-y", "openssh-server"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .context("running apt-get install openssh-server")?;
    if !out.status.success() || !Path::new(SSHD).exists() {
        bail!(
            "{SSHD} is missing and apt-get install openssh-server failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn ensure_privsep_dir() -> anyhow::Result<()> {
    let dir = Path::new(PRIVSEP_DIR);
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {PRIVSEP_DIR} for sshd"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `sshd -V` prints `OpenSSH_9.2, OpenSSL ...` (on stderr); PerSourcePenalties came in 9.8.
fn supports_per_source_penalties() -> bool {
    let Ok(out) = Command::new(SSHD).arg("-V").stdin(Stdio::null()).output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.split("OpenSSH_").nth(1) else {
        return false;
    };
    let mut numbers = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= (9, 8)
}

fn keygen(path: &Path, comment: &str) -> anyhow::Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!("ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `ssh-ed25519 AAAA...` from a `.pub` file, without the comment.
fn public_key(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let mut fields = text.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(blob)) => Ok(format!("{kind} {blob}")),
        _ => bail!("unexpected public key file {}", path.display()),
    }
}

/// The name of the effective user, from /proc and /etc/passwd (no libc in this crate).
fn current_user() -> anyhow::Result<String> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 2 && fields[2] == euid)
        .map(|fields| fields[0].to_owned())
        .with_context(|| format!("no /etc/passwd entry for uid {euid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh_echo(server: &SshServer, known_hosts: &Path, key: &Path) -> std::process::Output {
        Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-i",
            ])
            .arg(key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-p"])
            .arg(server.port().to_string())
            .arg(format!("{}@127.0.0.1", server.login_user()))
            .args(["echo", "hello"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    #[test]
    fn two_servers_start_concurrently_and_real_ssh_logs_in() {
        let a = std::thread::spawn(SshServer::start);
        let b = std::thread::spawn(SshServer::start);
        let a = a.join().unwrap().unwrap();
        let b = b.join().unwrap().unwrap();
        assert_ne!(a.port(), b.port());
        for server in [&a, &b] {
            let known_hosts = server.dir().join("test_known_hosts");
            std::fs::write(&known_hosts, format!("{}\n", server.host_key_public_line())).unwrap();
            let out = ssh_echo(server, &known_hosts, &server.client_key_path());
            assert!(
                out.status.success(),
                "ssh failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                server.log()
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
        }
    }

    #[test]
    fn the_host_key_is_checked_and_only_the_client_key_logs_in() {
        let a = SshServer::start().unwrap();
        let b = SshServer::start().unwrap();
        // b's host key under a's name: strict checking refuses a.
        let wrong_hosts = a.dir().join("wrong_known_hosts");
        std::fs::write(&wrong_hosts, format!("[127.0.0.1]:{} {}\n", a.port(), b.host_key)).unwrap();
        let out = ssh_echo(&a, &wrong_hosts, &a.client_key_path());
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        // b's client key is not authorized on a.
        let out = ssh_echo(&a, &a.known_hosts_path(), &b.client_key_path());
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        // The right pair works, through the prepared command too.
        let out = a.ssh_command().args(["printf", "%s", "ok"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, b"ok");
    }

    #[test]
    fn drop_stops_sshd_and_removes_the_dir() {
        let server = SshServer::start().unwrap();
        let dir = server.dir().to_path_buf();
        let proc_dir = PathBuf::from(format!("/proc/{}", server.child.as_ref().unwrap().id()));
        assert!(proc_dir.exists());
        drop(server);
        assert!(!dir.exists());
        assert!(!proc_dir.exists(), "sshd still running");
    }
}
