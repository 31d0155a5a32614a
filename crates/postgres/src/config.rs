//! The `[postgres]` config section: the listener and the targets with the gateway's own
//! credentials for them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::upstream::{TlsMode, UpstreamConfig};

/// The PostgreSQL frontend.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// PEM certificate chain offered to clients that ask for SSL.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Accept clients without TLS. Only on a loopback listener (demos and tests): the
    /// client's token travels as the password.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Connections served at once; more wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has from connecting to being logged in, in seconds.
    #[serde(default = "default_auth_timeout")]
    pub auth_timeout_secs: u64,
    /// How long each target's answer about a function's volatility is kept, in seconds
    /// (0: ask the target for every statement that calls functions). A change made
    /// directly on the target (`CREATE OR REPLACE FUNCTION`) is seen after at most this.
    #[serde(default = "default_function_cache")]
    pub function_cache_secs: u64,
    /// Databases behind the gateway.
    #[serde(default)]
    pub targets: Vec<PostgresTarget>,
}

/// One database behind the gateway.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTarget {
    /// The database name clients ask for; unique across every protocol's targets.
    pub name: String,
    /// Where the target listens.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// The database to open on the target.
    pub database: String,
    /// The gateway's role on the target; never the client's.
    pub user: String,
    /// Environment variable holding the role's password.
    pub password_env: Option<String>,
    /// File holding the role's password (first line).
    pub password_file: Option<PathBuf>,
    /// `disable`, `require` or `verify-full` (default). Never silently downgraded.
    #[serde(default = "default_tls")]
    pub tls: String,
    /// CA certificates (PEM) for `verify-full`; the system's roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// Labels for policy (Cedar entity tags), e.g. `{ env = "prod" }`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_max_connections() -> usize {
    1024
}

fn default_auth_timeout() -> u64 {
    10
}

fn default_function_cache() -> u64 {
    60
}

fn default_port() -> u16 {
    5432
}

fn default_tls() -> String {
    "verify-full".into()
}

impl PostgresConfig {
    /// Makes relative paths relative to the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [&mut self.tls_cert, &mut self.tls_key].into_iter().flatten() {
            resolve(p);
        }
        for t in &mut self.targets {
            for p in [&mut t.password_file, &mut t.ca_file].into_iter().flatten() {
                resolve(p);
            }
        }
    }

    /// Checks that need no file system or environment. Messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        gatehouse_core::check_listener_tls(
            "postgres",
            self.listen,
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.allow_plaintext,
            "clients send their token as the password",
        )?;
        if self.max_connections == 0 {
            return Err("postgres.max_connections: must be at least 1".into());
        }
        if !(1..=300).contains(&self.auth_timeout_secs) {
            return Err("postgres.auth_timeout_secs: must be between 1 and 300".into());
        }
        if self.function_cache_secs > 3600 {
            return Err("postgres.function_cache_secs: must be at most 3600".into());
        }
        for (i, t) in self.targets.iter().enumerate() {
            let key = format!("postgres.targets[{i}] ({})", t.name);
            if t.name.is_empty() {
                return Err(format!("postgres.targets[{i}].name: must not be empty"));
            }
            tls_mode(&t.tls).map_err(|e| format!("{key}.tls: {e}"))?;
            match (&t.password_env, &t.password_file) {
                (Some(_), Some(_)) => return Err(format!("{key}: password_env and password_file exclude each other")),
                (None, None) => return Err(format!("{key}: set password_env or password_file")),
                _ => {}
            }
        }
        Ok(())
    }

    /// The upstream login of every target, reading passwords from the environment and files.
    pub fn upstreams(&self) -> Result<Vec<(String, UpstreamConfig)>, String> {
        self.targets
            .iter()
            .map(|t| {
                let password = match (&t.password_env, &t.password_file) {
                    (Some(var), _) => std::env::var(var)
                        .map_err(|_| format!("postgres.targets ({}).password_env: {var} is not set", t.name))?,
                    (None, Some(file)) => std::fs::read_to_string(file)
                        .map_err(|e| format!("postgres.targets ({}).password_file: {}: {e}", t.name, file.display()))?
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    (None, None) => return Err(format!("postgres.targets ({}): no password", t.name)),
                };
                Ok((
                    t.name.clone(),
                    UpstreamConfig {
                        host: t.host.clone(),
                        port: t.port,
                        database: t.database.clone(),
                        user: t.user.clone(),
                        password,
                        tls: tls_mode(&t.tls)?,
                        ca_file: t.ca_file.clone(),
                    },
                ))
            })
            .collect()
    }
}

fn tls_mode(s: &str) -> Result<TlsMode, String> {
    match s {
        "disable" => Ok(TlsMode::Disable),
        "require" => Ok(TlsMode::Require),
        "verify-full" => Ok(TlsMode::VerifyFull),
        other => Err(format!("{other:?} is not one of disable, require, verify-full")),
    }
}
