//! The PostgreSQL listener: answers SSLRequest with TLS, asks for the caller's token as a
//! cleartext password (inside TLS), opens a core session on the target named by the startup
//! database, logs in upstream with the gateway's own credential and hands the connection to
//! the relay with a gate that asks the core about every statement.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use gatehouse_core::{
    Completion, Gateway, HeldRequest, Protocol, Refusal as CoreRefusal, RefusalKind, Session, TargetFailure, Verdict,
    serve_connections, stopped,
};
use gatehouse_mask::{ColumnRules, DataClasses, MaskCounts, Masker, TableRef};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::catalog::{self, Catalog, Volatility};
use crate::classify::{self, Statement, StatementKind};
use crate::completion::Outcome;
use crate::config::PostgresConfig;
use crate::provenance::{ColumnTrace, Table};
use crate::relay::{self, ColumnMask, Gated, Refusal, StatementGate};
use crate::upstream::{self, UpstreamConfig};

const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
/// Startup packets are small; PostgreSQL itself caps them at 10,000 bytes.
const MAX_STARTUP_PACKET: usize = 10_000;
/// A password message carries a JWT: generous, but bounded.
const MAX_PASSWORD_MESSAGE: usize = 20_000;

/// Any client stream, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where a gateway-issued cancel key leads.
struct CancelTarget {
    upstream: UpstreamConfig,
    pid: i32,
    secret: i32,
    /// Counts CancelRequests; the connection's gate watches it to withdraw a held statement.
    cancels: Arc<watch::Sender<u64>>,
}

/// The PostgreSQL frontend, shared by every connection.
pub struct PostgresFrontend {
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    allow_plaintext: bool,
    upstreams: HashMap<String, UpstreamConfig>,
    /// Each target's function volatility, shared by its sessions.
    catalogs: HashMap<String, Arc<Catalog>>,
    cancels: Mutex<HashMap<(i32, i32), CancelTarget>>,
    max_connections: usize,
    auth_timeout: Duration,
    /// `[mask] columns`: which source columns hold which class.
    column_rules: Arc<ColumnRules>,
}

/// Why a connection ended before its session began; logged, never shown raw to the client.
#[derive(Debug, thiserror::Error)]
enum StartupError {
    #[error("client connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("client protocol violation: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
}

