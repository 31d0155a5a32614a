//! The Kubernetes gateway end to end: the testkit's API server (real API shapes, its own CA
//! and a token only the gateway holds), a real `gatehouse serve`, and the real `kubectl`
//! (and `curl` for what kubectl cannot send) with a kubeconfig from `gatehouse kubeconfig`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use gatehouse_testkit::gateway::{GatewayBuilder, TestGateway, free_port};
use gatehouse_testkit::kube::{KubeApiServer, SEEDED_SECRET_VALUE};
use gatehouse_testkit::tls::TestCerts;

/// base64 of the seeded secret value, as the API server stores and sends it.
const SEEDED_SECRET_B64: &str = "aHVudGVyMi1wcm9kLXNlY3JldA==";
/// base64 of `<masked>`.
const MASKED: &str = "PG1hc2tlZD4=";

struct Setup {
    api: KubeApiServer,
    gw: TestGateway,
    port: u16,
    certs: TestCerts,
    kubeconfig: PathBuf,
    /// The same API server as cluster `prod` (labelled env = prod).
    kubeconfig_prod: PathBuf,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    setup_with("")
}

/// `listener` gives more `[kube]` keys.
fn setup_with(listener: &str) -> Setup {
    setup_upstream(listener, None)
}

/// The cluster of `GATEHOUSE_TEST_KUBECONFIG` (context `GATEHOUSE_TEST_CONTEXT`, or its
/// current context) behind the gateway when set, else the testkit's API server.
fn setup_real_or_testkit() -> (Setup, bool) {
    match std::env::var_os("GATEHOUSE_TEST_KUBECONFIG") {
        Some(path) => {
            let context = std::env::var("GATEHOUSE_TEST_CONTEXT").ok();
            (setup_upstream("", Some((PathBuf::from(path), context))), true)
        }
        None => (setup(), false),
    }
}

fn setup_upstream(listener: &str, real: Option<(PathBuf, Option<String>)>) -> Setup {
    let api = KubeApiServer::start().unwrap();
    let (upstream, context) = match real {
        Some((path, context)) => (path, context),
        None => (api.write_kubeconfig().unwrap(), Some("gatehouse".to_string())),
    };
    let context = context.map(|c| format!("context = \"{c}\"")).unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    let port = free_port().unwrap();
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_gatehouse"))
        .config(&format!(
            r#"
[kube]
listen = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"
{listener}

[[kube.clusters]]
name = "dev"
kubeconfig = "{upstream}"
{context}
labels = {{ env = "dev" }}

[[kube.clusters]]
name = "prod"
kubeconfig = "{upstream}"
{context}
labels = {{ env = "prod" }}
"#,
            cert = certs.server_cert.display(),
            key = certs.server_key.display(),
            upstream = upstream.display(),
        ))
        .start()
        .unwrap();
    let write = |cluster: &str| {
        let path = dir.path().join(format!("kubeconfig-{cluster}"));
        let out = gw
            .cli(&[
                "kubeconfig",
                "--cluster",
                cluster,
                "--server",
                &format!("https://127.0.0.1:{port}"),
                "--ca-file",
                certs.ca_cert.to_str().unwrap(),
                "--output",
                path.to_str().unwrap(),
            ])
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        path
    };
    let kubeconfig = write("dev");
    let kubeconfig_prod = write("prod");
    Setup {
        api,
        gw,
        port,
        certs,
        kubeconfig,
        kubeconfig_prod,
        dir,
    }
}

impl Setup {
    fn kubectl_command(&self, token: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("GATEHOUSE_TOKEN", token)
            .env("HOME", self.dir.path())
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// kubectl against cluster `prod`.
    fn kubectl_prod(&self, token: &str, args: &[&str]) -> Command {
        let mut cmd = self.kubectl_command(token, args);
        cmd.env("KUBECONFIG", &self.kubeconfig_prod);
        cmd
    }

    /// `gatehouse approvals ARGS` as the holder of `token`.
    fn approvals(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("approvals")
            .args(args)
            .args(["--config", &self.gw.config_path().display().to_string()])
            .env("GATEHOUSE_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The pending approval requests, waiting until there are `n`.
    fn pending(&self, token: &str, n: usize) -> Vec<serde_json::Value> {
        let mut found = Vec::new();
        let seen = self.gw.wait_for(Duration::from_secs(15), || {
            let out = self.approvals(token, &["list", "--state", "pending", "--json"]);
            found = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            found.len() >= n
        });
        assert!(seen, "no pending approval appeared:\n{}", self.gw.log());
        found
    }

    fn kubectl(&self, token: &str, args: &[&str]) -> Output {
        self.kubectl_command(token, args).output().unwrap()
    }

    /// `curl` through the gateway: (status, content type, body).
    fn curl(&self, token: Option<&str>, path: &str, headers: &[&str]) -> (u16, String, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--path-as-is", "--max-time", "20", "--cacert"])
            .arg(&self.certs.ca_cert)
            .args(["-w", "\n%{http_code} %{content_type}"]);
        if let Some(token) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        for h in headers {
            cmd.args(["-H", h]);
        }
        cmd.arg(format!("https://127.0.0.1:{}{path}", self.port));
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, tail) = text.rsplit_once('\n').unwrap();
        let (code, ct) = tail.split_once(' ').unwrap_or((tail, ""));
        (code.parse().unwrap(), ct.to_string(), body.to_string())
    }

    fn audit_text(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.gw.audit_dir()).unwrap() {
            text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
        }
        text
    }

    /// The audit's kube_request records so far, waiting until `check` holds.
    fn wait_audit(&self, check: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let read = || {
            self.audit_text()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|r| r.to_string().contains("\"kube_request\""))
                .collect::<Vec<_>>()
        };
        self.gw.wait_for(Duration::from_secs(5), || check(&read()));
        read()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed:\n{}\n{}",
        stderr(out),
        stdout(out)
    );
    stdout(out)
}

