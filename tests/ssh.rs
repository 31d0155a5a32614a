//! The SSH gateway end to end: a real OpenSSH `sshd` as the host, a real `gatehouse serve`,
//! and the real OpenSSH `ssh`, `scp` and `sftp` clients answering the password prompt with
//! a `ghc_` credential through `sshpass` (OpenSSH cuts answers past 1023 bytes, so the
//! short credential is what these clients use).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gatehouse_testkit::gateway::{GatewayBuilder, TestGateway, free_port};
use gatehouse_testkit::sshd::SshServer;

struct Setup {
    gw: TestGateway,
    sshd: SshServer,
    port: u16,
}

fn setup() -> Setup {
    let sshd = SshServer::start().unwrap();
    let port = free_port().unwrap();
    let target = |name: &str, env: &str| {
        format!(
            r#"
[[ssh.targets]]
name = "{name}"
host = "127.0.0.1"
port = {sshd_port}
login = "{login}"
private_key_file = "{key}"
known_hosts = "{known_hosts}"
labels = {{ env = "{env}" }}
"#,
            sshd_port = sshd.port(),
            login = sshd.login_user(),
            key = sshd.client_key_path().display(),
            known_hosts = sshd.known_hosts_path().display(),
        )
    };
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_gatehouse"))
        .config(&format!(
            "[ssh]\nlisten = \"127.0.0.1:{port}\"\nauth_timeout_secs = 10\n{}{}",
            target("web-1", "prod"),
            target("vault", "secret"),
        ))
        .start()
        .unwrap();
    Setup { gw, sshd, port }
}

/// A `ghc_` credential for `target` from `gatehouse credentials`.
fn credential(s: &Setup, token: &str, target: &str, ttl: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["credentials", "--config"])
        .arg(s.gw.config_path())
        .args(["--target", target, "--ttl", ttl])
        .env("GATEHOUSE_TOKEN", token)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let secret = out(&o).trim().to_string();
    assert!(secret.starts_with("ghc_"), "{secret}");
    secret
}

/// Options every OpenSSH client here uses: no config, no keys, password prompts only.
fn client_options(cmd: &mut Command) {
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "IdentityAgent=none",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
    ]);
}

/// `sshpass -e ssh ... USER@gateway ARGS...` with SSHPASS=`secret`.
fn ssh(s: &Setup, user: &str, secret: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("sshpass");
    cmd.args(["-e", "ssh"]);
    client_options(&mut cmd);
    cmd.args(["-p", &s.port.to_string()])
        .arg(format!("{user}@127.0.0.1"))
        .args(args)
        .env("SSHPASS", secret)
        .stdin(Stdio::null());
    cmd
}