impl PostgresFrontend {
    /// `tls` is the listener's rustls config (from `tls_cert`/`tls_key`), if any.
    pub fn new(
        gateway: Arc<Gateway>,
        config: &PostgresConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, String> {
        let upstreams: HashMap<String, UpstreamConfig> = config.upstreams()?.into_iter().collect();
        let ttl = Duration::from_secs(config.function_cache_secs);
        let catalogs = upstreams
            .iter()
            .map(|(name, upstream)| (name.clone(), Arc::new(Catalog::new(upstream.clone(), ttl))))
            .collect();
        Ok(Self {
            gateway,
            tls: tls.map(TlsAcceptor::from),
            allow_plaintext: config.allow_plaintext,
            upstreams,
            catalogs,
            cancels: Mutex::new(HashMap::new()),
            max_connections: config.max_connections,
            auth_timeout: Duration::from_secs(config.auth_timeout_secs),
            column_rules: Arc::new(ColumnRules::default()),
        })
    }

    /// Masks result columns that read the columns `rules` name (the `[mask]` section), as
    /// well as those the built-in name hints recognise.
    pub fn with_column_rules(mut self, rules: ColumnRules) -> Self {
        self.column_rules = Arc::new(rules);
        self
    }

    /// Serves `listener` until `shutdown` turns true, then waits for open sessions to end.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let this = Arc::clone(&self);
        serve_connections(
            "postgres",
            listener,
            self.max_connections,
            shutdown,
            move |tcp, peer, shutdown| Arc::clone(&this).connection(tcp, peer, shutdown),
        )
        .await;
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, shutdown: watch::Receiver<bool>) {
        let mut stream: Box<dyn Io> = Box::new(tcp);
        let started = tokio::time::timeout(self.auth_timeout, self.startup(&mut stream, peer)).await;
        let (session, upstream_conn) = match started {
            Ok(Ok(Some(ready))) => ready,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                tracing::info!(client = %peer, %error, "PostgreSQL connection ended before its session began.");
                return;
            }
            Err(_) => {
                tracing::info!(client = %peer, "PostgreSQL client did not log in in time.");
                let _ = write_error(&mut stream, "FATAL", "08006", "authentication timed out").await;
                return;
            }
        };
        let span = tracing::info_span!("session", session = %session.id(), user = %session.identity().display_name(), target = %session.target().name, protocol = "postgres");
        let _entered = span.enter();
        let key = upstream_conn.1;
        let cancels = self
            .lock_cancels()
            .get(&key)
            .map(|t| t.cancels.subscribe())
            .unwrap_or_else(|| watch::Sender::new(0).subscribe());
        let catalog = self.catalogs.get(&session.target().name).cloned();
        let gate = SessionGate::new(
            session.clone(),
            session.masker().await.clone(),
            Arc::clone(&self.column_rules),
            cancels,
            catalog,
        );
        let mut shutdown = shutdown;
        let outcome = tokio::select! {
            r = relay::run(&mut stream, upstream_conn.0, &gate) => match r {
                Ok(_) => "client closed".to_string(),
                Err(error) => {
                    tracing::info!(%error, "Relay ended.");
                    error.to_string()
                }
            },
            _ = tokio::time::sleep(session.time_left()) => {
                let _ = write_error(&mut stream, "FATAL", "57P01", "terminating connection because the token or credential expired; reconnect with a fresh one").await;
                "token expired".to_string()
            }
            _ = stopped(&mut shutdown) => {
                let _ = write_error(&mut stream, "FATAL", "57P01", "terminating connection because the gateway is shutting down").await;
                "gateway shutdown".to_string()
            }
        };
        self.lock_cancels().remove(&key);
        gate.flush_masking().await;
        session.end(&outcome).await;
        let _ = stream.shutdown().await;
    }

    fn lock_cancels(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), CancelTarget>> {
        self.cancels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Startup and authentication. `None` when the connection was a cancel request or was
    /// refused with a message already sent.
    async fn startup(
        &self,
        stream: &mut Box<dyn Io>,
        peer: SocketAddr,
    ) -> Result<Option<(Session, (upstream::Upstream, (i32, i32)))>, StartupError> {
        let mut encrypted = false;
        let params = loop {
            let (code, body) = read_startup_packet(stream).await?;
            match code {
                SSL_REQUEST if !encrypted => match &self.tls {
                    Some(acceptor) => {
                        stream.write_all(b"S").await?;
                        stream.flush().await?;
                        let plain =
                            std::mem::replace(stream, Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())));
                        let tls = acceptor.accept(plain).await?;
                        *stream = Box::new(tls);
                        encrypted = true;
                    }
                    None => {
                        stream.write_all(b"N").await?;
                    }
                },
                // GSSAPI encryption is not offered: the client falls back (to SSL or plain).
                GSSENC_REQUEST => stream.write_all(b"N").await?,
                CANCEL_REQUEST => {
                    self.cancel(&body).await;
                    return Ok(None);
                }
                PROTOCOL_3_0 => break parse_params(&body)?,
                code if code >> 16 == 3 => {
                    // A newer 3.x minor: say we speak 3.0 and carry on (NegotiateProtocolVersion).
                    let params = parse_params(&body)?;
                    let unknown: Vec<&String> = params.keys().filter(|k| k.starts_with("_pq_.")).collect();
                    let mut msg = BytesMut::new();
                    msg.put_u8(b'v');
                    let len_at = msg.len();
                    msg.put_i32(0);
                    msg.put_i32(0);
                    msg.put_i32(i32::try_from(unknown.len()).unwrap_or(0));
                    for name in unknown {
                        msg.put_slice(name.as_bytes());
                        msg.put_u8(0);
                    }
                    let len = i32::try_from(msg.len() - len_at).unwrap_or(i32::MAX);
                    msg[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
                    stream.write_all(&msg).await?;
                    break params;
                }
                _ => {
                    write_error(stream, "FATAL", "0A000", "unsupported frontend protocol").await?;
                    return Err(StartupError::Protocol(format!("startup code {code}")));
                }
            }
        };
        let user = params.get("user").cloned().unwrap_or_default();
        let database = params.get("database").cloned().unwrap_or_else(|| user.clone());
        if params
            .get("replication")
            .is_some_and(|r| !matches!(r.as_str(), "false" | "off" | "no" | "0"))
        {
            write_error(
                stream,
                "FATAL",
                "0A000",
                "gatehouse does not relay replication connections",
            )
            .await?;
            return Err(StartupError::Refused("replication connection".into()));
        }
        if !encrypted && !self.allow_plaintext {
            write_error(
                stream,
                "FATAL",
                "28000",
                "gatehouse requires an encrypted connection: connect with sslmode=require or stronger",
            )
            .await?;
            return Err(StartupError::Refused("plaintext connection".into()));
        }

        // AuthenticationCleartextPassword: the password is the OIDC token or a ghc_ credential.
        stream.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
        stream.flush().await?;
        let secret = read_password(stream).await?;
        let session = match self.gateway.connect(&secret, Protocol::Postgres, &database, peer).await {
            Ok(s) => s,
            Err(refusal) => {
                tracing::info!(client = %peer, user, database, kind = ?refusal.kind, "PostgreSQL login refused.");
                // One message for a bad token, an unknown target and a denied connect, as
                // PostgreSQL words a failed password login.
                let message = match refusal.kind {
                    RefusalKind::Unavailable => refusal.message.clone(),
                    _ => format!("password authentication failed for user \"{user}\""),
                };
                write_error(stream, "FATAL", "28000", &message).await?;
                return Ok(None);
            }
        };
        tracing::info!(client = %peer, session = %session.id(), user = %session.identity().display_name(), startup_user = user, target = database, "PostgreSQL session opened.");
        let Some(config) = self.upstreams.get(&database) else {
            // The core knows the target, so config wiring guarantees an upstream for it.
            session.end("no upstream configured").await;
            write_error(
                stream,
                "FATAL",
                "28000",
                &format!("password authentication failed for user \"{user}\""),
            )
            .await?;
            return Ok(None);
        };
        let upstream_conn =
            match tokio::time::timeout(Duration::from_secs(10), upstream::Upstream::connect(config)).await {
                Ok(Ok(u)) => u,
                Ok(Err(error)) => {
                    tracing::warn!(session = %session.id(), %error, "Target login failed.");
                    session.target_error(error.to_string()).await;
                    session.end("target unreachable").await;
                    write_error(
                        stream,
                        "FATAL",
                        "08001",
                        &format!("gatehouse could not log in to target \"{database}\""),
                    )
                    .await?;
                    return Ok(None);
                }
                Err(_) => {
                    session.target_error("login to the target timed out").await;
                    session.end("target unreachable").await;
                    write_error(
                        stream,
                        "FATAL",
                        "08001",
                        &format!("gatehouse could not reach target \"{database}\" in time"),
                    )
                    .await?;
                    return Ok(None);
                }
            };

        // The client sees a normal server: AuthenticationOk, the target's parameters, the
        // gateway's own cancel key, ReadyForQuery.
        let key = self.register_cancel(config, upstream_conn.backend_key);
        let mut out = BytesMut::new();
        crate::wire::put_login_ok(&mut out, &upstream_conn.params, key);
        stream.write_all(&out).await?;
        stream.flush().await?;
        Ok(Some((session, (upstream_conn, key))))
    }

    fn register_cancel(&self, upstream: &UpstreamConfig, backend: (i32, i32)) -> (i32, i32) {
        let mut cancels = self.lock_cancels();
        loop {
            let mut raw = [0u8; 8];
            // Without entropy nothing else works either; a zero key is merely guessable.
            let _ = aws_lc_rs::rand::fill(&mut raw);
            let pid = i32::from_be_bytes([raw[0] & 0x7f, raw[1], raw[2], raw[3]]);
            let secret = i32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
            if let std::collections::hash_map::Entry::Vacant(slot) = cancels.entry((pid, secret)) {
                slot.insert(CancelTarget {
                    upstream: upstream.clone(),
                    pid: backend.0,
                    secret: backend.1,
                    cancels: Arc::new(watch::Sender::new(0)),
                });
                return (pid, secret);
            }
        }
    }

    /// CancelRequest: the client names the gateway's key; the gateway cancels the right
    /// upstream backend. Unknown keys are ignored, as PostgreSQL does.
    async fn cancel(&self, body: &[u8]) {
        let (Some(pid), Some(secret)) = (read_i32(body, 0), read_i32(body, 4)) else {
            return;
        };
        let target = self
            .lock_cancels()
            .get(&(pid, secret))
            .map(|t| (t.upstream.clone(), t.pid, t.secret, Arc::clone(&t.cancels)));
        let Some((config, pid, secret, cancels)) = target else {
            tracing::debug!("CancelRequest with an unknown key ignored.");
            return;
        };
        // A statement held for approval has not reached the target: withdraw it here.
        cancels.send_modify(|n| *n += 1);
        if let Err(error) = upstream::cancel(&config, pid, secret).await {
            tracing::warn!(%error, "Forwarding a cancel request failed.");
        }
    }
}

