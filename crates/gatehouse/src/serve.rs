//! `gatehouse serve` and `gatehouse check-config`: load and validate everything, then bind
//! the listeners and run until SIGINT or SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gatehouse_audit::{AuditEvent, AuditLog};
use gatehouse_core::{Gateway, GatewayParts};
use gatehouse_identity::{DevIssuer, Verifier};
use gatehouse_policy::PolicyEngine;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError};

/// Loads the config and the policies it names; both must be valid before anything binds.
fn load(path: &Path) -> anyhow::Result<(Config, PolicyEngine)> {
    let config = Config::load(path)?;
    let policy = PolicyEngine::load(&config.policy.dir).map_err(|e| ConfigError {
        path: config.policy.dir.display().to_string(),
        message: e.to_string(),
    })?;
    Ok((config, policy))
}

pub fn check_config(path: &Path) -> anyhow::Result<ExitCode> {
    let (config, policy) = load(path)?;
    Verifier::new(config.identity.issuers.clone()).map_err(|e| ConfigError {
        path: path.display().to_string(),
        message: format!("identity.issuers: {e}"),
    })?;
    if let Some(pg) = &config.postgres {
        pg.upstreams().map_err(|message| ConfigError {
            path: path.display().to_string(),
            message,
        })?;
    }
    if let Some(kube) = &config.kube {
        // The clusters' kubeconfigs (or service account) must load, as at start-up.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        for cluster in &kube.clusters {
            runtime
                .block_on(gatehouse_kube::upstream::Upstream::load(cluster))
                .map_err(|message| ConfigError {
                    path: path.display().to_string(),
                    message,
                })?;
        }
    }
    if let Some(ssh) = &config.ssh {
        ssh.check_files().map_err(|message| ConfigError {
            path: path.display().to_string(),
            message,
        })?;
    }
    println!(
        "{}: ok ({} policies, {} issuers{}, admin on {})",
        path.display(),
        policy.policy_count(),
        config.identity.issuers.len(),
        if config.identity.dev_issuer.enabled {
            " + development issuer"
        } else {
            ""
        },
        config.admin_url(),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let (config, policy) = load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(config, policy))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config, policy: PolicyEngine) -> anyhow::Result<()> {
    create_private_dir(&config.state_dir)?;
    let audit = AuditLog::open(&config.audit_dir(), config.audit.options()).context("cannot open the audit log")?;

    let mut verifier = Verifier::new(config.identity.issuers.clone()).context("identity.issuers")?;
    let dev = if config.identity.dev_issuer.enabled {
        let dev = DevIssuer::load_or_create(
            &config.state_dir,
            &config.admin_url(),
            &config.identity.dev_issuer.audience,
        )
        .context("cannot set up the development issuer")?;
        for issuer in dev.issuer_configs() {
            verifier = verifier
                .with_static_keys(issuer, dev.jwks())
                .context("development issuer")?;
        }
        tracing::warn!(users = %dev.user_issuer(), agents = %dev.agent_issuer(), "The development issuer is on: never use it in production.");
        Some(Arc::new(dev))
    } else {
        None
    };

    let policy = Arc::new(policy);
    let gateway = Gateway::new(GatewayParts {
        state_dir: config.state_dir.clone(),
        verifier,
        policy: Arc::clone(&policy),
        audit,
        targets: config.targets(),
        max_session_lifetime: config.session.max_lifetime,
        approval_timeout: config.approvals.default_timeout,
        approval_listener: approval_listener(&config)?,
    })?;
    match gateway.approvals().mark_orphans_withdrawn().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            withdrawn = n,
            "Approval requests left pending by the last run were withdrawn: their clients are gone."
        ),
        Err(error) => anyhow::bail!("cannot read the approval store: {error}"),
    }

    let tls = match (&config.admin.tls_cert, &config.admin.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key, &[b"http/1.1"])?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen = {}", config.admin.listen))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::warn!(%error, "Cannot listen for SIGHUP; policy reload on file change only.");
            None
        }
    };
    tokio::spawn(reload_policies(
        Arc::clone(&gateway),
        config.policy.reload_interval,
        hup,
        shutdown_rx.clone(),
    ));

    let mut frontends = Vec::new();
    if let Some(pg) = &config.postgres {
        let tls = match (&pg.tls_cert, &pg.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key, &[b"postgresql"])?),
            _ => None,
        };
        let rules = config.mask.rules().map_err(|message| ConfigError {
            path: "[mask]".into(),
            message,
        })?;
        let frontend = gatehouse_postgres::PostgresFrontend::new(Arc::clone(&gateway), pg, tls)
            .map_err(|message| ConfigError {
                path: "[postgres]".into(),
                message,
            })?
            .with_column_rules(rules);
        let listener = tokio::net::TcpListener::bind(pg.listen)
            .await
            .with_context(|| format!("cannot listen on postgres.listen = {}", pg.listen))?;
        tracing::info!(listen = %pg.listen, targets = pg.targets.len(), "PostgreSQL frontend listening.");
        frontends.push(tokio::spawn(Arc::new(frontend).serve(listener, shutdown_rx.clone())));
    }

    if let Some(kube) = &config.kube {
        frontends.push(start_kube(&gateway, kube, &config.recordings_dir(), shutdown_rx.clone()).await?);
    }
    let mut ssh_ca = None;
    if let Some(ssh) = &config.ssh {
        let frontend =
            gatehouse_ssh::SshFrontend::new(Arc::clone(&gateway), ssh, &config.state_dir).map_err(|message| {
                ConfigError {
                    path: "[ssh]".into(),
                    message,
                }
            })?;
        let listener = tokio::net::TcpListener::bind(ssh.listen)
            .await
            .with_context(|| format!("cannot listen on ssh.listen = {}", ssh.listen))?;
        tracing::info!(listen = %ssh.listen, targets = ssh.targets.len(), "SSH frontend listening.");
        ssh_ca = Some(frontend.ca());
        frontends.push(tokio::spawn(Arc::new(frontend).serve(listener, shutdown_rx.clone())));
    }

    let console = crate::console::Console::new(&config, Arc::clone(&gateway), dev.clone())?;
    let state = AdminState::new(Arc::clone(&gateway), dev)
        .with_ssh_ca(ssh_ca)
        .with_console(console);
    tracing::info!(admin = %config.admin_url(), policies = policy.policy_count(), "Gatehouse is serving.");
    let server = tokio::spawn(admin::serve(listener, tls, state, shutdown_rx));

    shutdown_signal().await;
    tracing::info!("Shutting down: no new connections, draining the open ones.");
    let _ = shutdown_tx.send(true);
    let drain = async {
        for frontend in frontends {
            let _ = frontend.await;
        }
        server.await
    };
    match tokio::time::timeout(Duration::from_secs(10), drain).await {
        Ok(joined) => joined.context("admin listener task")??,
        Err(_) => tracing::warn!("Connections still open after 10 s; closing them."),
    }
    Ok(())
}