fn run_with_input(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    o
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn audit_log(s: &Setup) -> String {
    let mut text = String::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(s.gw.audit_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    entries.sort();
    for p in entries {
        text.push_str(&std::fs::read_to_string(p).unwrap());
    }
    text
}

fn audit_events(s: &Setup, kind: &str) -> Vec<serde_json::Value> {
    audit_log(s)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|record| record["event"] == kind)
        .collect()
}

/// Waits (the gateway writes a channel's and a session's last records after the client
/// has gone) until an event of `kind` satisfies `check`; returns all events of `kind`.
fn wait_event(s: &Setup, kind: &str, check: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    s.gw.wait_for(Duration::from_secs(10), || audit_events(s, kind).iter().any(&check));
    audit_events(s, kind)
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn sha256_file(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    out(&o).split_whitespace().next().unwrap().to_string()
}

#[test]
fn allowed_exec_relays_output_stderr_stdin_and_exit_status() {
    let s = setup();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let secret = credential(&s, &token, "web-1", "5m");

    let o = ssh(&s, "web-1", &secret, &["echo hello; echo oops >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}\n{}", err(&o), s.gw.log());
    assert_eq!(out(&o), "hello\n");
    assert!(err(&o).contains("oops"), "{}", err(&o));

    // Both secret-carrying methods work: password (above, OpenSSH tries it first) and
    // keyboard-interactive with its single `Password:` prompt.
    for method in ["password", "keyboard-interactive"] {
        let mut cmd = Command::new("sshpass");
        cmd.args(["-e", "ssh", "-v", "-o"])
            .arg(format!("PreferredAuthentications={method}"));
        client_options(&mut cmd);
        let o = cmd
            .args(["-p", &s.port.to_string(), "web-1@127.0.0.1", "echo", method])
            .env("SSHPASS", &secret)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out(&o), format!("{method}\n"), "{}", err(&o));
        assert!(err(&o).contains(&format!("using \"{method}\"")), "{}", err(&o));
    }

    // stdin in, stdout out, byte-exact, several windows' worth, with EOF relayed.
    let data = noise(3 << 20, 7);
    let o = run_with_input(ssh(&s, "web-1", &secret, &["cat"]), &data);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(o.stdout.len(), data.len());
    assert!(o.stdout == data, "relayed bytes differ");

    // Trailing output right before the program exits is not lost.
    let o = ssh(&s, "web-1", &secret, &["seq 1 100000; printf end"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let expected: String = (1..=100_000).map(|n| format!("{n}\n")).collect::<String>() + "end";
    assert!(out(&o) == expected, "output of seq differs ({} bytes)", o.stdout.len());

    // A signal that ends the program on the host reaches the client as such.
    let o = ssh(&s, "web-1", &secret, &["kill -TERM $$"]).output().unwrap();
    assert_ne!(o.status.code(), Some(0));

    let ended = wait_event(&s, "channel_ended", |e| e["exit_signal"] == "TERM");
    assert!(
        ended
            .iter()
            .any(|e| e["kind"] == "exec" && e["exit_status"] == 3 && e["bytes_out"] == 6 && e["bytes_err"] == 5),
        "{ended:?}"
    );
    assert!(
        ended
            .iter()
            .any(|e| e["bytes_in"] == data.len() as u64 && e["bytes_out"] == data.len() as u64),
        "{ended:?}"
    );
    assert!(ended.iter().any(|e| e["exit_signal"] == "TERM"), "{ended:?}");
    let decided = audit_events(&s, "request_decided");
    assert!(
        decided.iter().any(|e| e["action"] == "Ssh::exec"
            && e["decision"] == "allow"
            && e["attributes"]["command"] == "echo hello; echo oops >&2; exit 3"
            && e["attributes"]["uses_shell_syntax"] == true),
        "{decided:?}"
    );
    let log = audit_log(&s);
    assert!(
        !log.contains(&secret) && !log.contains(&token),
        "no secrets in the audit log"
    );
}

#[test]
fn refused_exec_exits_126_and_never_reaches_the_host() {
    let s = setup();
    let token = s.gw.mint("agent-7", &[], true).unwrap();
    let secret = credential(&s, &token, "web-1", "5m");

    // Allowlisted: runs on the host as the target's login.
    let o = ssh(&s, "web-1", &secret, &["whoami"]).output().unwrap();
    assert!(o.status.success(), "{}\n{}", err(&o), s.gw.log());
    assert_eq!(out(&o).trim(), s.sshd.login_user());

    let marker = s.sshd.dir().join("marker");
    for command in [
        format!("touch {}", marker.display()),
        format!("uptime; touch {}", marker.display()),
        format!("whoami $(touch {})", marker.display()),
    ] {
        let o = ssh(&s, "web-1", &secret, &[&command]).output().unwrap();
        assert_eq!(o.status.code(), Some(126), "{command}: {}", err(&o));
        assert!(err(&o).contains("gatehouse: exec refused"), "{}", err(&o));
        assert!(o.stdout.is_empty());
    }
    // Give a host that had received the command time to run it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "a refused command ran on the host");

    let decided = audit_events(&s, "request_decided");
    let denied = decided
        .iter()
        .filter(|e| e["action"] == "Ssh::exec" && e["decision"] == "deny")
        .count();
    assert_eq!(denied, 3, "{decided:?}");
}

#[test]
fn unknown_target_and_denied_connect_are_refused_alike() {
    let s = setup();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let web = credential(&s, &token, "web-1", "5m");
    let vault = credential(&s, &token, "vault", "5m");
    // Connect to hosts labelled secret is forbidden from now on.
    std::fs::write(
        s.gw.policy_dir().join("zz-secret-hosts.cedar"),
        "@id(\"no-secret-hosts\")\nforbid (principal, action == Ssh::Action::\"connect\", resource is Host)\nwhen { resource.hasTag(\"env\") && resource.getTag(\"env\") == \"secret\" };\n",
    )
    .unwrap();
    s.gw.hangup().unwrap();
    assert!(s.gw.wait_for(Duration::from_secs(10), || audit_log(&s).contains("policy_reloaded")));

    let denied = ssh(&s, "vault", &vault, &["true"]).output().unwrap();
    let unknown = ssh(&s, "no-such-host", &web, &["true"]).output().unwrap();
    let wrong_secret = ssh(&s, "web-1", "ghc_not_a_credential", &["true"]).output().unwrap();
    for o in [&denied, &unknown, &wrong_secret] {
        assert_eq!(
            o.status.code(),
            Some(5),
            "sshpass reports a refused password: {}",
            err(o)
        );
        assert!(o.stdout.is_empty());
    }
    assert_eq!(err(&denied), err(&unknown));
    assert_eq!(err(&denied), err(&wrong_secret));
    let failures = audit_events(&s, "authentication_failed");
    assert!(
        failures
            .iter()
            .any(|e| e["target"] == "vault" && e["reason"].as_str().unwrap_or_default().contains("no-secret-hosts")),
        "{failures:?}"
    );
    // The gateway still serves the allowed target.
    let o = ssh(&s, "web-1", &web, &["echo", "ok"]).output().unwrap();
    assert_eq!(out(&o), "ok\n", "{}", err(&o));
}

#[test]
fn port_forwarding_is_refused_and_audited() {
    let s = setup();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let secret = credential(&s, &token, "web-1", "5m");

    // direct-tcpip through the gateway to the host's own sshd port.
    let target = format!("127.0.0.1:{}", s.sshd.port());
    let o = ssh(&s, "web-1", &secret, &["-W", &target]).output().unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(err(&o).contains("forwarding failed"), "{}", err(&o));
    assert!(o.stdout.is_empty(), "no bytes of the host's sshd came through");

    // tcpip-forward (remote forwarding).
    let o = ssh(
        &s,
        "web-1",
        &secret,
        &["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", "true"],
    )
    .output()
    .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(err(&o).to_lowercase().contains("forwarding failed"), "{}", err(&o));

    // Agent forwarding is refused without ending the session.
    let o = ssh(&s, "web-1", &secret, &["-A", "echo ${SSH_AUTH_SOCK:-none}"])
        .output()
        .unwrap();
    assert_eq!(out(&o), "none\n", "{}", err(&o));

    let decided = audit_events(&s, "request_decided");
    let forwards: Vec<_> = decided.iter().filter(|e| e["action"] == "Ssh::forward").collect();
    assert_eq!(forwards.len(), 2, "{decided:?}");
    assert!(forwards.iter().all(|e| {
        e["decision"] == "deny"
            && e["policies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == "no-port-forwarding")
    }));
}

#[test]
fn env_passes_only_for_the_allowlist() {
    let s = setup();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let secret = credential(&s, &token, "web-1", "5m");
    // SendEnv must come before the destination, so this command is built by hand.
    let mut with_env = Command::new("sshpass");
    with_env.args(["-e", "ssh"]);
    client_options(&mut with_env);
    with_env
        .args([
            "-o",
            "SendEnv=LC_GATEHOUSE GATEHOUSE_SECRET",
            "-p",
            &s.port.to_string(),
            "web-1@127.0.0.1",
        ])
        .arg("echo ${LC_GATEHOUSE:-unset} ${GATEHOUSE_SECRET:-unset}")
        .env("SSHPASS", &secret)
        .env("LC_GATEHOUSE", "lc-passed")
        .env("GATEHOUSE_SECRET", "leaked")
        .stdin(Stdio::null());
    let o = with_env.output().unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "lc-passed unset\n");
}

#[test]
fn a_shell_with_a_pty_is_recorded_and_replays() {
    let s = setup();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let secret = credential(&s, &token, "web-1", "5m");

    let o = run_with_input(
        ssh(&s, "web-1", &secret, &["-tt"]),
        b"stty -echo; echo marker-$((6*7)); exit 7\n",
    );
    assert_eq!(o.status.code(), Some(7), "{}\n{}", err(&o), s.gw.log());
    assert!(out(&o).contains("marker-42"), "{}", out(&o));

    let written = wait_event(&s, "recording_written", |_| true);
    assert_eq!(written.len(), 1, "{written:?}");
    let path = PathBuf::from(written[0]["path"].as_str().unwrap());
    assert!(
        path.starts_with(s.gw.dir().join("state/recordings")),
        "{}",
        path.display()
    );
    assert_eq!(written[0]["sha256"], sha256_file(&path));
    let session = written[0]["session"].as_str().unwrap();
    let decided = audit_events(&s, "request_decided");
    assert!(
        decided
            .iter()
            .any(|e| e["session"] == session && e["action"] == "Ssh::shell" && e["attributes"]["pty"] == true),
        "{decided:?}"
    );

    // The recording is asciicast v2 and replays with its output.
    let cast = std::fs::read_to_string(&path).unwrap();
    let header: serde_json::Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let cfg = s.gw.config_path().display().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["replay", session, "--config", &cfg, "--speed", "50"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("marker-42"), "{}", out(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["replay", "s_0000", "--config", &cfg, "--no-delay"])
        .output()
        .unwrap();
    assert!(!o.status.success());

    let verify = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["audit", "verify", "--config", &cfg])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", err(&verify));
}

#[test]
fn scp_and_sftp_copy_files_byte_exact_both_ways() {
    let s = setup();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let secret = credential(&s, &token, "web-1", "5m");
    let local = tempfile::tempdir().unwrap();
    let original = noise(1_500_000, 42);
    let source = local.path().join("upload.bin");
    std::fs::write(&source, &original).unwrap();
    let remote = |name: &str| s.sshd.dir().join(name);
    let scp = |legacy: bool, from: &str, to: &str| {
        let mut cmd = Command::new("sshpass");
        cmd.args(["-e", "scp"]);
        client_options(&mut cmd);
        if legacy {
            cmd.arg("-O");
        }
        cmd.args(["-P", &s.port.to_string(), from, to])
            .env("SSHPASS", &secret)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let at = |p: &Path| format!("web-1@127.0.0.1:{}", p.display());

    for legacy in [false, true] {
        let name = if legacy { "legacy" } else { "sftp-mode" };
        let up = remote(&format!("{name}.bin"));
        let o = scp(legacy, &source.display().to_string(), &at(&up));
        assert!(o.status.success(), "{name} upload: {}\n{}", err(&o), s.gw.log());
        assert!(std::fs::read(&up).unwrap() == original, "{name} upload differs");
        let back = local.path().join(format!("{name}-back.bin"));
        let o = scp(legacy, &at(&up), &back.display().to_string());
        assert!(o.status.success(), "{name} download: {}", err(&o));
        assert!(std::fs::read(&back).unwrap() == original, "{name} download differs");
    }

    // sftp in batch mode (BatchMode would forbid the password prompt; sshpass answers it).
    let batch = local.path().join("batch");
    let sftp_up = remote("sftp.bin");
    let sftp_back = local.path().join("sftp-back.bin");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nget {} {}\n",
            source.display(),
            sftp_up.display(),
            sftp_up.display(),
            sftp_back.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("sshpass");
    cmd.args(["-e", "sftp"]);
    client_options(&mut cmd);
    let o = cmd
        .args(["-o", "BatchMode=no", "-b"])
        .arg(&batch)
        .args(["-P", &s.port.to_string(), "web-1@127.0.0.1"])
        .env("SSHPASS", &secret)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "sftp: {}", err(&o));
    assert!(std::fs::read(&sftp_up).unwrap() == original);
    assert!(std::fs::read(&sftp_back).unwrap() == original);

    let decided = audit_events(&s, "request_decided");
    let transfers: Vec<_> = decided.iter().filter(|e| e["action"] == "Ssh::file_transfer").collect();
    assert!(transfers.iter().any(|e| e["attributes"]["direction"] == "upload"
        && e["attributes"]["path"] == remote("legacy.bin").display().to_string()));
    assert!(transfers.iter().any(|e| e["attributes"]["direction"] == "download"));
    assert!(transfers.iter().any(|e| e["attributes"]["direction"] == "both"));

    // An agent may not transfer files: sftp is refused before the host sees it.
    let agent = s.gw.mint("agent-7", &[], true).unwrap();
    let agent_secret = credential(&s, &agent, "web-1", "5m");
    let mut cmd = Command::new("sshpass");
    cmd.args(["-e", "scp"]);
    client_options(&mut cmd);
    let o = cmd
        .args(["-P", &s.port.to_string()])
        .arg(&source)
        .arg(at(&remote("agent.bin")))
        .env("SSHPASS", &agent_secret)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(err(&o).contains("file_transfer refused"), "{}", err(&o));
    assert!(!remote("agent.bin").exists());
}

#[test]
fn garbage_and_stalled_clients_do_not_take_the_gateway_down() {
    let s = setup();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let secret = credential(&s, &token, "web-1", "5m");
    let addr = format!("127.0.0.1:{}", s.port);

    // Garbage before the banner: the gateway sends its banner and closes.
    let mut garbage = TcpStream::connect(&addr).unwrap();
    garbage.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    garbage.write_all(&noise(64 << 10, 3)).unwrap_or(());
    let mut seen = Vec::new();
    let _ = garbage.read_to_end(&mut seen);
    assert!(
        seen.starts_with(b"SSH-2.0-Gatehouse"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );

    // A client that stops mid-handshake, held open while others connect.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled.write_all(b"SSH-2.0-Stalled\r\n").unwrap();

    let started = Instant::now();
    let o = ssh(&s, "web-1", &secret, &["echo", "still-here"]).output().unwrap();
    assert_eq!(out(&o), "still-here\n", "{}", err(&o));
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(stalled);
    drop(garbage);
}

#[test]
fn the_session_closes_when_its_credential_expires() {
    let s = setup();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let secret = credential(&s, &token, "web-1", "4s");
    let started = Instant::now();
    let o = ssh(&s, "web-1", &secret, &["sleep 60"]).output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the session outlived its credential"
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(err(&o).contains("expired"), "{}", err(&o));
    let ended = wait_event(&s, "session_ended", |e| e["reason"] == "token expired");
    assert!(ended.iter().any(|e| e["reason"] == "token expired"), "{ended:?}");
}