/// The gate the relay consults: each statement is one request through the core's
/// enforcement path; masking follows the session's per-class decisions.
struct SessionGate {
    session: Session,
    masker: Masker,
    /// The configured column rules (name hints read only their table-less ones).
    rules: Arc<ColumnRules>,
    /// The configured rules and those derived for the views this session's statements read
    /// (see [`SessionGate::resolve_views`]); only ever grows.
    view_rules: Mutex<Arc<ColumnRules>>,
    /// This session changed a view since its last COMMIT or ROLLBACK.
    view_changed: AtomicBool,
    /// Relation names already looked up as possible views: when, and in which generation
    /// of the catalog's answers (DDL starts a new one).
    views_seen: Mutex<HashMap<String, (Instant, u64)>>,
    /// Masking counts of the statement whose rows are streaming now, audited with its
    /// completion (what is left when the next request is decided or the session ends, e.g.
    /// from notices, is audited as `masking_applied` under the last decided request); and
    /// the data class each column name hints at, so a streaming result resolves its column
    /// names once, not once per cell.
    counts: Mutex<(u64, MaskCounts, HintCache)>,
    /// Changes with each CancelRequest for this connection: withdraws a held statement.
    cancels: watch::Receiver<u64>,
    /// The target's function volatility (`None` only if wiring lost it: fail closed).
    catalog: Option<Arc<Catalog>>,
    /// This session was allowed a statement that may change functions, perhaps in a
    /// transaction the catalog's side connection cannot see: user-defined functions are
    /// writes now.
    changed_functions: AtomicBool,
    /// Invalidate the catalog once more at the next batch, when the change has most
    /// likely been committed.
    invalidate_next: AtomicBool,
}

/// How deep views over views are followed.
const MAX_VIEW_DEPTH: usize = 8;

/// Relation names a session remembers having looked up (then it forgets them all).
const MAX_VIEWS_SEEN: usize = 4096;

