//! A small Kubernetes API server for tests (no real one can be installed on these machines):
//! HTTPS with its own CA, the real API shapes for discovery, namespaces, pods, secrets and
//! configmaps (get, list, watch, create, update, merge patch, delete, Table output, gzip),
//! exec and attach over WebSocket running a real local process (see `kube_exec`),
//! port-forward over WebSocket to a local TCP port (see `kube_portforward`), and
//! a bearer token that only the gateway's kubeconfig holds. It records every request's
//! credentials and `Accept` so that tests can prove what the gateway forwarded. Test-only:
//! it lives in the testkit, never in the product.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::tls::TestCerts;

/// The value of the seeded Secret `shop/db` key `password`, decoded: it must never reach a
/// caller through the gateway.
pub const SEEDED_SECRET_VALUE: &str = "hunter2-prod-secret";

/// One request as the test server saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub path_and_query: String,
    pub authorization: Option<String>,
    pub accept: Option<String>,
    /// Every `Impersonate-*` header, as `name: value`.
    pub impersonation: Vec<String>,
    /// The `Upgrade` header and the offered `Sec-WebSocket-Protocol`s, for exec and friends.
    pub upgrade: Option<String>,
    pub protocols: Option<String>,
}

/// A running test API server; stopped on drop.
pub struct KubeApiServer {
    addr: SocketAddr,
    token: String,
    dir: tempfile::TempDir,
    certs: TestCerts,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Key = (String, String, String);
type Event = (u64, String, String, Value);

struct State {
    token: String,
    store: Mutex<Store>,
    /// (resourceVersion, resource, namespace, event): live, and kept for watches that start
    /// from a resourceVersion (as the API server's watch cache replays them).
    events: broadcast::Sender<Event>,
    history: Mutex<Vec<Event>>,
    seen: Mutex<Vec<SeenRequest>>,
}

struct Store {
    version: u64,
    /// (resource, namespace, name) -> object; namespace is "" for namespaces.
    objects: BTreeMap<Key, Value>,
}

const RESOURCES: [(&str, &str, bool); 4] = [
    ("namespaces", "Namespace", false),
    ("pods", "Pod", true),
    ("secrets", "Secret", true),
    ("configmaps", "ConfigMap", true),
];

impl KubeApiServer {
    /// Starts the server on a free port with its own CA and a seeded cluster: namespaces
    /// `default` and `shop`, pod `shop/web-0`, secret `shop/db`, configmap `shop/settings`.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("gatehouse-kube-").tempdir()?;
        let certs = TestCerts::generate(dir.path())?;
        let mut raw = [0u8; 16];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let token = format!("upstream-{}", hex(&raw));
        let (events, _) = broadcast::channel(1024);
        let state = Arc::new(State {
            token: token.clone(),
            store: Mutex::new(Store {
                version: 100,
                objects: BTreeMap::new(),
            }),
            events,
            history: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
        });
        state.seed();
        let tls = server_tls(&certs)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let serving = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("kube-test-api".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(_) => return,
                };
                runtime.block_on(serve(listener, tls, serving, stopped));
                runtime.shutdown_background();
            })?;
        Ok(Self {
            addr,
            token,
            dir,
            certs,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The bearer token the server accepts (the gateway's credential).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The CA that signed the server's certificate.
    pub fn ca_cert(&self) -> &Path {
        &self.certs.ca_cert
    }

    /// Writes a kubeconfig (context `gatehouse`) holding the server's token: what the gateway
    /// uses for this cluster.
    pub fn write_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("gateway.kubeconfig");
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url(),
                "certificate-authority": self.certs.ca_cert.display().to_string(),
            }}],
            "users": [{"name": "gateway", "user": {"token": self.token}}],
            "contexts": [{"name": "gatehouse", "context": {"cluster": "test", "user": "gateway"}}],
            "current-context": "gatehouse",
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        Ok(path)
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        lock(&self.state.seen).clone()
    }

    /// The object stored at (resource, namespace, name), if any.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.state.store)
            .objects
            .get(&(resource.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Creates or replaces an object directly (as another client of the cluster would),
    /// emitting the watch event.
    pub fn put(&self, resource: &str, namespace: &str, object: Value) -> anyhow::Result<()> {
        self.state
            .write(resource, namespace, object, false)
            .map_err(|(code, message)| anyhow::anyhow!("{code}: {message}"))?;
        Ok(())
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn server_tls(certs: &TestCerts) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let chain = CertificateDer::pem_file_iter(&certs.server_cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&certs.server_key)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("test server certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    mut stopped: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted { Ok(c) => c, Err(_) => continue },
            _ = &mut stopped => break,
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tasks.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(state.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
    tasks.abort_all();
}

pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn json_response(code: u16, value: &Value) -> Response<Body> {
    bytes_response(code, "application/json", Bytes::from(value.to_string()))
}

fn bytes_response(code: u16, content_type: &str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(ct) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

/// How the client asked to see objects.
struct Format {
    table: bool,
    protobuf: bool,
    include_object: String,
    gzip: bool,
}

impl State {
    fn seed(&self) {
        let secret_data = base64::engine::general_purpose::STANDARD.encode(SEEDED_SECRET_VALUE);
        let applied = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop"},
            "type": "Opaque", "data": {"password": secret_data}});
        let objects = [
            (
                "namespaces",
                "",
                json!({"metadata": {"name": "default"}, "status": {"phase": "Active"}}),
            ),
            (
                "namespaces",
                "",
                json!({"metadata": {"name": "shop"}, "status": {"phase": "Active"}}),
            ),
            (
                "pods",
                "shop",
                json!({"metadata": {"name": "web-0", "labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                        "env": [{"name": "MODE", "value": "fast"}]}]},
                    "status": {"phase": "Running"}}),
            ),
            (
                "secrets",
                "shop",
                json!({"metadata": {"name": "db", "annotations": {
                        "kubectl.kubernetes.io/last-applied-configuration": applied.to_string()}},
                    "type": "Opaque", "data": {"password": secret_data}}),
            ),
            (
                "configmaps",
                "shop",
                json!({"metadata": {"name": "settings"}, "data": {"mode": "fast"}}),
            ),
        ];
        for (resource, namespace, object) in objects {
            let _ = self.write(resource, namespace, object, false);
        }
    }

    /// Stores an object, filling kind, namespace, uid, resourceVersion and creation time.
    /// `exclusive` refuses an existing name (create).
    fn write(
        &self,
        resource: &str,
        namespace: &str,
        mut object: Value,
        exclusive: bool,
    ) -> Result<Value, (u16, String)> {
        let Some((_, kind, _)) = RESOURCES.iter().find(|(r, _, _)| *r == resource) else {
            return Err((
                404,
                format!("the server could not find the requested resource ({resource})"),
            ));
        };
        let name = object["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or((422, "metadata.name: Required value".to_string()))?
            .to_string();
        let mut store = lock(&self.store);
        let key = (resource.to_string(), namespace.to_string(), name.clone());
        let previous = store.objects.get(&key).cloned();
        if exclusive && previous.is_some() {
            return Err((409, format!("{resource} \"{name}\" already exists")));
        }
        store.version += 1;
        let version = store.version;
        object["kind"] = json!(kind);
        object["apiVersion"] = json!("v1");
        let metadata = &mut object["metadata"];
        if !namespace.is_empty() {
            metadata["namespace"] = json!(namespace);
        }
        metadata["resourceVersion"] = json!(version.to_string());
        match &previous {
            Some(old) => {
                metadata["uid"] = old["metadata"]["uid"].clone();
                metadata["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            }
            None => {
                metadata["uid"] = json!(format!("00000000-0000-4000-8000-{version:012}"));
                metadata["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
        }
        store.objects.insert(key, object.clone());
        let kind = if previous.is_some() { "MODIFIED" } else { "ADDED" };
        self.emit(version, resource, namespace, json!({"type": kind, "object": object}));
        drop(store);
        Ok(object)
    }

    /// Records and broadcasts an event; called with the store locked so events keep order.
    fn emit(&self, version: u64, resource: &str, namespace: &str, event: Value) {
        let event = (version, resource.to_string(), namespace.to_string(), event);
        lock(&self.history).push(event.clone());
        let _ = self.events.send(event);
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let headers = request.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let seen = SeenRequest {
            method: request.method().to_string(),
            path_and_query: request
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            authorization: text("authorization"),
            accept: text("accept"),
            impersonation: headers
                .iter()
                .filter(|(n, _)| n.as_str().starts_with("impersonate-"))
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
                .collect(),
            upgrade: text("upgrade"),
            protocols: text("sec-websocket-protocol"),
        };
        lock(&self.seen).push(seen.clone());
        if seen.authorization.as_deref() != Some(&format!("Bearer {}", self.token)) {
            return status(401, "Unauthorized", "Unauthorized");
        }
        if let [
            "",
            "api",
            "v1",
            "namespaces",
            ns,
            "pods",
            pod,
            sub @ ("exec" | "attach" | "portforward"),
        ] = request.uri().path().split('/').collect::<Vec<_>>().as_slice()
        {
            let key = ("pods".to_string(), ns.to_string(), pod.to_string());
            if !lock(&self.store).objects.contains_key(&key) {
                return status(404, "NotFound", &format!("pods \"{pod}\" not found"));
            }
            if *sub == "portforward" {
                return crate::kube_portforward::upgrade(request);
            }
            let exec = crate::kube_exec::ExecRequest::parse(request.uri().query().unwrap_or(""), *sub == "attach");
            return crate::kube_exec::upgrade(request, exec);
        }
        let accept = seen.accept.clone().unwrap_or_default();
        let query: BTreeMap<String, String> = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        let format = Format {
            table: accept.split(',').next().unwrap_or("").contains("as=Table"),
            // The stand-in envelope is not real protobuf: real clients (kubectl port-forward
            // asks for protobuf first) get JSON, which their Accept also lists.
            protobuf: accept.trim_start().starts_with("application/vnd.kubernetes.protobuf")
                && !text("user-agent").is_some_and(|ua| ua.starts_with("kubectl")),
            include_object: query.get("includeObject").cloned().unwrap_or_else(|| "Metadata".into()),
            gzip: text("accept-encoding").is_some_and(|e| e.contains("gzip")),
        };
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let content_type = text("content-type").unwrap_or_default();
        let body = match request.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return status(400, "BadRequest", "unreadable body"),
        };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["version"] => json_response(
                200,
                &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-gatehouse-testkit",
                        "gitCommit": "testkit", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                        "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64"}),
            ),
            ["api"] => json_response(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}]}),
            ),
            ["apis"] => json_response(200, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})),
            ["api", "v1"] => json_response(200, &resource_list()),
            ["api", "v1", rest @ ..] => {
                let (watch_prefix, rest) = match rest {
                    ["watch", rest @ ..] => (true, rest),
                    _ => (false, rest),
                };
                let (resource, namespace, name) = match rest {
                    ["namespaces"] => ("namespaces", None, None),
                    ["namespaces", ns] => ("namespaces", None, Some(*ns)),
                    ["namespaces", ns, resource] => (*resource, Some(*ns), None),
                    ["namespaces", ns, resource, name] => (*resource, Some(*ns), Some(*name)),
                    [resource] => (*resource, None, None),
                    _ => return status(404, "NotFound", "the server could not find the requested resource"),
                };
                if !RESOURCES.iter().any(|(r, _, _)| *r == resource) {
                    return status(404, "NotFound", "the server could not find the requested resource");
                }
                let watch = watch_prefix || matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
                self.resource(
                    &method,
                    resource,
                    namespace,
                    name,
                    watch,
                    &query,
                    &format,
                    &content_type,
                    body,
                )
                .await
            }
            _ => status(404, "NotFound", "the server could not find the requested resource"),
        }
    }

    #[allow(clippy::too_many_arguments)] // one request's parts, routed once
    async fn resource(
        self: Arc<Self>,
        method: &Method,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
        watch: bool,
        query: &BTreeMap<String, String>,
        format: &Format,
        content_type: &str,
        body: Bytes,
    ) -> Response<Body> {
        let ns = if resource == "namespaces" {
            ""
        } else {
            namespace.unwrap_or("")
        };
        let name = name.map(str::to_string).or_else(|| {
            query
                .get("fieldSelector")
                .and_then(|s| s.strip_prefix("metadata.name="))
                .map(str::to_string)
        });
        let key = |n: &str| (resource.to_string(), ns.to_string(), n.to_string());
        match (method.as_str(), watch, name.as_deref()) {
            ("GET", true, _) => self.watch(resource, namespace.map(str::to_string), name, query, format),
            ("GET", false, None) => {
                let items: Vec<Value> = lock(&self.store)
                    .objects
                    .iter()
                    .filter(|((r, n, _), _)| r == resource && (namespace.is_none() || n == ns))
                    .map(|(_, o)| o.clone())
                    .collect();
                let version = lock(&self.store).version.to_string();
                let value = if format.table {
                    table(resource, &items, &format.include_object, &version)
                } else {
                    let kind = RESOURCES
                        .iter()
                        .find(|(r, _, _)| *r == resource)
                        .map(|(_, k, _)| *k)
                        .unwrap_or("");
                    json!({"kind": format!("{kind}List"), "apiVersion": "v1",
                           "metadata": {"resourceVersion": version}, "items": items})
                };
                encode(&value, format)
            }
            ("GET", false, Some(n)) => match lock(&self.store).objects.get(&key(n)) {
                Some(object) if format.table => {
                    let version = object["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
                    encode(
                        &table(resource, std::slice::from_ref(object), &format.include_object, &version),
                        format,
                    )
                }
                Some(object) => encode(object, format),
                None => status(404, "NotFound", &format!("{resource} \"{n}\" not found")),
            },
            ("POST", false, None) => match serde_json::from_slice::<Value>(&body) {
                Ok(object) => match self.write(resource, ns, object, true) {
                    Ok(created) => encode_code(201, &created, format),
                    Err((code, message)) => {
                        status(code, if code == 409 { "AlreadyExists" } else { "Invalid" }, &message)
                    }
                },
                Err(e) => status(400, "BadRequest", &format!("bad JSON: {e}")),
            },
            ("PUT", false, Some(_)) => match serde_json::from_slice::<Value>(&body) {
                Ok(object) => match self.write(resource, ns, object, false) {
                    Ok(updated) => encode(&updated, format),
                    Err((code, message)) => status(code, "Invalid", &message),
                },
                Err(e) => status(400, "BadRequest", &format!("bad JSON: {e}")),
            },
            ("PATCH", false, Some(n)) => {
                if !content_type.starts_with("application/merge-patch+json")
                    && !content_type.starts_with("application/strategic-merge-patch+json")
                {
                    return status(415, "UnsupportedMediaType", "the test server speaks merge patches only");
                }
                let Some(mut object) = lock(&self.store).objects.get(&key(n)).cloned() else {
                    return status(404, "NotFound", &format!("{resource} \"{n}\" not found"));
                };
                let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                    return status(400, "BadRequest", "bad patch");
                };
                merge_patch(&mut object, &patch);
                match self.write(resource, ns, object, false) {
                    Ok(patched) => encode(&patched, format),
                    Err((code, message)) => status(code, "Invalid", &message),
                }
            }
            ("DELETE", false, Some(n)) => {
                let mut store = lock(&self.store);
                let removed = store.objects.remove(&key(n));
                match removed {
                    Some(object) => {
                        store.version += 1;
                        let version = store.version;
                        self.emit(version, resource, ns, json!({"type": "DELETED", "object": object}));
                        drop(store);
                        encode(&object, format)
                    }
                    None => status(404, "NotFound", &format!("{resource} \"{n}\" not found")),
                }
            }
            _ => status(405, "MethodNotAllowed", "the test server does not serve this request"),
        }
    }

    fn watch(
        self: Arc<Self>,
        resource: &str,
        namespace: Option<String>,
        name: Option<String>,
        query: &BTreeMap<String, String>,
        format: &Format,
    ) -> Response<Body> {
        let mut events = self.events.subscribe();
        let matches = {
            let resource = resource.to_string();
            move |r: &str, ns: &str, object: &Value| {
                r == resource
                    && namespace.as_deref().is_none_or(|n| n == ns || r == "namespaces")
                    && name.as_deref().is_none_or(|n| object["metadata"]["name"] == n)
            }
        };
        let since: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let (initial, mut replayed): (Vec<Value>, u64) = if since == 0 {
            let store = lock(&self.store);
            let events = store
                .objects
                .iter()
                .filter(|((r, ns, _), o)| matches(r, ns, o))
                .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                .collect();
            (events, store.version)
        } else {
            let history = lock(&self.history);
            let events = history
                .iter()
                .filter(|(v, r, ns, e)| *v > since && matches(r, ns, &e["object"]))
                .map(|(_, _, _, e)| e.clone())
                .collect();
            (events, history.last().map_or(since, |e| e.0))
        };
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let table_of = format
            .table
            .then(|| (resource.to_string(), format.include_object.clone()));
        let render = move |mut event: Value| {
            if let Some((resource, include)) = &table_of {
                let version = event["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                event["object"] = table(resource, std::slice::from_ref(&event["object"]), include, &version);
            }
            let mut line = event.to_string().into_bytes();
            line.push(b'\n');
            Bytes::from(line)
        };
        // `timeoutSeconds` ends the watch, as the API server does.
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map_or(std::time::Duration::MAX / 4, std::time::Duration::from_secs);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, async move {
                for event in initial {
                    if tx.send(render(event)).await.is_err() {
                        return;
                    }
                }
                loop {
                    match events.recv().await {
                        Ok((version, r, ns, event)) => {
                            if version <= replayed {
                                continue;
                            }
                            replayed = version;
                            if matches(&r, &ns, &event["object"]) && tx.send(render(event)).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
            .await;
        });
        let mut response = Response::new(ChannelBody(rx).boxed());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// A streaming body fed by a channel (watch events).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

fn encode(value: &Value, format: &Format) -> Response<Body> {
    encode_code(200, value, format)
}

/// JSON, gzip when the client accepts it, or the protobuf envelope when asked first for it:
/// a stand-in (magic `k8s\0` + the object's raw bytes) that carries the values as a real
/// protobuf answer would, so a test sees whether it passed through.
fn encode_code(code: u16, value: &Value, format: &Format) -> Response<Body> {
    if format.protobuf {
        let mut bytes = b"k8s\0".to_vec();
        bytes.extend_from_slice(value.to_string().as_bytes());
        return bytes_response(code, "application/vnd.kubernetes.protobuf", bytes.into());
    }
    let text = value.to_string();
    if format.gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if encoder.write_all(text.as_bytes()).is_ok()
            && let Ok(compressed) = encoder.finish()
        {
            let mut response = bytes_response(code, "application/json", compressed.into());
            response
                .headers_mut()
                .insert(header::CONTENT_ENCODING, header::HeaderValue::from_static("gzip"));
            return response;
        }
    }
    bytes_response(code, "application/json", text.into())
}

pub(crate) fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(hex), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 7386 JSON merge patch (strategic merge patches of the maps tests use are the same).
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn resource_list() -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|(name, kind, namespaced)| {
            json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced, "kind": kind,
                   "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                   "shortNames": match *name { "namespaces" => vec!["ns"], "pods" => vec!["po"], "configmaps" => vec!["cm"], _ => vec![] }})
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": resources})
}

/// A `meta.k8s.io/v1` Table with the columns `kubectl get` prints for `resource`.
fn table(resource: &str, items: &[Value], include_object: &str, version: &str) -> Value {
    let column = |name: &str, kind: &str, priority: u8| {
        json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" },
               "description": "", "priority": priority})
    };
    let columns = match resource {
        "pods" => vec![
            column("Name", "string", 0),
            column("Ready", "string", 0),
            column("Status", "string", 0),
            column("Restarts", "string", 0),
            column("Age", "string", 0),
            column("Image", "string", 1),
        ],
        "secrets" => vec![
            column("Name", "string", 0),
            column("Type", "string", 0),
            column("Data", "integer", 0),
            column("Age", "string", 0),
        ],
        "configmaps" => vec![
            column("Name", "string", 0),
            column("Data", "integer", 0),
            column("Age", "string", 0),
        ],
        _ => vec![
            column("Name", "string", 0),
            column("Status", "string", 0),
            column("Age", "string", 0),
        ],
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let name = o["metadata"]["name"].clone();
            let count = |key: &str| o[key].as_object().map_or(0, |m| m.len());
            let cells = match resource {
                "pods" => json!([
                    name,
                    "1/1",
                    o["status"]["phase"],
                    "0",
                    "1m",
                    o["spec"]["containers"][0]["image"]
                ]),
                "secrets" => json!([name, o["type"], count("data") + count("stringData"), "1m"]),
                "configmaps" => json!([name, count("data"), "1m"]),
                _ => json!([name, o["status"]["phase"], "1m"]),
            };
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => {
                    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
                }
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": version},
           "columnDefinitions": columns, "rows": rows})
}