/// Loads the clusters' credentials and starts the Kubernetes listener.
async fn start_kube(
    gateway: &Arc<Gateway>,
    kube: &gatehouse_kube::KubeConfig,
    recordings: &std::path::Path,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tls = match (&kube.tls_cert, &kube.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key, &[b"http/1.1"])?),
        _ => None,
    };
    let frontend = gatehouse_kube::KubeFrontend::new(Arc::clone(gateway), kube, tls, recordings)
        .await
        .map_err(|message| ConfigError {
            path: "[kube]".into(),
            message,
        })?;
    let listener = tokio::net::TcpListener::bind(kube.listen)
        .await
        .with_context(|| format!("cannot listen on kube.listen = {}", kube.listen))?;
    tracing::info!(listen = %kube.listen, clusters = kube.clusters.len(), "Kubernetes frontend listening.");
    Ok(tokio::spawn(Arc::new(frontend).serve(listener, shutdown)))
}

/// Reloads the policy set on SIGHUP and whenever the directory changes on disk. A bad new set
/// keeps the old one in force; `/readyz` and the audit log say why.
/// `hup` is installed before anything listens: SIGHUP's default action ends the process.
async fn reload_policies(
    gateway: Arc<Gateway>,
    interval: Duration,
    mut hup: Option<tokio::signal::unix::Signal>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = shutdown.changed() => return,
        };
        let policy = gateway.policy();
        if !forced && !policy.changed_on_disk() {
            continue;
        }
        let event = match policy.reload() {
            Ok(()) => {
                tracing::info!(
                    generation = policy.generation(),
                    policies = policy.policy_count(),
                    "Policies reloaded."
                );
                AuditEvent::PolicyReloaded {
                    generation: policy.generation(),
                    policies: policy.policy_count(),
                }
            }
            Err(error) => {
                tracing::error!(%error, "Policy reload failed; the previous set stays in force.");
                AuditEvent::PolicyReloadFailed {
                    error: error.to_string(),
                }
            }
        };
        if let Err(error) = gateway.audit().append(event).await {
            tracing::error!(%error, "Audit write of a policy reload failed.");
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create state_dir {}", dir.display()))
}

/// Webhooks for approval notifications, when any are configured.
fn approval_listener(config: &Config) -> anyhow::Result<Option<Arc<dyn gatehouse_core::ApprovalListener>>> {
    let approvals = &config.approvals;
    if approvals.webhooks.is_empty() {
        return Ok(None);
    }
    let by_group = approvals
        .webhooks
        .iter()
        .map(|w| (w.group.clone(), w.url.clone()))
        .collect();
    let link_base = approvals.link_base.clone().unwrap_or_else(|| config.admin_url());
    let hooks = crate::webhooks::Webhooks::new(by_group, link_base).context("approval webhooks")?;
    tracing::info!(
        groups = approvals.webhooks.len(),
        "Approval notifications go to webhooks."
    );
    Ok(Some(Arc::new(hooks)))
}