/// Why a statement's function call makes it a write.
struct CallWrite {
    function: String,
    why: String,
    /// The catalog could not be asked.
    unverified: bool,
}

impl SessionGate {
    fn new(
        session: Session,
        masker: Masker,
        rules: Arc<ColumnRules>,
        cancels: watch::Receiver<u64>,
        catalog: Option<Arc<Catalog>>,
    ) -> Self {
        Self {
            session,
            masker,
            view_rules: Mutex::new(Arc::clone(&rules)),
            rules,
            views_seen: Mutex::new(HashMap::new()),
            view_changed: AtomicBool::new(false),
            counts: Mutex::new((0, MaskCounts::default(), HintCache::default())),
            cancels,
            catalog,
            changed_functions: AtomicBool::new(false),
            invalidate_next: AtomicBool::new(false),
        }
    }

    /// After a statement that created, replaced or dropped a view (or materialized view)
    /// ran, and again when its transaction ends, the catalog forgets its answers: every
    /// session looks its relations up again.
    fn views_may_have_changed(&self, tag: &str) {
        let Some(catalog) = &self.catalog else { return };
        if tag.contains("VIEW") {
            self.view_changed.store(true, Ordering::Relaxed);
            catalog.invalidate();
        } else if matches!(tag, "COMMIT" | "ROLLBACK") && self.view_changed.swap(false, Ordering::Relaxed) {
            catalog.invalidate();
        }
    }

    /// The configured column rules with those derived for views so far.
    fn current_rules(&self) -> Arc<ColumnRules> {
        Arc::clone(&self.view_rules.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Masking follows views: for each relation the statements read that the target's
    /// catalog knows as a view (or materialized view), and the views those read in turn,
    /// the view's definition is traced like a statement, and each view column that reads a
    /// column of a class gets a rule of that class (`schema.view.column`). Later results
    /// reading the view are then masked as its sources are. Each name is looked up once
    /// per catalog lifetime (the catalog's TTL; DDL empties it); a failed lookup leaves
    /// masking by name and content for that statement, and says so in the log.
    async fn resolve_views(&self, statements: &[Statement]) {
        let Some(catalog) = &self.catalog else { return };
        let generation = catalog.generation();
        let fresh = |(at, seen_in): &(Instant, u64)| *seen_in == generation && at.elapsed() < catalog.ttl();
        let mut names: Vec<String> = {
            let seen = self.views_seen.lock().unwrap_or_else(|p| p.into_inner());
            statements
                .iter()
                // Only reads and writes return rows (a CREATE VIEW's own tables do not).
                .filter(|s| matches!(s.kind, StatementKind::Read | StatementKind::Write))
                .flat_map(|s| &s.tables)
                .filter(|name| !seen.get(*name).is_some_and(fresh))
                .cloned()
                .collect()
        };
        if names.is_empty() {
            return;
        }
        names.sort_unstable();
        names.dedup();
        let mut views: Vec<(catalog::ViewRow, Arc<crate::provenance::Provenance>)> = Vec::new();
        let mut asked = std::collections::BTreeSet::new();
        let mut next = names.clone();
        for _ in 0..MAX_VIEW_DEPTH {
            next.retain(|name| asked.insert(name.clone()));
            if next.is_empty() {
                break;
            }
            let refs: Vec<&str> = next.iter().map(String::as_str).collect();
            let found = match catalog.views(&refs).await {
                Ok(found) => found,
                // Failed again within the retry pause: said already.
                Err(error @ catalog::CatalogError::Recent(_)) => {
                    tracing::debug!(%error, tables = ?refs, "No view lookup: the target's catalog failed just now.");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, tables = ?refs, "Cannot ask the target's catalog which of these are views; their columns are masked by name and content only.");
                    return;
                }
            };
            next.clear();
            for view in found {
                if views.iter().any(|(v, _)| *v == view) {
                    continue;
                }
                match classify::classify(&view.definition) {
                    Ok(parsed) => {
                        for statement in parsed {
                            next.extend(statement.tables.iter().cloned());
                            views.push((view.clone(), statement.provenance));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, view = %format!("{}.{}", view.schema, view.name), "Cannot parse a view's definition; its columns are masked by name and content only.");
                    }
                }
            }
        }
        {
            let mut seen = self.views_seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() > MAX_VIEWS_SEEN {
                seen.clear();
            }
            let now = Instant::now();
            for name in names {
                seen.insert(name, (now, generation));
            }
        }
        if views.is_empty() {
            return;
        }
        // A view over another view needs that one's rules first: derive until nothing new.
        let mut rules = (*self.current_rules()).clone();
        let mut changed = false;
        for _ in 0..=MAX_VIEW_DEPTH {
            let mut added = false;
            for (view, provenance) in &views {
                let columns: Vec<&str> = view.columns.iter().map(String::as_str).collect();
                let traces = provenance.trace_columns(&columns, &rules);
                for (column, trace) in columns.iter().zip(traces) {
                    let Some(trace) = trace else { continue };
                    for class in trace.classes.union(trace.row_classes).iter() {
                        added |= rules.add(&view.schema, &view.name, column, class);
                    }
                }
            }
            if !added {
                break;
            }
            changed = true;
        }
        if changed {
            *self.view_rules.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        }
    }

    /// For each statement, the function call that makes it a write, if any: the one async
    /// step between classification and the decision, taken only for statements that would
    /// otherwise be reads and call functions. Empty (no allocation, no lookup) when no
    /// statement needs the catalog, as for a plain `SELECT ... WHERE aid = 1`.
    async fn function_writes(&self, statements: &[Statement]) -> Vec<Option<CallWrite>> {
        let changes = statements.iter().any(may_change_functions);
        if let Some(catalog) = &self.catalog {
            if changes {
                self.invalidate_next.store(true, Ordering::Relaxed);
                catalog.invalidate();
            } else if self.invalidate_next.load(Ordering::Relaxed)
                && self.invalidate_next.swap(false, Ordering::Relaxed)
            {
                catalog.invalidate();
            }
        }
        let mut asked: Vec<&str> = statements
            .iter()
            .filter(|s| catalog::needs_catalog(s))
            .flat_map(|s| s.functions.iter().map(String::as_str))
            .collect();
        if asked.is_empty() {
            return Vec::new();
        }
        asked.sort_unstable();
        asked.dedup();
        let mut failure = None;
        let answers = match &self.catalog {
            // The same string changes functions before these calls run: no answer holds.
            _ if changes => HashMap::new(),
            None => {
                failure = Some("no catalog for this target".to_owned());
                HashMap::new()
            }
            Some(catalog) => match catalog.lookup(&asked).await {
                Ok(answers) => answers,
                Err(error) => {
                    tracing::warn!(%error, "Function volatility lookup failed; calls are decided as writes.");
                    failure = Some(error.to_string());
                    HashMap::new()
                }
            },
        };
        let distrust = self.changed_functions.load(Ordering::Relaxed);
        statements
            .iter()
            .map(|s| {
                if !catalog::needs_catalog(s) {
                    return None;
                }
                let function = catalog::first_writing_call(s, &answers, distrust)?.to_owned();
                let why = match (&failure, answers.get(&function)) {
                    (Some(error), _) => format!(
                        "gatehouse cannot verify that {function}() is free of side effects: the target's catalog could not be asked ({error}); the statement was decided as a write"
                    ),
                    _ if changes => format!(
                        "{function}() is called in a query string that changes functions; the statement was decided as a write"
                    ),
                    (None, Some(Volatility::Free)) => format!(
                        "{function}() is user-defined and this session changed functions; the statement was decided as a write"
                    ),
                    (None, Some(Volatility::Unknown) | None) => format!(
                        "the target's catalog knows no function {function}(); the statement was decided as a write"
                    ),
                    (None, Some(_)) => format!(
                        "{function}() is VOLATILE in the target's catalog (it may modify data); the statement was decided as a write"
                    ),
                };
                Some(CallWrite {
                    function,
                    why,
                    unverified: failure.is_some(),
                })
            })
            .collect()
    }

    async fn flush_masking(&self) {
        let (request, counts) = {
            let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let request = guard.0;
            (request, std::mem::take(&mut guard.1))
        };
        self.session.record_masking(request, &counts);
    }
}

/// Column names seen in this session and the data classes each announces
/// ([`gatehouse_mask::column_hint`] and the rules that name a column without a table); a
/// handful of entries, searched in order.
#[derive(Default)]
struct HintCache(Vec<(String, DataClasses)>);

impl HintCache {
    /// Past this many distinct names, hints are resolved each time (still correct, slower).
    const MAX: usize = 64;

