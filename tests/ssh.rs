//! The SSH gateway end to end: a real OpenSSH `sshd` as the host, a real `gatehouse serve`,
//! and the real OpenSSH `ssh`, `scp` and `sftp` clients answering the password prompt with
//! a `ghc_` credential through `sshpass` (OpenSSH cuts answers past 1023 bytes, so the
//! short credential is what these clients use).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gatehouse_testkit::gateway::{GatewayBuilder, TestGateway, free_port};
use gatehouse_testkit::sshd::SshServer;

struct Setup {
    gw: TestGateway,
    sshd: SshServer,
    port: u16,
}

fn setup() -> Setup {
    setup_with("")
}

/// `extra`: more `[ssh]` settings.
fn setup_with(extra: &str) -> Setup {
    let sshd = SshServer::start().unwrap();
    let port = free_port().unwrap();
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_gatehouse"))
        .config(&format!(
            "[ssh]\nlisten = \"127.0.0.1:{port}\"\nauth_timeout_secs = 10\n{extra}\n{}{}{}",
            sshd.target_toml("web-1", "env = \"prod\""),
            sshd.target_toml("vault", "env = \"secret\""),
            sshd.target_toml("stage-1", "env = \"staging\""),
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
    // Input is not recorded unless ssh.record_input says so.
    assert!(
        cast.lines()
            .skip(1)
            .all(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()[1] != "i"),
        "{cast}"
    );
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
    assert!(out(&verify).contains("1 recordings match"), "{}", out(&verify));

    // `audit verify` re-hashes recordings: an edited one fails, named.
    let tampered = cast.replace("marker-42", "marker-43");
    std::fs::write(&path, tampered).unwrap();
    let verify = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["audit", "verify", "--config", &cfg])
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(1), "{}", out(&verify));
    assert!(
        err(&verify).contains(&path.display().to_string()) && err(&verify).contains("altered"),
        "{}",
        err(&verify)
    );
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
    // Every file is audited with its name and exact size: legacy scp, scp over SFTP, sftp.
    let files = wait_event(&s, "file_transferred", |e| {
        e["path"] == sftp_up.display().to_string() && e["direction"] == "download"
    });
    for name in ["legacy.bin", "sftp-mode.bin", "sftp.bin"] {
        let path = remote(name).display().to_string();
        let of = |direction: &str| {
            files
                .iter()
                .filter(|e| e["path"] == path && e["direction"] == direction && e["completed"] == true)
                .collect::<Vec<_>>()
        };
        let (up, down) = (of("upload"), of("download"));
        assert_eq!(up.len(), 1, "{name}: {files:?}");
        assert_eq!(up[0]["bytes_written"], 1_500_000, "{name}");
        assert_eq!(down.len(), 1, "{name}: {files:?}");
        assert_eq!(down[0]["bytes_read"], 1_500_000, "{name}");
    }

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

/// `gatehouse approvals ARGS` as the holder of `token`.
fn approvals(s: &Setup, token: &str, args: &[&str]) -> Output {
    s.gw.approvals(token, args).unwrap()
}

/// The one pending approval request, once it shows up.
fn wait_pending(s: &Setup, lead: &str) -> serde_json::Value {
    let mut found = None;
    let seen = s.gw.wait_for(Duration::from_secs(20), || {
        let o = approvals(s, lead, &["list", "--state", "pending", "--json"]);
        assert!(o.status.success(), "{}", err(&o));
        let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        found = list.as_array().unwrap().first().cloned();
        found.is_some()
    });
    assert!(seen, "no pending approval appeared:\n{}", s.gw.log());
    found.unwrap()
}

fn state_of(s: &Setup, token: &str, id: &str) -> String {
    let o = approvals(s, token, &["show", id, "--json"]);
    assert!(o.status.success(), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["state"].as_str().unwrap().to_string()
}

/// `ssh` in its own process group (so that the test can end sshpass and ssh together),
/// with `input` written to its stdin and then closed.
fn spawn_ssh(s: &Setup, user: &str, secret: &str, args: &[&str], input: &[u8]) -> Child {
    let mut cmd = ssh(s, user, secret, args);
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child
}

/// Waits for a spawned client (killing its process group after `timeout`).
fn finish(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            kill_group(&child, "KILL");
            let o = child.wait_with_output().unwrap();
            panic!("the client did not finish in {timeout:?}: {}", err(&o));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    child.wait_with_output().unwrap()
}

fn kill_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{}", child.id()))
        .status();
}

#[test]
fn an_agents_command_waits_for_approval_and_runs_once_approved() {
    let s = setup();
    let agent = s.gw.mint("agent-7", &[], true).unwrap();
    let secret = credential(&s, &agent, "stage-1", "5m");
    let lead = s.gw.mint("lena", &["ops-leads"], false).unwrap();

    // Off the allowlist on a staging host: held. The input sent meanwhile is kept and
    // reaches the command once approved.
    let child = spawn_ssh(&s, "stage-1", &secret, &["sha256sum"], b"held input\n");
    let pending = wait_pending(&s, &lead);
    let id = pending["id"].as_str().unwrap().to_string();
    assert_eq!(pending["approver_group"], "ops-leads");
    assert_eq!(pending["request"], "exec on stage-1: sha256sum");
    // The requester cannot approve its own request.
    let o = approvals(&s, &agent, &["approve", &id]);
    assert!(!o.status.success(), "self-approval must be refused");
    let o = approvals(&s, &lead, &["approve", &id, "--reason", "checksum only"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = finish(child, Duration::from_secs(20));
    assert!(o.status.success(), "{}\n{}", err(&o), s.gw.log());
    assert!(
        err(&o).contains(&format!("waiting for approval {id} by group ops-leads")),
        "{}",
        err(&o)
    );
    let direct = Command::new("sh")
        .args(["-c", "printf 'held input\\n' | sha256sum"])
        .output()
        .unwrap();
    assert_eq!(out(&o), out(&direct), "the held input reached the command");
    assert_eq!(state_of(&s, &lead, &id), "executed");

    // The exit status of an approved command arrives too.
    let child = spawn_ssh(&s, "stage-1", &secret, &["ls", "/nonexistent-gatehouse"], b"");
    let id = wait_pending(&s, &lead)["id"].as_str().unwrap().to_string();
    let o = approvals(&s, &lead, &["approve", &id]);
    assert!(o.status.success(), "{}", err(&o));
    let o = finish(child, Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("nonexistent-gatehouse"), "{}", err(&o));

    // Denied: exit status 126 with the reason, and the command never ran.
    let marker = s.sshd.dir().join("denied-marker");
    let touch = format!("touch {}", marker.display());
    let child = spawn_ssh(&s, "stage-1", &secret, &[&touch], b"");
    let id = wait_pending(&s, &lead)["id"].as_str().unwrap().to_string();
    let o = approvals(&s, &lead, &["deny", &id, "--reason", "not on a Friday"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = finish(child, Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(126), "{}", err(&o));
    assert!(err(&o).contains("not on a Friday"), "{}", err(&o));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "a denied command ran on the host");

    // The client going away withdraws the request, and the command never runs.
    let child = spawn_ssh(&s, "stage-1", &secret, &[&touch], b"");
    let id = wait_pending(&s, &lead)["id"].as_str().unwrap().to_string();
    kill_group(&child, "TERM");
    let _ = finish(child, Duration::from_secs(10));
    let withdrawn =
        s.gw.wait_for(Duration::from_secs(10), || state_of(&s, &lead, &id) == "withdrawn");
    assert!(withdrawn, "state {}\n{}", state_of(&s, &lead, &id), s.gw.log());
    let o = approvals(&s, &lead, &["approve", &id]);
    assert!(!o.status.success(), "a withdrawn request cannot be approved");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "a withdrawn command ran on the host");

    let kinds: Vec<String> = audit_log(&s)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["event"].as_str().map(str::to_string))
        .collect();
    for kind in [
        "approval_requested",
        "approval_executed",
        "approval_denied",
        "approval_withdrawn",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
}

#[test]
fn a_shell_waits_for_approval_before_it_opens() {
    let s = setup_with("record_input = true");
    // Shells for group ops need approval on staging hosts (a policy added for this test).
    std::fs::write(
        s.gw.policy_dir().join("zz-shell-approval.cedar"),
        r#"@id("support-shell-needs-approval")
@approval("ops-leads")
permit (principal in Group::"support", action == Ssh::Action::"shell", resource is Host);
"#,
    )
    .unwrap();
    let user = s.gw.mint("sam", &["support"], false).unwrap();
    let secret = credential(&s, &user, "stage-1", "5m");
    let lead = s.gw.mint("lena", &["ops-leads"], false).unwrap();
    // The policy reload is picked up within a few hundred milliseconds.
    let mut child = None;
    let mut id = String::new();
    let seen = s.gw.wait_for(Duration::from_secs(20), || {
        let c = spawn_ssh(&s, "stage-1", &secret, &[], b"echo shell-$((6*7))\nexit 4\n");
        let found = s.gw.wait_for(Duration::from_secs(3), || {
            let o = approvals(&s, &lead, &["list", "--state", "pending", "--json"]);
            let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            match list.as_array().and_then(|l| l.first()) {
                Some(p) => {
                    id = p["id"].as_str().unwrap_or_default().to_string();
                    true
                }
                None => false,
            }
        });
        if found {
            child = Some(c);
        } else {
            kill_group(&c, "KILL");
            let _ = finish(c, Duration::from_secs(10));
        }
        found
    });
    assert!(seen, "no held shell:\n{}", s.gw.log());
    let o = approvals(&s, &lead, &["approve", &id]);
    assert!(o.status.success(), "{}", err(&o));
    let o = finish(child.unwrap(), Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(4), "{}\n{}", err(&o), s.gw.log());
    assert!(out(&o).contains("shell-42"), "{}", out(&o));
    assert!(err(&o).contains("waiting for approval"), "{}", err(&o));
    let written = wait_event(&s, "recording_written", |_| true);
    assert_eq!(written.len(), 1, "{written:?}");
    // With record_input, what the client sent (here while it waited) is in the recording.
    let cast = std::fs::read_to_string(written[0]["path"].as_str().unwrap()).unwrap();
    let inputs: Vec<serde_json::Value> = cast
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e[1] == "i")
        .collect();
    assert!(
        inputs
            .iter()
            .any(|e| e[2].as_str().unwrap().contains("echo shell-$((6*7))")),
        "{cast}"
    );
    assert!(cast.contains("shell-42"), "{cast}");
}

/// A new ed25519 key pair (no passphrase) at `path` and `path.pub`.
fn keygen(path: &Path) {
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
}

/// `ssh` authenticating with `key` (and `cert`, when given) only, in batch mode.
fn ssh_with_key(s: &Setup, user: &str, key: &Path, cert: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new("ssh");
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
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "PreferredAuthentications=publickey",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
        "-i",
    ])
    .arg(key);
    if let Some(cert) = cert {
        cmd.arg("-o").arg(format!("CertificateFile={}", cert.display()));
    }
    cmd.args(["-p", &s.port.to_string()])
        .arg(format!("{user}@127.0.0.1"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `gatehouse ssh-cert` for `key`.pub; the certificate's path.
fn ssh_cert(s: &Setup, token: &str, target: &str, key: &Path, ttl: &str) -> PathBuf {
    let out_path = PathBuf::from(format!("{}-cert.pub", key.display()));
    let o = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["ssh-cert", "--config"])
        .arg(s.gw.config_path())
        .args(["--target", target, "--ttl", ttl, "--public-key"])
        .arg(format!("{}.pub", key.display()))
        .arg("--out")
        .arg(&out_path)
        .env("GATEHOUSE_TOKEN", token)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", err(&o), s.gw.log());
    assert!(err(&o).contains("expires"), "{}", err(&o));
    out_path
}

/// Signs `key`.pub with `ca` using ssh-keygen, with the identity extension the gateway
/// reads, valid for `validity` (ssh-keygen's -V syntax).
fn forge_cert(ca: &Path, key: &Path, principal: &str, validity: &str) -> PathBuf {
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let identity = format!(
        r#"{{"issuer":"x","subject":"olivia","kind":"User","email":null,"name":null,"groups":["ops"],"owner":null,"expires_at":{expires}}}"#
    );
    let o = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", "forged", "-n", principal, "-V", validity, "-O"])
        .arg(format!("extension:identity@gatehouse={identity}"))
        .arg(format!("{}.pub", key.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    PathBuf::from(format!("{}-cert.pub", key.display()))
}

#[test]
fn certificates_from_the_gateways_ca_authenticate_and_nothing_else_does() {
    let s = setup();
    let keys = tempfile::tempdir().unwrap();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();

    // A certificate from `gatehouse ssh-cert`: the identity is the token's.
    let key = keys.path().join("olivia");
    keygen(&key);
    let cert = ssh_cert(&s, &token, "web-1", &key, "10m");
    let text = std::fs::read_to_string(&cert).unwrap();
    assert!(text.starts_with("ssh-ed25519-cert-v01@openssh.com "), "{text}");
    let o = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert)
        .output()
        .unwrap();
    let listing = out(&o);
    assert!(listing.contains("olivia") && listing.contains("web-1"), "{listing}");
    let o = ssh_with_key(&s, "web-1", &key, Some(&cert), &["echo", "cert-ok", ";", "exit", "5"]);
    assert_eq!(o.status.code(), Some(5), "{}\n{}", err(&o), s.gw.log());
    assert_eq!(out(&o), "cert-ok\n");
    let started = audit_events(&s, "session_started");
    assert!(
        started
            .iter()
            .any(|e| e["actor"]["subject"] == "olivia" && e["target"] == "web-1"),
        "{started:?}"
    );
    // Bound to its target: the same certificate does not open another host.
    let o = ssh_with_key(&s, "vault", &key, Some(&cert), &["true"]);
    assert_eq!(o.status.code(), Some(255), "{}", err(&o));
    assert!(err(&o).contains("Permission denied"), "{}", err(&o));

    // Signed by another CA, otherwise identical: refused.
    let other_ca = keys.path().join("other-ca");
    keygen(&other_ca);
    let forged_key = keys.path().join("forged");
    keygen(&forged_key);
    let forged = forge_cert(&other_ca, &forged_key, "web-1", "-5m:+1h");
    let o = ssh_with_key(&s, "web-1", &forged_key, Some(&forged), &["true"]);
    assert_eq!(o.status.code(), Some(255), "{}", err(&o));
    assert!(err(&o).contains("Permission denied"), "{}", err(&o));

    // Signed by the gateway's own CA but expired: refused.
    let ca = s.gw.dir().join("state/ssh_ca_ed25519_key");
    assert!(ca.exists(), "the CA key is generated on first start");
    let old_key = keys.path().join("old");
    keygen(&old_key);
    let expired = forge_cert(&ca, &old_key, "web-1", "20200101:20200102");
    let o = ssh_with_key(&s, "web-1", &old_key, Some(&expired), &["true"]);
    assert_eq!(o.status.code(), Some(255), "{}", err(&o));
    // The same CA with a current window works, which shows that only the window refused it.
    let current = forge_cert(&ca, &old_key, "web-1", "-5m:+1h");
    let o = ssh_with_key(&s, "web-1", &old_key, Some(&current), &["echo", "ca-ok"]);
    assert_eq!(out(&o), "ca-ok\n", "{}", err(&o));

    // A bare key never authenticates, not even one the gateway certified before.
    let bare = keys.path().join("bare");
    std::fs::copy(&key, &bare).unwrap();
    std::fs::copy(format!("{}.pub", key.display()), format!("{}.pub", bare.display())).unwrap();
    let o = ssh_with_key(&s, "web-1", &bare, None, &["true"]);
    assert_eq!(o.status.code(), Some(255), "{}", err(&o));
    assert!(err(&o).contains("Permission denied"), "{}", err(&o));

    let failed = audit_events(&s, "authentication_failed");
    assert!(
        failed
            .iter()
            .any(|e| e["reason"].as_str().unwrap_or("").contains("\"forged\"")),
        "{failed:?}"
    );
    let sessions = audit_events(&s, "session_started");
    assert_eq!(
        sessions.len(),
        2,
        "only the two valid certificates opened sessions: {sessions:?}"
    );
}

#[test]
fn the_session_closes_when_its_certificate_expires() {
    let s = setup();
    let keys = tempfile::tempdir().unwrap();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let key = keys.path().join("short");
    keygen(&key);
    let cert = ssh_cert(&s, &token, "web-1", &key, "4s");
    let started = Instant::now();
    let o = ssh_with_key(&s, "web-1", &key, Some(&cert), &["sleep", "60"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the session outlived its certificate"
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(err(&o).contains("expired"), "{}", err(&o));

    // The admin API refuses bad requests clearly.
    let (status, body) =
        s.gw.request(
            "POST",
            "/api/ssh/cert",
            Some(&token),
            Some(r#"{"target":"web-1","public_key":"ssh-ed25519 nonsense"}"#),
        )
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("public_key"), "{body}");
    let line = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    let request = serde_json::json!({ "target": "nowhere", "public_key": line.trim() }).to_string();
    let (status, body) =
        s.gw.request("POST", "/api/ssh/cert", Some(&token), Some(&request))
            .unwrap();
    assert_eq!(status, 403, "{body}");
    let (status, _) = s.gw.request("POST", "/api/ssh/cert", None, Some(&request)).unwrap();
    assert_eq!(status, 401);
}

/// Python's paramiko (installed by `just setup`), a programmatic client: the OIDC token
/// itself as the password (no 1023-byte prompt limit here), exec with output and exit
/// status, and a refused exec with 126.
#[test]
fn paramiko_runs_allowed_commands_and_gets_126_for_refused_ones() {
    let s = setup();
    let token = s.gw.mint("agent-7", &[], true).unwrap();
    let marker = s.sshd.dir().join("paramiko-marker");
    let script = r#"
import os, sys, paramiko
client = paramiko.SSHClient()
client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
client.connect("127.0.0.1", port=int(os.environ["PORT"]), username="web-1",
               password=os.environ["SECRET"], look_for_keys=False, allow_agent=False, timeout=10)
for command in ["whoami", "touch " + os.environ["MARKER"]]:
    stdin, stdout, stderr = client.exec_command(command, timeout=10)
    out = stdout.read().decode()
    err = stderr.read().decode()
    print(f"{command.split()[0]}|{stdout.channel.recv_exit_status()}|{out.strip()}|{err.strip()}")
client.close()
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .env("PORT", s.port.to_string())
        .env("SECRET", &token)
        .env("MARKER", &marker)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", err(&o), s.gw.log());
    let lines: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap().lines().collect();
    assert_eq!(lines[0], format!("whoami|0|{}|", s.sshd.login_user()), "{lines:?}");
    assert!(lines[1].starts_with("touch|126||gatehouse: exec refused"), "{lines:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "a refused command ran on the host");
}

/// One client opening channels past `max_channels` (16 by default) gets a clear refusal
/// for each extra one; its open channels and other clients carry on.
#[test]
fn a_channel_open_flood_is_refused_and_others_are_unaffected() {
    let s = setup();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let secret = credential(&s, &token, "web-1", "5m");
    let script = r#"
import os, sys, paramiko
client = paramiko.SSHClient()
client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
client.connect("127.0.0.1", port=int(os.environ["PORT"]), username="web-1",
               password=os.environ["SECRET"], look_for_keys=False, allow_agent=False, timeout=10)
transport = client.get_transport()
opened, refused = [], []
for i in range(200):
    try:
        opened.append(transport.open_session(timeout=10))
    except paramiko.ChannelException as e:
        refused.append(e.code)
print(f"opened={len(opened)} refused={len(refused)} codes={sorted(set(refused))}", flush=True)
# Tell the test the flood is on, and wait for it to check another client.
sys.stdout.write("flooded\n"); sys.stdout.flush()
sys.stdin.readline()
opened[0].close()
channel = None
for _ in range(50):
    try:
        channel = transport.open_session(timeout=10)
        break
    except paramiko.ChannelException:
        import time; time.sleep(0.1)
channel.exec_command("echo after-flood")
print(channel.makefile().read().decode().strip(), channel.recv_exit_status(), flush=True)
client.close()
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("PORT", s.port.to_string())
        .env("SECRET", &secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead as _;
    stdout.read_line(&mut line).unwrap();
    // 16 open, the other 184 refused with SSH_OPEN_RESOURCE_SHORTAGE (4).
    assert_eq!(line.trim(), "opened=16 refused=184 codes=[4]", "{}", s.gw.log());
    let mut flooded = String::new();
    stdout.read_line(&mut flooded).unwrap();
    assert_eq!(flooded.trim(), "flooded");

    // Meanwhile another client is served as usual.
    let o = ssh(&s, "web-1", &secret, &["echo", "other-client"]).output().unwrap();
    assert_eq!(out(&o), "other-client\n", "{}", err(&o));

    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    // A freed slot is usable again on the flooding connection.
    assert_eq!(rest.trim(), "after-flood 0", "{stderr}");
}

/// Runs `sftp -b BATCH` through the gateway; a `-` before a batch command lets the batch
/// go on when that command fails.
fn sftp_batch(s: &Setup, secret: &str, batch: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch");
    std::fs::write(&file, batch).unwrap();
    let mut cmd = Command::new("sshpass");
    cmd.args(["-e", "sftp"]);
    client_options(&mut cmd);
    cmd.args(["-o", "BatchMode=no", "-b"])
        .arg(&file)
        .args(["-P", &s.port.to_string(), "web-1@127.0.0.1"])
        .env("SSHPASS", secret)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A policy for the per-file tests: no uploads (or other changes) under a `locked`
/// directory, no downloads of `*.secret` files.
const FILE_POLICY: &str = r#"
@id("no-changes-under-locked")
forbid (principal, action == Ssh::Action::"file_transfer", resource is Host)
when { context.direction == "upload" && context has path && context.path like "*/locked/*" };

@id("no-secret-downloads")
forbid (principal, action == Ssh::Action::"file_transfer", resource is Host)
when { context.direction == "download" && context has path && context.path like "*.secret" };
"#;

/// Inside one sftp session (and scp, which speaks SFTP by default), every file is decided
/// on its own: a refused file gets "Permission denied" and the reason naming the policy,
/// never reaches the host, and the next file works; each file's transfer is audited with
/// its name and exact byte count.
#[test]
fn sftp_and_scp_decide_and_audit_each_file() {
    let s = setup();
    std::fs::write(s.gw.policy_dir().join("zz-files.cedar"), FILE_POLICY).unwrap();
    s.gw.hangup().unwrap();
    assert!(s.gw.wait_for(Duration::from_secs(10), || audit_log(&s).contains("policy_reloaded")));
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let secret = credential(&s, &token, "web-1", "5m");

    let local = tempfile::tempdir().unwrap();
    let remote = s.sshd.dir().join("files");
    std::fs::create_dir_all(remote.join("open")).unwrap();
    std::fs::create_dir_all(remote.join("locked")).unwrap();
    let upload = noise(300_001, 7);
    let source = local.path().join("a.bin");
    std::fs::write(&source, &upload).unwrap();
    let report = noise(70_000, 8);
    std::fs::write(remote.join("report.secret"), &report).unwrap();
    let r = |p: &str| remote.join(p).display().to_string();
    let l = |p: &str| local.path().join(p).display().to_string();

    let o = sftp_batch(
        &s,
        &secret,
        &format!(
            "put {src} {open}\n-put {src} {locked}\nget {open} {back}\n-get {secret} {stolen}\n\
             rename {open} {moved}\n-rename {moved} {locked_moved}\n-mkdir {locked_dir}\nrm {moved}\n",
            src = source.display(),
            open = r("open/a.bin"),
            locked = r("open/../locked/b.bin"),
            back = l("a-back.bin"),
            secret = r("report.secret"),
            stolen = l("stolen"),
            moved = r("open/c.bin"),
            locked_moved = r("locked/c.bin"),
            locked_dir = r("locked/new"),
        ),
    );
    let stderr = err(&o);
    eprintln!("sftp said:\n{stderr}");
    assert!(o.status.success(), "{stderr}\n{}", s.gw.log());
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(stderr.contains("no-changes-under-locked"), "{stderr}");
    assert!(stderr.contains("no-secret-downloads"), "{stderr}");
    assert!(std::fs::read(l("a-back.bin")).unwrap() == upload, "download differs");
    assert!(!Path::new(&l("stolen")).exists() || std::fs::read(l("stolen")).unwrap().is_empty());
    assert!(
        !remote.join("locked/b.bin").exists(),
        "a refused upload reached the host"
    );
    assert!(
        !remote.join("locked/c.bin").exists(),
        "a refused rename reached the host"
    );
    assert!(!remote.join("locked/new").exists(), "a refused mkdir reached the host");
    assert!(
        !remote.join("open/c.bin").exists(),
        "the allowed rename and remove did not run"
    );

    // One record per file, with its name and exact byte count, both ways.
    let files = wait_event(&s, "file_transferred", |e| e["direction"] == "download");
    let up: Vec<_> = files.iter().filter(|e| e["direction"] == "upload").collect();
    let down: Vec<_> = files.iter().filter(|e| e["direction"] == "download").collect();
    assert_eq!(up.len(), 1, "{files:?}");
    assert_eq!(up[0]["path"], r("open/a.bin"));
    assert_eq!(up[0]["bytes_written"], 300_001);
    assert_eq!(up[0]["bytes_read"], 0);
    assert_eq!(up[0]["completed"], true);
    assert_eq!(down.len(), 1, "{files:?}");
    assert_eq!(down[0]["path"], r("open/a.bin"));
    assert_eq!(down[0]["bytes_read"], 300_001);
    assert_eq!(down[0]["completed"], true);
    let decided = audit_events(&s, "request_decided");
    let denied = |op: &str, path: &str| {
        decided.iter().any(|e| {
            e["action"] == "Ssh::file_transfer"
                && e["decision"] == "deny"
                && e["attributes"]["operation"] == op
                && e["attributes"]["path"] == path
        })
    };
    assert!(denied("open", &r("locked/b.bin")), "{decided:?}");
    assert!(denied("open", &r("report.secret")));
    assert!(denied("rename", &r("locked/c.bin")));
    assert!(denied("mkdir", &r("locked/new")));
    assert!(decided.iter().any(|e| e["attributes"]["operation"] == "remove"
        && e["attributes"]["path"] == r("open/c.bin")
        && e["decision"] == "allow"));

    // scp speaks SFTP by default: the same per-file decisions and records.
    let scp = |from: &str, to: &str| {
        let mut cmd = Command::new("sshpass");
        cmd.args(["-e", "scp"]);
        client_options(&mut cmd);
        cmd.args(["-P", &s.port.to_string(), from, to])
            .env("SSHPASS", &secret)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let at = |p: &str| format!("web-1@127.0.0.1:{}", r(p));
    let o = scp(&source.display().to_string(), &at("locked/scp.bin"));
    assert!(!o.status.success());
    assert!(err(&o).contains("no-changes-under-locked"), "{}", err(&o));
    assert!(!remote.join("locked/scp.bin").exists());
    let o = scp(&source.display().to_string(), &at("open/scp.bin"));
    assert!(o.status.success(), "{}", err(&o));
    assert!(std::fs::read(remote.join("open/scp.bin")).unwrap() == upload);
    let files = wait_event(&s, "file_transferred", |e| e["path"] == r("open/scp.bin"));
    let scp_up = files.iter().find(|e| e["path"] == r("open/scp.bin")).unwrap();
    assert_eq!(scp_up["bytes_written"], 300_001);
    assert_eq!(scp_up["completed"], true);

    // `gatehouse audit show` prints the records.
    let session = scp_up["session"].as_str().unwrap().to_string();
    let config = s.gw.config_path().display().to_string();
    let o = s.gw.cli(&["audit", "show", "--config", &config, &session]).unwrap();
    let shown = out(&o);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("file_transferred") && l.contains("open/scp.bin")),
        "{shown}{}",
        err(&o)
    );
}

/// A malformed or oversized SFTP packet from a client closes that channel with a message
/// on its stderr and a `protocol_error` record; the same connection opens a working sftp
/// channel afterwards, and other clients are served as usual.
#[test]
fn malformed_sftp_packets_close_only_their_channel() {
    let s = setup();
    let token = s.gw.mint("olivia", &["ops"], false).unwrap();
    let secret = credential(&s, &token, "web-1", "5m");
    let remote = s.sshd.dir().join("after.bin");
    let script = r#"
import io, os, struct, paramiko
client = paramiko.SSHClient()
client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
client.connect("127.0.0.1", port=int(os.environ["PORT"]), username="web-1",
               password=os.environ["SECRET"], look_for_keys=False, allow_agent=False, timeout=10)
transport = client.get_transport()

def hostile(payload):
    ch = transport.open_session(timeout=10)
    ch.settimeout(10)
    ch.invoke_subsystem("sftp")
    ch.sendall(payload)
    err = b""
    while True:
        d = ch.recv_stderr(4096)
        if not d:
            break
        err += d
    return err.decode().strip()

# A length field of 2 GiB, then an OPEN whose path length runs past the packet's end.
print("oversized|" + hostile(struct.pack(">I", 0x7FFFFFFF) + b"\x01"), flush=True)
init = struct.pack(">IBI", 5, 1, 3)
body = b"\x03" + struct.pack(">I", 1) + struct.pack(">I", 1000) + b"/x"
print("truncated|" + hostile(init + struct.pack(">I", len(body)) + body), flush=True)

sftp = client.open_sftp()
sftp.putfo(io.BytesIO(b"x" * 100000), os.environ["REMOTE"])
print("after|" + str(sftp.stat(os.environ["REMOTE"]).st_size), flush=True)
try:
    sftp.open("/nonexistent/dir/file", "w")
except IOError as e:
    print("missing|" + str(e), flush=True)
sftp.close()
client.close()
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .env("PORT", s.port.to_string())
        .env("SECRET", &secret)
        .env("REMOTE", &remote)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", err(&o), s.gw.log());
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("oversized|gatehouse: an SFTP packet of 2147483647 bytes, over the limit"),
        "{lines:?}"
    );
    assert!(lines[0].ends_with("the SFTP channel is closed"), "{lines:?}");
    assert!(
        lines[1].starts_with("truncated|gatehouse: a truncated SFTP packet"),
        "{lines:?}"
    );
    assert_eq!(lines[2], "after|100000", "{lines:?}");
    assert!(lines[3].starts_with("missing|"), "{lines:?}");
    let errors = wait_event(&s, "protocol_error", |_| true);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0]["message"].as_str().unwrap().contains("over the limit"));
    let files = wait_event(&s, "file_transferred", |e| e["path"] == remote.display().to_string());
    assert!(
        files
            .iter()
            .any(|e| e["bytes_written"] == 100_000 && e["completed"] == true)
    );

    let o = ssh(&s, "web-1", &secret, &["echo", "still-here"]).output().unwrap();
    assert_eq!(out(&o), "still-here\n", "{}", err(&o));
}