#[test]
fn kubectl_gets_pods_with_the_gateways_credential_only() {
    let s = setup();
    let token = s.gw.mint("alice", &[], false).unwrap();
    let out = ok(&s.kubectl(&token, &["get", "pods", "-n", "shop"]));
    assert!(out.contains("web-0") && out.contains("Running"), "{out}");
    let version = ok(&s.kubectl(&token, &["version", "-o", "json"]));
    assert!(version.contains("v1.32.0-gatehouse-testkit"), "{version}");

    let seen = s.api.seen();
    assert!(!seen.is_empty());
    for request in &seen {
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("Bearer {}", s.api.token()).as_str()),
            "{request:?}"
        );
        assert!(request.impersonation.is_empty(), "{request:?}");
    }
    assert!(
        seen.iter()
            .any(|r| r.path_and_query.starts_with("/api/v1/namespaces/shop/pods"))
    );

    // One session for the caller's token, however many requests kubectl made.
    let records = s.wait_audit(|r| r.iter().any(|e| e["verb"] == "list" && e["status"] == 200));
    let list = records.iter().find(|e| e["verb"] == "list").unwrap();
    assert_eq!(list["decision"], "allow");
    assert_eq!(list["attributes"]["resource"], "pods");
    assert_eq!(list["attributes"]["namespace"], "shop");
    assert_eq!(list["policies"], serde_json::json!(["kube-read"]));
    assert!(list["bytes"].as_u64().unwrap() > 0);
    let audit = s.audit_text();
    assert_eq!(audit.matches("\"session_started\"").count(), 1, "{audit}");
    assert!(!audit.contains(&token));
}

#[test]
fn secrets_are_masked_in_yaml_json_wide_and_table_output() {
    let s = setup();
    let token = s.gw.mint("alice", &[], false).unwrap();
    let yaml = ok(&s.kubectl(&token, &["get", "secret", "db", "-n", "shop", "-o", "yaml"]));
    assert!(yaml.contains(&format!("password: {MASKED}")), "{yaml}");
    assert!(yaml.contains("last-applied-configuration"), "{yaml}");
    assert!(
        !yaml.contains(SEEDED_SECRET_B64) && !yaml.contains(SEEDED_SECRET_VALUE),
        "{yaml}"
    );

    let list = ok(&s.kubectl(&token, &["get", "secrets", "-n", "shop", "-o", "json"]));
    assert!(list.contains(MASKED) && !list.contains(SEEDED_SECRET_B64), "{list}");

    let wide = ok(&s.kubectl(&token, &["get", "secrets", "-n", "shop", "-o", "wide"]));
    assert!(wide.contains("db") && wide.contains("Opaque"), "{wide}");

    // Table rows with whole objects (what clients ask with includeObject=Object).
    let (code, ct, body) = s.curl(
        Some(&token),
        "/clusters/dev/api/v1/namespaces/shop/secrets?includeObject=Object",
        &["Accept: application/json;as=Table;v=v1;g=meta.k8s.io"],
    );
    assert_eq!(code, 200, "{body}");
    assert!(ct.starts_with("application/json"), "{ct}");
    assert!(body.contains("\"Table\"") && body.contains(MASKED), "{body}");
    assert!(!body.contains(SEEDED_SECRET_B64), "{body}");

    // The API server really holds the value: masking happened in the gateway.
    let stored = s.api.object("secrets", "shop", "db").unwrap();
    assert_eq!(stored["data"]["password"], SEEDED_SECRET_B64);
    let records = s.wait_audit(|r| r.len() >= 4);
    assert!(records.iter().all(|e| !e.to_string().contains(SEEDED_SECRET_B64)));
    assert!(s.audit_text().contains("\"masking_applied\""));
}