    fn hint(&mut self, column: &str, rules: &ColumnRules) -> DataClasses {
        if let Some((_, hint)) = self.0.iter().find(|(name, _)| name == column) {
            return *hint;
        }
        let hint = DataClasses::EMPTY
            .with_opt(gatehouse_mask::column_hint(column))
            .union(rules.bare_column_classes(column));
        if self.0.len() < Self::MAX {
            self.0.push((column.to_owned(), hint));
        }
        hint
    }
}

impl SessionGate {
    /// The JSON of whole table rows, masked key by key: a key is masked as the class its name
    /// announces or a rule on one of the tables gives it. `None` when `text` is not JSON.
    fn mask_row_json<'a>(&self, rows: &[Table], text: &'a str, counts: &mut MaskCounts) -> Option<Cow<'a, str>> {
        if !text.trim_start().starts_with(['{', '[']) {
            return None;
        }
        let mut json: serde_json::Value = serde_json::from_str(text).ok()?;
        let tables: Vec<TableRef<'_>> = rows.iter().map(Table::as_ref).collect();
        let rules = self.current_rules();
        let before = counts.total();
        let key_class = |key: &str| {
            let classes = DataClasses::EMPTY
                .with_opt(gatehouse_mask::column_hint(key))
                .union(rules.column_classes(&tables, key));
            self.masker.strictest(classes)
        };
        self.masker.mask_json_with(&mut json, counts, &key_class);
        if counts.total() == before {
            return Some(Cow::Borrowed(text));
        }
        Some(Cow::Owned(json.to_string()))
    }
}

fn action(kind: StatementKind) -> &'static str {
    match kind {
        StatementKind::Read => "read",
        StatementKind::Write => "write",
        StatementKind::Ddl => "ddl",
        StatementKind::Admin => "admin",
        // Transaction control and harmless session settings change no data; they are
        // decided (and audited) as reads, so a caller who may read may also BEGIN.
        StatementKind::Transaction | StatementKind::Session => "read",
    }
}

/// Statements that may create, replace, rename or drop functions (administration can, by
/// `DO`, extensions and the like): the target's cached volatility answers are dropped.
fn may_change_functions(statement: &Statement) -> bool {
    let tag = statement.tag.as_str();
    statement.kind == StatementKind::Admin
        || (statement.kind == StatementKind::Ddl
            && (["FUNCTION", "PROCEDURE", "ROUTINE", "AGGREGATE", "EXTENSION"]
                .iter()
                .any(|w| tag.contains(w))
                || matches!(tag, "RENAME" | "ALTER OBJECT SCHEMA")))
}

/// A refusal of a statement decided as a write because of a function call says so.
fn explained(mut r: Refusal, call: Option<&CallWrite>) -> Refusal {
    let Some(call) = call else { return r };
    if call.unverified {
        r.message = format!(
            "gatehouse cannot verify that {}() is free of side effects: {}",
            call.function, r.message
        );
    }
    r.detail = Some(match r.detail.take() {
        Some(detail) => format!("{}; {detail}", call.why),
        None => call.why.clone(),
    });
    r
}

fn refusal(r: CoreRefusal) -> Refusal {
    let detail = (!r.policies.is_empty()).then(|| format!("decided by policy {}", r.policies.join(", ")));
    let (sqlstate, hint) = match r.kind {
        RefusalKind::Denied | RefusalKind::ApprovalRequired { .. } => (
            "42501",
            Some(
                "the gateway's Cedar policies decide every statement: ask their owners for access (`gatehouse policy explain` shows why a request is refused)",
            ),
        ),
        RefusalKind::Expired | RefusalKind::Unauthenticated => ("28000", Some("connect again with a fresh token")),
        RefusalKind::Unavailable => ("58000", None),
    };
    Refusal {
        sqlstate: sqlstate.into(),
        message: r.message,
        detail,
        hint: hint.map(str::to_owned),
    }
}

impl StatementGate for SessionGate {
    type Grant = Vec<gatehouse_core::Permit>;
    /// Permits of the batch's allowed statements, the approval the rest waits for, and the
    /// cancel counter as it was when the hold began (a cancel from then on withdraws it).
    type Hold = (Vec<gatehouse_core::Permit>, HeldRequest, watch::Receiver<u64>);

    async fn decide(&self, sql: &str, statements: &[Statement]) -> Result<Gated<Self::Grant, Self::Hold>, Refusal> {
        self.flush_masking().await;
        let calls = self.function_writes(statements).await;
        self.resolve_views(statements).await;
        let audit_masker = Masker::all();
        let mut permits = Vec::with_capacity(statements.len());
        let mut needed = Vec::new();
        for (i, statement) in statements.iter().enumerate() {
            let call = calls.get(i).and_then(Option::as_ref);
            // Literals in the statement text may themselves be sensitive: the text that
            // policy sees and the audit log keeps is masked like a response would be.
            let mut ignored = MaskCounts::default();
            let text = audit_masker.mask_text(&statement.text, &mut ignored);
            let context = serde_json::json!({
                "statement_kind": statement.tag,
                "tables": statement.tables,
                "functions": statement.functions,
                "has_where": statement.has_where,
                "statement": text,
            });
            let kind = match call {
                Some(_) => StatementKind::Write,
                None => statement.kind,
            };
            match self
                .session
                .decide(action(kind), context)
                .await
                .map_err(|r| explained(refusal(r), call))?
            {
                Verdict::Permit(permit) => {
                    self.counts.lock().unwrap_or_else(|p| p.into_inner()).0 = permit.request();
                    permits.push(permit);
                }
                Verdict::NeedsApproval(n) => needed.push(n),
            }
        }
        // Not refused: the change may happen (held ones count, to stay on the safe side).
        if statements.iter().any(may_change_functions) {
            self.changed_functions.store(true, Ordering::Relaxed);
        }
        if needed.is_empty() {
            return Ok(Gated::Granted(permits));
        }
        // One approval covers the whole query string, shown to the approvers in full
        // (literals masked) and bound to its exact text.
        let mut ignored = MaskCounts::default();
        let shown = audit_masker.mask_text(sql, &mut ignored);
        let mut cancels = self.cancels.clone();
        cancels.mark_unchanged();
        let held = self
            .session
            .hold(needed, &shown, sql.as_bytes())
            .await
            .map_err(refusal)?;
        Ok(Gated::Held {
            notice: held.notice(),
            hold: (permits, held, cancels),
        })
    }