#[test]
fn protobuf_is_never_passed_through_for_secrets() {
    let s = setup();
    let token = s.gw.mint("alice", &[], false).unwrap();
    let protobuf = "Accept: application/vnd.kubernetes.protobuf, application/json";
    let (code, ct, body) = s.curl(
        Some(&token),
        "/clusters/dev/api/v1/namespaces/shop/secrets/db",
        &[protobuf],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(ct, "application/json");
    assert!(body.contains(MASKED) && !body.contains(SEEDED_SECRET_B64), "{body}");
    let upstream = s
        .api
        .seen()
        .into_iter()
        .rfind(|r| r.path_and_query.contains("/secrets/db"))
        .unwrap();
    assert_eq!(upstream.accept.as_deref(), Some("application/json"));

    // Pods carry env values that the content detectors read: JSON too.
    let (code, ct, _) = s.curl(
        Some(&token),
        "/clusters/dev/api/v1/namespaces/shop/pods/web-0",
        &[protobuf],
    );
    assert_eq!((code, ct.as_str()), (200, "application/json"));
    // Namespaces carry neither: the client's protobuf preference goes through unchanged.
    let (code, ct, _) = s.curl(Some(&token), "/clusters/dev/api/v1/namespaces/shop", &[protobuf]);
    assert_eq!((code, ct.as_str()), (200, "application/vnd.kubernetes.protobuf"));
}

#[test]
fn agents_cannot_write_and_ops_can_apply() {
    let s = setup();
    let agent = s.gw.mint("agent-7", &[], true).unwrap();
    let out = s.kubectl(&agent, &["delete", "pod", "web-0", "-n", "shop", "--wait=false"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Error from server (Forbidden)"), "{err}");
    assert!(err.contains("agent-kube-read-only"), "{err}");
    assert!(s.api.object("pods", "shop", "web-0").is_some());

    let manifest = s.dir.path().join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: feature-flags\n  namespace: shop\ndata:\n  beta: \"on\"\n",
    )
    .unwrap();
    let file = manifest.to_str().unwrap();
    let out = s.kubectl(&agent, &["apply", "--validate=false", "-f", file]);
    assert!(
        stderr(&out).contains("Error from server (Forbidden)"),
        "{}",
        stderr(&out)
    );
    assert!(s.api.object("configmaps", "shop", "feature-flags").is_none());

    let ops = s.gw.mint("olga", &["ops"], false).unwrap();
    let created = ok(&s.kubectl(&ops, &["apply", "--validate=false", "-f", file]));
    assert!(created.contains("configmap/feature-flags created"), "{created}");
    std::fs::write(
        &manifest,
        std::fs::read_to_string(&manifest).unwrap().replace("\"on\"", "\"off\""),
    )
    .unwrap();
    let configured = ok(&s.kubectl(&ops, &["apply", "--validate=false", "-f", file]));
    assert!(
        configured.contains("configmap/feature-flags configured"),
        "{configured}"
    );
    assert_eq!(
        s.api.object("configmaps", "shop", "feature-flags").unwrap()["data"]["beta"],
        "off"
    );
    let deleted = ok(&s.kubectl(
        &ops,
        &["delete", "configmap", "feature-flags", "-n", "shop", "--wait=false"],
    ));
    assert!(deleted.contains("deleted"), "{deleted}");

    // A masked Secret read back and applied would overwrite the real values: refused.
    let yaml = ok(&s.kubectl(&ops, &["get", "secret", "db", "-n", "shop", "-o", "yaml"]));
    let masked = s.dir.path().join("secret.yaml");
    std::fs::write(&masked, yaml).unwrap();
    let out = s.kubectl(&ops, &["apply", "--validate=false", "-f", masked.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("masking placeholder"), "{}", stderr(&out));
    assert_eq!(
        s.api.object("secrets", "shop", "db").unwrap()["data"]["password"],
        SEEDED_SECRET_B64
    );

    let records = s.wait_audit(|r| r.iter().any(|e| e["decision"] == "deny" && e["verb"] == "delete"));
    let denied = records
        .iter()
        .find(|e| e["decision"] == "deny" && e["verb"] == "delete")
        .unwrap();
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["attributes"]["name"], "web-0");
    assert_eq!(denied["policies"], serde_json::json!(["agent-kube-read-only"]));
}

#[test]
fn impersonation_path_tricks_and_unknown_clusters_are_refused() {
    let s = setup();
    let token = s.gw.mint("alice", &[], false).unwrap();
    let out = s.kubectl(
        &token,
        &["--as=admin", "--as-group=system:masters", "get", "pods", "-n", "shop"],
    );
    assert!(!out.status.success());
    // kubectl's discovery client prints a refusal of discovery as "unknown"; the message
    // itself is checked with curl below.
    assert!(
        stderr(&out).contains("Error from server (Forbidden)"),
        "{}",
        stderr(&out)
    );
    let (code, _, body) = s.curl(
        Some(&token),
        "/clusters/dev/api/v1/namespaces/shop/pods",
        &["Impersonate-User: admin"],
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("impersonation is refused"), "{body}");
    assert!(s.api.seen().iter().all(|r| r.impersonation.is_empty()));

    for path in [
        "/clusters/dev/api/v1/namespaces/shop/pods/../secrets",
        "/clusters/dev/api/v1/namespaces/shop%2Fsecrets",
        "/clusters/dev/api/v1//namespaces/shop/secrets",
        "/clusters/dev/api/v1/namespaces/shop/pods/%2E%2E/secrets",
    ] {
        let before = s.api.seen().len();
        let (code, _, body) = s.curl(Some(&token), path, &[]);
        assert_eq!(code, 400, "{path}: {body}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(s.api.seen().len(), before, "{path} reached the API server");
    }

    // A bad token and an unknown cluster look the same.
    let (code_a, _, unknown) = s.curl(Some(&token), "/clusters/staging/api/v1/pods", &[]);
    let (code_b, _, bad_token) = s.curl(Some("not-a-token"), "/clusters/dev/api/v1/pods", &[]);
    assert_eq!((code_a, code_b), (403, 403));
    assert_eq!(unknown, bad_token);
    let status: serde_json::Value = serde_json::from_str(&unknown).unwrap();
    assert_eq!(status["reason"], "Forbidden");
    let (code, _, _) = s.curl(None, "/clusters/dev/api/v1/pods", &[]);
    assert_eq!(code, 401);

    let records = s.wait_audit(|r| r.iter().filter(|e| e["status"] == 400).count() >= 4);
    assert!(
        records
            .iter()
            .any(|e| e["reason"].as_str().is_some_and(|r| r.contains("impersonation")))
    );
}

/// Reads a child's stdout lines on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

struct Killed(Child);

/// Waits for a spawned kubectl (its output is small: no pipe fills up).
fn output_of(k: &mut Killed) -> Output {
    use std::io::Read as _;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    if let Some(mut o) = k.0.stdout.take() {
        o.read_to_end(&mut out).unwrap();
    }
    if let Some(mut e) = k.0.stderr.take() {
        e.read_to_end(&mut err).unwrap();
    }
    let status = k.0.wait().unwrap();
    Output {
        status,
        stdout: out,
        stderr: err,
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watches_stream_events_as_they_happen_and_secrets_stay_masked() {
    let s = setup();
    let token = s.gw.mint("alice", &[], false).unwrap();
    let mut pods = Killed(
        s.kubectl_command(&token, &["get", "pods", "-n", "shop", "--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rx = lines_of(&mut pods.0);
    let mut seen = Vec::new();
    assert!(wait_line(&rx, "web-0", &mut seen), "{seen:?}");
    s.api
        .put(
            "pods",
            "shop",
            serde_json::json!({"metadata": {"name": "web-1"}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}, "status": {"phase": "Pending"}}),
        )
        .unwrap();
    assert!(wait_line(&rx, "web-1", &mut seen), "{seen:?}\n{}", s.gw.log());

    let mut secrets = Killed(
        s.kubectl_command(&token, &["get", "secrets", "-n", "shop", "--watch", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rx = lines_of(&mut secrets.0);
    let mut seen = Vec::new();
    assert!(wait_line(&rx, "\"db\"", &mut seen), "{seen:?}");
    s.api
        .put(
            "secrets",
            "shop",
            serde_json::json!({"metadata": {"name": "api-key"}, "type": "Opaque", "data": {"key": SEEDED_SECRET_B64}}),
        )
        .unwrap();
    assert!(wait_line(&rx, "\"api-key\"", &mut seen), "{seen:?}");
    let text = seen.join("\n");
    assert!(text.contains(&format!("\"key\": \"{MASKED}\"")), "{text}");
    assert!(!text.contains(SEEDED_SECRET_B64), "{text}");
}

/// kubectl with `stdin` as its standard input.
fn kubectl_with_stdin(s: &Setup, token: &str, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = s
        .kubectl_command(token, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn kubectl_exec_is_relayed_recorded_and_replayable() {
    let s = setup();
    let ops = s.gw.mint("olga", &["ops"], false).unwrap();
    let out = s.kubectl(&ops, &["exec", "-n", "shop", "web-0", "--", "echo", "hi"]);
    assert_eq!(stdout(&out), "hi\n", "{}", stderr(&out));
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.gw.log());

    let out = s.kubectl(
        &ops,
        &[
            "exec",
            "-n",
            "shop",
            "web-0",
            "--",
            "sh",
            "-c",
            "echo to-stderr >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("to-stderr"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("command terminated with exit code 3"),
        "{}",
        stderr(&out)
    );

    let out = kubectl_with_stdin(
        &s,
        &ops,
        &["exec", "-i", "-n", "shop", "web-0", "--", "tr", "a-z", "A-Z"],
        b"piped through\n",
    );
    assert_eq!(stdout(&out), "PIPED THROUGH\n", "{}", stderr(&out));

    // Every exec went upstream as a WebSocket upgrade with the gateway's credential.
    let upgrades: Vec<_> = s
        .api
        .seen()
        .into_iter()
        .filter(|r| r.path_and_query.contains("/exec"))
        .collect();
    assert_eq!(upgrades.len(), 3, "{upgrades:?}");
    for r in &upgrades {
        assert_eq!(r.upgrade.as_deref(), Some("websocket"));
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {}", s.api.token()).as_str())
        );
        let protocols = r.protocols.as_deref().unwrap_or("");
        assert!(protocols.contains("v5.channel.k8s.io"), "{protocols}");
        assert!(!protocols.contains("base64"), "{protocols}");
    }

    // Audited when each stream closed: exit status, bytes, and one recording each.
    let records = s.wait_audit(|r| r.iter().filter(|e| e["verb"] == "exec").count() >= 3);
    let execs: Vec<_> = records.iter().filter(|e| e["verb"] == "exec").collect();
    let reasons: Vec<_> = execs.iter().map(|e| e["reason"].as_str().unwrap_or("")).collect();
    assert_eq!(reasons, ["exit 0", "exit 3", "exit 0"], "{execs:?}");
    for e in &execs {
        assert_eq!(e["status"], 101);
        assert_eq!(e["decision"], "allow");
        assert_eq!(e["policies"], serde_json::json!(["ops-kube-exec"]));
        assert!(e["bytes"].as_u64().unwrap() > 0);
    }
    let session = execs[0]["session"].as_str().unwrap().to_string();
    let audit = s.audit_text();
    let written: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r.to_string().contains("\"recording_written\""))
        .collect();
    assert_eq!(written.len(), 3, "{audit}");
    let recordings = s.gw.dir().join("state/recordings");
    for w in &written {
        let path = std::path::Path::new(w["path"].as_str().unwrap());
        assert!(path.starts_with(&recordings), "{path:?}");
        let sum = Command::new("sha256sum").arg(path).output().unwrap();
        let hex = stdout(&sum);
        assert_eq!(w["sha256"], hex.split_whitespace().next().unwrap());
    }
    let last = std::fs::read_to_string(written[2]["path"].as_str().unwrap()).unwrap();
    assert!(last.contains("\"i\",\"piped through\\n\""), "{last}");
    assert!(last.contains("\"o\",\"PIPED THROUGH\\n\""), "{last}");
    assert!(last.contains("\"m\",\"exit 0\""), "{last}");

    let replay =
        s.gw.cli(&["replay", &session, "--dir", recordings.to_str().unwrap(), "--no-delay"])
            .unwrap();
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert_eq!(stdout(&replay), "hi\nto-stderr\nPIPED THROUGH\n");
}

#[test]
fn exec_refusals_spdy_and_broken_upgrades_never_open_a_stream() {
    let s = setup();
    let agent = s.gw.mint("agent-7", &[], true).unwrap();
    let out = s.kubectl(&agent, &["exec", "-n", "shop", "web-0", "--", "echo", "hi"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Error from server (Forbidden)"), "{err}");
    assert!(err.contains("agent-kube-read-only"), "{err}");
    assert!(s.api.seen().iter().all(|r| !r.path_and_query.contains("/exec")));

    let ops = s.gw.mint("olga", &["ops"], false).unwrap();
    let exec = "/clusters/dev/api/v1/namespaces/shop/pods/web-0/exec?command=sh&stdin=true&stdout=true";
    let websocket = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol: v5.channel.k8s.io",
    ];
    let (code, _, body) = s.curl(
        Some(&ops),
        exec,
        &[
            "Connection: Upgrade",
            "Upgrade: SPDY/3.1",
            "X-Stream-Protocol-Version: v4.channel.k8s.io",
        ],
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("use a client that speaks WebSocket"), "{body}");

    let (code, _, body) = s.curl(
        Some(&ops),
        "/clusters/dev/api/v1/namespaces/shop/pods/web-0/exec?command=sh&stdout=true",
        &[&websocket[..4], &["Sec-WebSocket-Protocol: v4.base64.channel.k8s.io"]].concat(),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("v5.channel.k8s.io, v4.channel.k8s.io"), "{body}");

    // The API server's own refusal comes back as it is.
    let (code, _, body) = s.curl(
        Some(&ops),
        "/clusters/dev/api/v1/namespaces/shop/pods/nope/exec?command=sh&stdout=true",
        &websocket,
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("NotFound") && body.contains("nope"), "{body}");

    // An upgrade answered with 200 is an error, never a tunnel.
    let (code, _, body) = s.curl(Some(&ops), &format!("{exec}&container=answers-200"), &websocket);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("not 101 Switching Protocols"), "{body}");
    assert!(!body.contains("this is not a tunnel"), "{body}");

    let records = s.wait_audit(|r| r.iter().filter(|e| e["verb"] == "exec").count() >= 6);
    let statuses: Vec<_> = records
        .iter()
        .filter(|e| e["verb"] == "exec")
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert!(statuses.iter().all(|s| *s != 101), "{statuses:?}");
}

#[test]
fn oversized_heads_and_lists_beyond_the_masking_buffer_are_refused() {
    let s = setup_with("max_json_buffer = 65536");
    let token = s.gw.mint("alice", &[], false).unwrap();
    let big = format!("X-Padding: {}", "a".repeat(100_000));
    let (code, _, _) = s.curl(Some(&token), "/clusters/dev/api/v1/namespaces/shop/pods", &[&big]);
    assert_eq!(code, 431);

    for i in 0..40 {
        s.api
            .put(
                "secrets",
                "shop",
                serde_json::json!({"metadata": {"name": format!("bulk-{i}")}, "type": "Opaque",
                    "data": {"blob": "QUFB".repeat(600)}}),
            )
            .unwrap();
    }
    let out = s.kubectl(&token, &["get", "secrets", "-n", "shop", "-o", "json"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("masking buffer"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--chunk-size"), "{}", stderr(&out));
    // One object still fits, and pods are not buffered at all.
    ok(&s.kubectl(&token, &["get", "secret", "bulk-7", "-n", "shop", "-o", "yaml"]));
    ok(&s.kubectl(&token, &["get", "pods", "-n", "shop"]));
}

#[test]
fn check_config_loads_the_clusters_credentials() {
    let s = setup();
    let config = std::fs::read_to_string(s.gw.config_path()).unwrap();
    let out =
        s.gw.cli(&["check-config", s.gw.config_path().to_str().unwrap()])
            .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let broken = s.dir.path().join("broken.toml");
    let missing = s.dir.path().join("missing.kubeconfig");
    let text = config.replace(
        "kubeconfig = \"",
        &format!("kubeconfig = \"{}\"\n# was: \"", missing.display()),
    );
    std::fs::write(
        &broken,
        text.replace(
            "dir = \"policies\"",
            &format!("dir = \"{}\"", s.gw.policy_dir().display()),
        ),
    )
    .unwrap();
    let out = s.gw.cli(&["check-config", broken.to_str().unwrap()]).unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kube.clusters (dev).kubeconfig"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn prod_writes_and_exec_wait_for_approval_and_go_through_exactly_as_approved() {
    let s = setup();
    let ops = s.gw.mint("olga", &["ops"], false).unwrap();
    let lead = s.gw.mint("lena", &["ops-leads"], false).unwrap();
    let manifest = s.dir.path().join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: release\n  namespace: shop\ndata:\n  version: \"42\"\n",
    )
    .unwrap();
    let apply = Killed(
        s.kubectl_prod(&ops, &["apply", "--validate=false", "-f", manifest.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pending = s.pending(&lead, 1);
    let request = &pending[0];
    let shown = request["request"].as_str().unwrap();
    assert!(
        shown.starts_with("create configmaps in namespace shop on cluster prod: POST"),
        "{shown}"
    );
    assert!(shown.contains("SHA-256"), "{shown}");
    assert_eq!(request["approver_group"], "ops-leads");
    // Nothing reached the API server while it waited.
    assert!(s.api.object("configmaps", "shop", "release").is_none());
    let id = request["id"].as_str().unwrap().to_string();
    let out = s.approvals(&lead, &["approve", &id, "--reason", "release 42"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut apply = apply;
    let out = output_of(&mut apply);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("configmap/release created"), "{}", stdout(&out));
    assert_eq!(
        s.api.object("configmaps", "shop", "release").unwrap()["data"]["version"],
        "42"
    );

    // Denied: kubectl prints the approver's reason as a Forbidden error.
    let mut delete = Killed(
        s.kubectl_prod(&ops, &["delete", "configmap", "release", "-n", "shop", "--wait=false"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let id = s.pending(&lead, 1)[0]["id"].as_str().unwrap().to_string();
    let out = s.approvals(&lead, &["deny", &id, "--reason", "release freeze"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = output_of(&mut delete);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Error from server (Forbidden)"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("release freeze"), "{}", stderr(&out));
    assert!(s.api.object("configmaps", "shop", "release").is_some());

    // exec on prod waits too, and runs once approved.
    let mut exec = Killed(
        s.kubectl_prod(&ops, &["exec", "-n", "shop", "web-0", "--", "echo", "approved"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pending = s.pending(&lead, 1);
    assert!(
        pending[0]["request"]
            .as_str()
            .unwrap()
            .starts_with("exec pods/exec shop/web-0"),
        "{pending:?}"
    );
    let id = pending[0]["id"].as_str().unwrap().to_string();
    assert!(s.approvals(&lead, &["approve", &id]).status.success());
    let out = output_of(&mut exec);
    assert_eq!(stdout(&out), "approved\n", "{}", stderr(&out));

    // A client that gives up withdraws its request; nothing is sent.
    let gone = Killed(
        s.kubectl_prod(&ops, &["delete", "configmap", "release", "-n", "shop", "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let id = s.pending(&lead, 1)[0]["id"].as_str().unwrap().to_string();
    drop(gone);
    let withdrawn = s.gw.wait_for(Duration::from_secs(10), || {
        let out = s.approvals(&lead, &["show", &id, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| v["state"] == "withdrawn")
    });
    assert!(withdrawn, "{}", s.gw.log());
    assert!(s.api.object("configmaps", "shop", "release").is_some());
    assert!(s.gw.log().contains("waiting for approval"), "{}", s.gw.log());
}

/// A Python `kubernetes` client (PyPI) API object pointed at the gateway with a bearer
/// token; the scripts below start with it.
const PYTHON_API: &str = r#"
import os
from kubernetes import client

def api(token):
    cfg = client.Configuration()
    cfg.host = os.environ["GW_URL"]
    cfg.ssl_ca_cert = os.environ["GW_CA"]
    cfg.api_key = {"authorization": "Bearer " + token}
    return client.CoreV1Api(client.ApiClient(cfg))
"#;

/// The Python `kubernetes` client (PyPI), pointed at the gateway with a bearer token.
const PYTHON_CLIENT: &str = r#"
import json, os, sys
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream


ops, agent = api(os.environ["OPS_TOKEN"]), api(os.environ["AGENT_TOKEN"])
out = {}
out["pods"] = [p.metadata.name for p in ops.list_namespaced_pod("shop").items]
out["secret"] = ops.read_namespaced_secret("db", "shop").data
try:
    agent.delete_namespaced_pod("web-0", "shop")
    out["delete"] = "allowed"
except ApiException as e:
    out["delete"] = {"status": e.status, "message": json.loads(e.body)["message"]}
out["exec"] = stream(ops.connect_get_namespaced_pod_exec, "web-0", "shop",
                     command=["sh", "-c", "echo hi from python"],
                     stderr=True, stdin=False, stdout=True, tty=False)
print(json.dumps(out))
"#;

#[test]
fn the_python_client_lists_reads_masked_is_refused_and_execs() {
    let s = setup();
    let ops = s.gw.mint("olga", &["ops"], false).unwrap();
    let agent = s.gw.mint("agent-7", &[], true).unwrap();
    let out = Command::new("python3")
        .args(["-c", &format!("{PYTHON_API}{PYTHON_CLIENT}")])
        .env("GW_URL", format!("https://127.0.0.1:{}/clusters/dev", s.port))
        .env("GW_CA", &s.certs.ca_cert)
        .env("OPS_TOKEN", &ops)
        .env("AGENT_TOKEN", &agent)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.gw.log());
    let result: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(result["pods"], serde_json::json!(["web-0"]));
    assert_eq!(result["secret"]["password"], MASKED);
    assert_eq!(result["delete"]["status"], 403);
    let message = result["delete"]["message"].as_str().unwrap();
    assert!(message.contains("agent-kube-read-only"), "{message}");
    assert_eq!(result["exec"], "hi from python\n");
    assert!(s.api.object("pods", "shop", "web-0").is_some());
}

/// A TCP server standing in for a pod's port: every byte comes back XOR 0xff (so an echo
/// that skipped the server would show). Stopped on drop.
struct FlipServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FlipServer {
    fn start() -> Self {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        let flipped: Vec<u8> = buf[..n].iter().map(|b| b ^ 0xff).collect();
                        if conn.write_all(&flipped).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FlipServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The Python client's port-forward (`v4.channel.k8s.io`, ports in the query).
const PYTHON_PORTFORWARD: &str = r#"
import json, os
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward


port = int(os.environ["POD_PORT"])
out = {}
pf = portforward(api(os.environ["OPS_TOKEN"]).connect_get_namespaced_pod_portforward,
                 "web-0", "shop", ports=str(port))
sock = pf.socket(port)
sock.setblocking(True)
payload = bytes(range(256)) * 300
sock.sendall(payload)
got = b""
while len(got) < len(payload):
    chunk = sock.recv(65536)
    if not chunk:
        break
    got += chunk
out["sent"] = len(payload)
out["flipped_back"] = got == bytes(b ^ 0xff for b in payload)
sock.close()
try:
    portforward(api(os.environ["AGENT_TOKEN"]).connect_get_namespaced_pod_portforward,
                "web-0", "shop", ports=str(port))
    out["agent"] = "allowed"
except Exception as e:
    out["agent"] = str(e)
print(json.dumps(out))
"#;

#[test]
fn port_forward_relays_bytes_both_ways_unrecorded_and_kubectl_gets_a_clear_error() {
    let s = setup();
    let pod = FlipServer::start();
    let ops = s.gw.mint("olga", &["ops"], false).unwrap();
    let agent = s.gw.mint("agent-7", &[], true).unwrap();
    let out = Command::new("python3")
        .args(["-c", &format!("{PYTHON_API}{PYTHON_PORTFORWARD}")])
        .env("GW_URL", format!("https://127.0.0.1:{}/clusters/dev", s.port))
        .env("GW_CA", &s.certs.ca_cert)
        .env("OPS_TOKEN", &ops)
        .env("AGENT_TOKEN", &agent)
        .env("POD_PORT", pod.port.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.gw.log());
    let result: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(result["flipped_back"], true, "{result}");
    let agent_error = result["agent"].as_str().unwrap();
    assert!(agent_error.contains("403"), "{agent_error}");

    // Decided as portforward with the port in context, audited with its bytes, not recorded.
    let records = s.wait_audit(|r| {
        r.iter()
            .filter(|e| e["verb"] == "portforward" && e["status"] == 101)
            .count()
            >= 1
    });
    let forwarded = records
        .iter()
        .find(|e| e["verb"] == "portforward" && e["status"] == 101)
        .unwrap();
    assert_eq!(forwarded["decision"], "allow");
    assert_eq!(forwarded["policies"], serde_json::json!(["ops-kube-exec"]));
    assert_eq!(forwarded["attributes"]["ports"], serde_json::json!([pod.port]));
    let sent = result["sent"].as_u64().unwrap();
    assert!(forwarded["bytes"].as_u64().unwrap() >= 2 * sent, "{forwarded}");
    let refused = records
        .iter()
        .find(|e| e["verb"] == "portforward" && e["decision"] == "deny")
        .unwrap();
    assert_eq!(refused["policies"], serde_json::json!(["agent-kube-read-only"]));
    assert!(!s.audit_text().contains("\"recording_written\""));
    let upstream = s
        .api
        .seen()
        .into_iter()
        .find(|r| r.path_and_query.contains("/portforward"))
        .unwrap();
    assert_eq!(upstream.protocols.as_deref(), Some("v4.channel.k8s.io"));

    // kubectl 1.32 tunnels SPDY inside the WebSocket, which the test API server does not
    // speak: kubectl must fail with a message, not hang.
    let local = free_port().unwrap();
    let started = std::time::Instant::now();
    let mut kubectl = Killed(
        s.kubectl_command(
            &ops,
            &[
                "port-forward",
                "-n",
                "shop",
                "pod/web-0",
                &format!("{local}:{}", pod.port),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let out = output_of(&mut kubectl);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("error upgrading connection"), "{err}");
    assert!(err.contains("port-forward is relayed over WebSocket only"), "{err}");
    // kubectl's WebSocket attempt did reach the API server (which refused the SPDY tunnel);
    // its SPDY fallback never did.
    let tunnels: Vec<_> = s
        .api
        .seen()
        .into_iter()
        .filter(|r| r.path_and_query.contains("/portforward"))
        .collect();
    assert!(
        tunnels
            .iter()
            .any(|r| r.protocols.as_deref() == Some("SPDY/3.1+portforward.k8s.io")),
        "{tunnels:?}"
    );
    assert!(tunnels.iter().all(|r| r.upgrade.as_deref() == Some("websocket")));
}

#[test]
fn open_exec_streams_are_closed_recorded_and_audited_at_shutdown() {
    let mut s = setup();
    let ops = s.gw.mint("olga", &["ops"], false).unwrap();
    let mut exec = Killed(
        s.kubectl_command(
            &ops,
            &[
                "exec",
                "-n",
                "shop",
                "web-0",
                "--",
                "sh",
                "-c",
                "echo started; sleep 60",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let rx = lines_of(&mut exec.0);
    let mut seen = Vec::new();
    assert!(wait_line(&rx, "started", &mut seen), "{seen:?}\n{}", s.gw.log());

    let began = std::time::Instant::now();
    let status = s.gw.terminate(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "{status}\n{}", s.gw.log());
    // The stream got its grace period, then was closed: not cut at once, not left hanging.
    let took = began.elapsed();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    let mut exited = false;
    for _ in 0..100 {
        if exec.0.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(exited, "kubectl still running after the gateway closed its stream");

    // The request's record and the finished recording, with a hash matching the file.
    let audit = s.audit_text();
    let records: Vec<serde_json::Value> = audit.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let exec_record = records
        .iter()
        .find(|r| r.to_string().contains("\"kube_request\"") && r["verb"] == "exec")
        .unwrap_or_else(|| panic!("no exec record:\n{audit}"));
    assert_eq!(exec_record["status"], 101);
    let reason = exec_record["reason"].as_str().unwrap();
    assert!(reason.contains("the gateway shut down"), "{reason}");
    let written = records
        .iter()
        .find(|r| r.to_string().contains("\"recording_written\""))
        .unwrap_or_else(|| panic!("no recording:\n{audit}"));
    let path = written["path"].as_str().unwrap();
    let sum = Command::new("sha256sum").arg(path).output().unwrap();
    assert_eq!(written["sha256"], stdout(&sum).split_whitespace().next().unwrap());
    let cast = std::fs::read_to_string(path).unwrap();
    assert!(cast.contains("started"), "{cast}");
    assert!(audit.contains("\"session_ended\""), "{audit}");
}

#[test]
fn config_map_data_and_env_values_pass_through_the_content_detectors() {
    let s = setup();
    s.api
        .put(
            "configmaps",
            "shop",
            serde_json::json!({"metadata": {"name": "contacts"},
                "data": {"owner": "lena@example.com", "billing": "card 4111 1111 1111 1111", "mode": "fast"}}),
        )
        .unwrap();
    s.api
        .put(
            "pods",
            "shop",
            serde_json::json!({"metadata": {"name": "mailer"},
                "spec": {"containers": [{"name": "mailer", "image": "mailer:1",
                    "env": [{"name": "ADMIN", "value": "lena@example.com"}, {"name": "MODE", "value": "fast"}]}]},
                "status": {"phase": "Running"}}),
        )
        .unwrap();
    let alice = s.gw.mint("alice", &[], false).unwrap();
    let yaml = ok(&s.kubectl(&alice, &["get", "configmap", "contacts", "-n", "shop", "-o", "yaml"]));
    assert!(!yaml.contains("lena@example.com"), "{yaml}");
    assert!(!yaml.contains("4111 1111 1111 1111"), "{yaml}");
    assert!(yaml.contains("mode: fast") && yaml.contains("name: contacts"), "{yaml}");
    let json = ok(&s.kubectl(&alice, &["get", "configmaps", "-n", "shop", "-o", "json"]));
    assert!(
        !json.contains("lena@example.com") && json.contains("\"settings\""),
        "{json}"
    );
    let pod = ok(&s.kubectl(&alice, &["get", "pod", "mailer", "-n", "shop", "-o", "yaml"]));
    assert!(!pod.contains("lena@example.com"), "{pod}");
    assert!(pod.contains("value: fast"), "{pod}");
    // A watch masks event by event.
    let (code, _, body) = s.curl(
        Some(&alice),
        "/clusters/dev/api/v1/namespaces/shop/configmaps?watch=1&resourceVersion=1&timeoutSeconds=1",
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("contacts") && !body.contains("lena@example.com"),
        "{body}"
    );

    // Group support-leads may see e-mail addresses (masking.cedar); cards stay masked.
    let lead = s.gw.mint("sam", &["support-leads"], false).unwrap();
    let yaml = ok(&s.kubectl(&lead, &["get", "configmap", "contacts", "-n", "shop", "-o", "yaml"]));
    assert!(yaml.contains("owner: lena@example.com"), "{yaml}");
    assert!(!yaml.contains("4111 1111 1111 1111"), "{yaml}");
    let pod = ok(&s.kubectl(&lead, &["get", "pod", "mailer", "-n", "shop", "-o", "yaml"]));
    assert!(pod.contains("lena@example.com"), "{pod}");

    // `get -o yaml | apply` with masked values is refused: the real ones stay.
    let ops = s.gw.mint("olga", &["ops"], false).unwrap();
    let masked = ok(&s.kubectl(&ops, &["get", "configmap", "contacts", "-n", "shop", "-o", "yaml"]));
    assert!(masked.contains("***@example.com"), "{masked}");
    let manifest = s.dir.path().join("contacts.yaml");
    std::fs::write(&manifest, masked.replace("mode: fast", "mode: slow")).unwrap();
    let out = s.kubectl(&ops, &["apply", "--validate=false", "-f", manifest.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("a value the gateway masked"), "{}", stderr(&out));
    let stored = s.api.object("configmaps", "shop", "contacts").unwrap();
    assert_eq!(stored["data"]["owner"], "lena@example.com");
    assert_eq!(stored["data"]["mode"], "fast");

    // The API server holds the real values; the audit counts, never shows them.
    assert_eq!(
        s.api.object("configmaps", "shop", "contacts").unwrap()["data"]["owner"],
        "lena@example.com"
    );
    s.wait_audit(|r| r.len() >= 6);
    let audit = s.audit_text();
    assert!(audit.contains("\"masking_applied\""), "{audit}");
    assert!(!audit.contains("4111 1111 1111 1111"));
}

/// The subset that makes sense on a real cluster, run against `GATEHOUSE_TEST_KUBECONFIG`
/// when it is set (see docs/kube.md) and against the testkit's API server otherwise:
/// `GATEHOUSE_TEST_NAMESPACE` (default `default`) and, for exec, `GATEHOUSE_TEST_POD`
/// (a running pod with `echo` in that namespace; `web-0` in `shop` on the testkit).
#[test]
fn a_cluster_lists_masks_refuses_and_execs_through_the_gateway() {
    let (s, real) = setup_real_or_testkit();
    let namespace = if real {
        std::env::var("GATEHOUSE_TEST_NAMESPACE").unwrap_or_else(|_| "default".into())
    } else {
        "shop".into()
    };
    let pod = if real {
        std::env::var("GATEHOUSE_TEST_POD").ok()
    } else {
        Some("web-0".into())
    };
    let ns = namespace.as_str();
    let ops = s.gw.mint("olga", &["ops"], false).unwrap();
    let agent = s.gw.mint("agent-7", &[], true).unwrap();
    ok(&s.kubectl(&ops, &["get", "pods", "-n", ns]));

    // A Secret created through the gateway comes back masked; the cluster holds the value.
    let name = format!("gatehouse-test-{}", std::process::id());
    let manifest = s.dir.path().join("secret.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\ntype: Opaque\ndata:\n  password: aHVudGVyMi1yZWFsLWNsdXN0ZXI=\n"
        ),
    )
    .unwrap();
    ok(&s.kubectl(&ops, &["apply", "--validate=false", "-f", manifest.to_str().unwrap()]));
    let yaml = s.kubectl(&ops, &["get", "secret", &name, "-n", ns, "-o", "yaml"]);
    let deleted = s.kubectl(&ops, &["delete", "secret", &name, "-n", ns, "--wait=false"]);
    let yaml = ok(&yaml);
    assert!(yaml.contains(&format!("password: {MASKED}")), "{yaml}");
    assert!(!yaml.contains("aHVudGVyMi1yZWFsLWNsdXN0ZXI="), "{yaml}");
    ok(&deleted);

    let out = s.kubectl(&agent, &["delete", "secret", "anything", "-n", ns, "--wait=false"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("agent-kube-read-only"), "{}", stderr(&out));

    if let Some(pod) = pod {
        let out = s.kubectl(&ops, &["exec", "-n", ns, &pod, "--", "echo", "through the gateway"]);
        assert_eq!(stdout(&out), "through the gateway\n", "{}", stderr(&out));
        let records = s.wait_audit(|r| r.iter().any(|e| e["verb"] == "exec"));
        let exec = records.iter().find(|e| e["verb"] == "exec").unwrap();
        assert_eq!(exec["reason"], "exit 0");
        assert!(s.audit_text().contains("\"recording_written\""));
    }
}