    async fn wait(&self, (mut permits, held, mut cancels): Self::Hold) -> Result<Self::Grant, Refusal> {
        let cancelled = AtomicBool::new(false);
        let cancel = async {
            if cancels.changed().await.is_ok() {
                cancelled.store(true, Ordering::Relaxed);
            } else {
                // The frontend dropped the connection's entry: nobody can cancel any more.
                std::future::pending::<()>().await;
            }
        };
        match held.wait_or_cancel(cancel).await {
            Ok(more) => {
                if let Some(last) = more.last() {
                    self.counts.lock().unwrap_or_else(|p| p.into_inner()).0 = last.request();
                }
                permits.extend(more);
                Ok(permits)
            }
            Err(r) if cancelled.load(Ordering::Relaxed) => Err(Refusal {
                sqlstate: "57014".into(),
                message: "canceling statement due to user request".into(),
                detail: Some(r.message),
                hint: None,
            }),
            Err(r) => Err(refusal(r)),
        }
    }

    fn mask_value<'a>(&self, column: &str, value: &'a [u8]) -> Cow<'a, [u8]> {
        if self.masker.is_noop() {
            return Cow::Borrowed(value);
        }
        let Ok(text) = std::str::from_utf8(value) else {
            return Cow::Borrowed(value);
        };
        let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (_, counts, hints) = &mut *guard;
        let class = self.masker.strictest(hints.hint(column, &self.rules));
        match self.masker.mask_hinted(class, text, counts) {
            Cow::Borrowed(_) => Cow::Borrowed(value),
            Cow::Owned(masked) => Cow::Owned(masked.into_bytes()),
        }
    }

    fn column_rules(&self) -> Arc<ColumnRules> {
        self.current_rules()
    }

    /// A value derived from sources of several classes is masked as the most sensitive one
    /// the session may not see; the JSON of whole rows key by key.
    fn mask_traced<'a>(&self, _column: &str, trace: &ColumnTrace, value: &'a [u8]) -> Cow<'a, [u8]> {
        if self.masker.is_noop() {
            return Cow::Borrowed(value);
        }
        let Ok(text) = std::str::from_utf8(value) else {
            return Cow::Borrowed(value);
        };
        let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let counts = &mut guard.1;
        let direct = self.masker.strictest(trace.classes);
        let masked = match direct {
            None if !trace.rows.is_empty() => match self.mask_row_json(&trace.rows, text, counts) {
                Some(json) => json,
                None => self
                    .masker
                    .mask_hinted(self.masker.strictest(trace.row_classes), text, counts),
            },
            class => self.masker.mask_hinted(class, text, counts),
        };
        match masked {
            Cow::Borrowed(_) => Cow::Borrowed(value),
            Cow::Owned(masked) => Cow::Owned(masked.into_bytes()),
        }
    }

    /// `mask_value` and `mask_traced` with the column's class resolved once: the same class,
    /// the same masker. The JSON of whole rows stays on `mask_traced`.
    fn column_mask(&self, column: &str, trace: Option<&ColumnTrace>) -> Option<ColumnMask> {
        let class = match trace {
            _ if self.masker.is_noop() => None,
            None => {
                let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
                self.masker.strictest(guard.2.hint(column, &self.rules))
            }
            Some(trace) => match self.masker.strictest(trace.classes) {
                None if !trace.rows.is_empty() => return None,
                class => class,
            },
        };
        Some(ColumnMask {
            masker: self.masker.clone(),
            class,
        })
    }

    fn add_masked(&self, counts: &MaskCounts) {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).1.merge(counts);
    }

    fn count_nulled(&self, trace: &ColumnTrace) {
        // A whole row without rules has no class to count it under.
        if let Some(class) = self.masker.strictest(trace.classes.union(trace.row_classes)) {
            let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            guard.1.add(class, 1);
        }
    }

    fn masks_traced(&self, trace: &ColumnTrace) -> bool {
        !self.masker.is_noop()
            && (!trace.rows.is_empty() || self.masker.strictest(trace.classes.union(trace.row_classes)).is_some())
    }

    /// Statements are decided in order, one request each, so a batch's requests are
    /// consecutive from its smallest (a held batch's permits come back allowed-first).
    fn first_request(&self, grant: &Self::Grant) -> Option<u64> {
        grant.iter().map(gatehouse_core::Permit::request).min()
    }

    fn recording(&self) -> bool {
        self.session.recording()
    }

    /// One `statement_completed` record, not awaited: the masking counts of the answer, the
    /// target's error and the parameters with every detector applied, like the statement
    /// text of the decision record.
    fn completed(&self, request: u64, outcome: Outcome<'_>) {
        let masked = std::mem::take(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner()).1);
        let audit_masker = Masker::all();
        let mut ignored = MaskCounts::default();
        let error = outcome.error.map(|e| TargetFailure {
            code: e.code.to_owned(),
            message: audit_masker.mask_text(e.message, &mut ignored).into_owned(),
        });
        let parameters = outcome
            .parameters
            .into_iter()
            .map(|p| p.map(|value| audit_parameter(&audit_masker, value)))
            .collect();
        let completion = Completion {
            request,
            duration: outcome.duration,
            command_tag: outcome.command_tag.map(str::to_owned),
            rows: outcome.rows,
            error,
            parameters,
            suspended: outcome.suspended,
        };
        self.session.record_completion(completion, &masked);
        if let Some(tag) = outcome.command_tag {
            self.views_may_have_changed(tag);
        }
    }
}

/// Parameters longer than this are recorded by size only (masking them would cost more
/// than the statement).
const MAX_AUDITED_PARAMETER: usize = 64 * 1024;

/// Masked parameters are cut to this many bytes in the record.
const AUDITED_PARAMETER_PREFIX: usize = 1024;

/// A parameter's text for the audit: masked by every detector, then cut to a prefix.
fn audit_parameter(masker: &Masker, value: String) -> String {
    if value.len() > MAX_AUDITED_PARAMETER {
        return format!("<text, {} bytes>", value.len());
    }
    let mut ignored = MaskCounts::default();
    let mut text = match masker.mask_text(&value, &mut ignored) {
        Cow::Borrowed(_) => value,
        Cow::Owned(masked) => masked,
    };
    if text.len() > AUDITED_PARAMETER_PREFIX {
        let mut cut = AUDITED_PARAMETER_PREFIX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let len = text.len();
        text.truncate(cut);
        text.push_str(&format!("... ({len} bytes)"));
    }
    text
}

/// Resolves once the shutdown flag turns true (or its sender is gone).
async fn read_startup_packet(stream: &mut Box<dyn Io>) -> Result<(i32, Vec<u8>), StartupError> {
    let len = stream.read_i32().await?;
    let len = usize::try_from(len).map_err(|_| StartupError::Protocol("negative packet length".into()))?;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(StartupError::Protocol(format!("startup packet of {len} bytes")));
    }
    let code = stream.read_i32().await?;
    let mut body = vec![0u8; len - 8];
    stream.read_exact(&mut body).await?;
    Ok((code, body))
}

fn parse_params(body: &[u8]) -> Result<HashMap<String, String>, StartupError> {
    let mut params = HashMap::new();
    let mut fields = body.split(|b| *b == 0);
    while let Some(name) = fields.next() {
        if name.is_empty() {
            break;
        }
        let value = fields
            .next()
            .ok_or_else(|| StartupError::Protocol("startup parameter without a value".into()))?;
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec()).map_err(|_| StartupError::Protocol("startup parameter is not UTF-8".into()))
        };
        params.insert(text(name)?, text(value)?);
    }
    Ok(params)
}

async fn read_password(stream: &mut Box<dyn Io>) -> Result<String, StartupError> {
    let tag = stream.read_u8().await?;
    if tag != b'p' {
        return Err(StartupError::Protocol(format!(
            "expected a password message, got {:?}",
            tag as char
        )));
    }
    let len = usize::try_from(stream.read_i32().await?).unwrap_or(0);
    if !(5..=MAX_PASSWORD_MESSAGE).contains(&len) {
        write_error(stream, "FATAL", "08P01", "invalid password message length").await?;
        return Err(StartupError::Protocol(format!("password message of {len} bytes")));
    }
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await?;
    if body.last() == Some(&0) {
        body.pop();
    }
    String::from_utf8(body).map_err(|_| StartupError::Protocol("password is not UTF-8".into()))
}

fn read_i32(body: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?))
}

/// An ErrorResponse (severity, SQLSTATE, message), flushed.
async fn write_error<S: AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    severity: &str,
    code: &str,
    message: &str,
) -> std::io::Result<()> {
    let mut body = BytesMut::new();
    for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
        body.put_u8(field);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut msg = BytesMut::with_capacity(body.len() + 5);
    msg.put_u8(b'E');
    msg.put_i32(i32::try_from(body.len() + 4).unwrap_or(i32::MAX));
    msg.put_slice(&body);
    stream.write_all(&msg).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_cache_answers_as_column_hint_does_and_stays_bounded() {
        let mut cache = HintCache::default();
        let rules = ColumnRules::default();
        let hint = |name: &str| DataClasses::EMPTY.with_opt(gatehouse_mask::column_hint(name));
        let names = [
            "email",
            "customer_email",
            "note",
            "card_number",
            "api_key",
            "Email",
            "id",
        ];
        for _ in 0..3 {
            for name in names {
                assert_eq!(cache.hint(name, &rules), hint(name), "{name}");
            }
        }
        assert_eq!(cache.0.len(), names.len());
        for i in 0..200 {
            let name = format!("col_{i}_email");
            assert_eq!(cache.hint(&name, &rules), hint(&name));
        }
        assert_eq!(cache.0.len(), HintCache::MAX);
        assert_eq!(cache.hint("ssn", &rules), hint("ssn"));
    }

    #[test]
    fn hint_cache_adds_rules_that_name_a_column_in_any_table() {
        let rules = gatehouse_mask::MaskConfig {
            columns: [("ssn_last4", "ssn"), ("people.full_name", "secret")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
        .rules()
        .unwrap();
        let mut cache = HintCache::default();
        assert_eq!(
            cache.hint("SSN_LAST4", &rules),
            DataClasses::EMPTY.with(gatehouse_mask::DataClass::Ssn)
        );
        // A `table.column` rule needs the table: the relay's trace knows it, a name alone does not.
        assert!(cache.hint("full_name", &rules).is_empty());
        assert_eq!(
            cache.hint("email", &rules),
            DataClasses::EMPTY.with(gatehouse_mask::DataClass::Email)
        );
    }
}
