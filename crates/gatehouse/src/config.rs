//! The one TOML config file. Each section is typed and documented; unknown keys are errors;
//! [`Config::load`] validates everything before the gateway binds a single port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_identity::IssuerConfig;
use serde::Deserialize;

/// The whole gateway configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Audit log, recordings, embedded store and keys live here. Relative paths in this file
    /// are relative to the file's own directory.
    pub state_dir: PathBuf,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub audit: gatehouse_audit::AuditConfig,
    #[serde(default)]
    pub session: SessionConfig,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// The web console on the admin listener.
    #[serde(default)]
    pub console: crate::console::ConsoleConfig,
    /// Masking beyond the built-in detectors and name hints: `columns` maps a column
    /// (`column`, `table.column`, `schema.table.column`) to a data class.
    #[serde(default)]
    pub mask: gatehouse_mask::MaskConfig,
    /// The PostgreSQL frontend; off when absent.
    pub postgres: Option<gatehouse_postgres::PostgresConfig>,
    /// The Kubernetes API frontend; off when absent.
    pub kube: Option<gatehouse_kube::KubeConfig>,
    /// The SSH frontend; off when absent.
    pub ssh: Option<gatehouse_ssh::SshConfig>,
}

/// The admin listener: health, readiness, metrics, the admin API and the development issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on. Plain HTTP is allowed only on a loopback address.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the listener serves HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// The URL clients use to reach this listener, when it differs from `listen`
    /// (behind a load balancer). The development issuer's URLs derive from it.
    pub public_url: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            tls_cert: None,
            tls_key: None,
            public_url: None,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Trusted OIDC issuers; may be empty when the development issuer is on.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    #[serde(default)]
    pub dev_issuer: DevIssuerConfig,
}

/// A development issuer kept by the gateway itself: never on unless configured, and only on
/// a loopback admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevIssuerConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The audience its tokens carry and the gateway expects.
    #[serde(default = "default_audience")]
    pub audience: String,
}

impl Default for DevIssuerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            audience: default_audience(),
        }
    }
}

fn default_audience() -> String {
    "gatehouse".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory with `schema.cedarschema` and the `.cedar` policy files.
    pub dir: PathBuf,
    /// How often the directory is checked for changes (SIGHUP reloads at once).
    #[serde(default = "default_reload_interval", with = "human_duration")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Sessions end after this long even if the token lives longer (e.g. "8h").
    #[serde(default, with = "human_duration_opt")]
    pub max_lifetime: Option<Duration>,
}

/// Approval of held requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// How long a held request waits when its policy's `@approval` names no timeout.
    #[serde(default = "default_approval_timeout", with = "human_duration")]
    pub default_timeout: Duration,
    /// Base URL of the pages linked from notifications (`{link_base}/approvals/{id}`);
    /// the admin listener's URL when absent.
    pub link_base: Option<String>,
    /// Where to post each approver group's notifications.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// `[[approvals.webhooks]]`: one approver group's incoming webhook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub group: String,
    /// http:// or https:// URL (Slack, Mattermost, or any receiver of JSON).
    pub url: String,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            default_timeout: default_approval_timeout(),
            link_base: None,
            webhooks: Vec::new(),
        }
    }
}

fn default_approval_timeout() -> Duration {
    gatehouse_core::DEFAULT_APPROVAL_TIMEOUT
}

/// A config that could not be loaded; the binary exits 64 with this message.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl Config {
    /// Reads, parses and validates `path`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let config = Self::parse(&text, &base).map_err(err)?;
        if !config.policy.dir.is_dir() {
            return Err(err(format!(
                "policy.dir: {} is not a directory",
                config.policy.dir.display()
            )));
        }
        Ok(config)
    }

    /// Parses and validates config text without touching the file system: what a test of
    /// the shipped examples needs.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.state_dir);
        resolve(&mut self.policy.dir);
        for p in [&mut self.admin.tls_cert, &mut self.admin.tls_key]
            .into_iter()
            .flatten()
        {
            resolve(p);
        }
        if let Some(pg) = self.postgres.as_mut() {
            pg.resolve_paths(base);
        }
        if let Some(kube) = self.kube.as_mut() {
            kube.resolve_paths(base);
        }
        if let Some(ssh) = self.ssh.as_mut() {
            ssh.resolve_paths(base, &self.state_dir);
        }
        for issuer in &mut self.identity.issuers {
            if let Some(p) = issuer.jwks_file.as_mut() {
                resolve(p);
            }
        }
    }

    /// Checks that go beyond types. Each message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let admin = &self.admin;
        if admin.tls_cert.is_some() != admin.tls_key.is_some() {
            return Err("admin.tls_cert and admin.tls_key go together".into());
        }
        let loopback = admin.listen.ip().is_loopback();
        if admin.tls_cert.is_none() && !loopback {
            return Err(format!(
                "admin.listen = {}: plain HTTP is allowed only on a loopback address; set admin.tls_cert and admin.tls_key",
                admin.listen
            ));
        }
        if self.identity.dev_issuer.enabled {
            if !loopback {
                return Err(format!(
                    "identity.dev_issuer.enabled: the development issuer runs only on a loopback admin listener, not {}",
                    admin.listen
                ));
            }
            if admin.listen.port() == 0 {
                return Err(
                    "admin.listen: the development issuer needs a fixed port (its URL is in every token)".into(),
                );
            }
        }
        for (i, issuer) in self.identity.issuers.iter().enumerate() {
            issuer.validate().map_err(|e| format!("identity.issuers[{i}]: {e}"))?;
        }
        if self.identity.issuers.is_empty() && !self.identity.dev_issuer.enabled {
            return Err(
                "identity.issuers: no issuer is trusted; add [[identity.issuers]] or enable identity.dev_issuer".into(),
            );
        }
        self.audit.validate().map_err(|e| format!("audit: {e}"))?;
        let mut groups = std::collections::HashSet::new();
        for (i, hook) in self.approvals.webhooks.iter().enumerate() {
            let uri: http::Uri = hook
                .url
                .parse()
                .map_err(|e| format!("approvals.webhooks[{i}].url: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!(
                    "approvals.webhooks[{i}].url: {:?} is not an http:// or https:// URL",
                    hook.url
                ));
            }
            if !groups.insert(hook.group.as_str()) {
                return Err(format!(
                    "approvals.webhooks[{i}].group: {:?} has two webhooks",
                    hook.group
                ));
            }
        }
        self.mask.validate()?;
        if let Some(pg) = &self.postgres {
            pg.validate()?;
        }
        if let Some(kube) = &self.kube {
            kube.validate()?;
        }
        if let Some(ssh) = &self.ssh {
            ssh.validate()?;
        }
        self.check_target_names()?;
        Ok(())
    }

    /// Target names are unique across protocols: a credential names one target.
    fn check_target_names(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for name in self.targets().into_iter().map(|t| t.name) {
            if !seen.insert(name.clone()) {
                return Err(format!(
                    "target {name:?} is defined twice; target names are unique across protocols"
                ));
            }
        }
        Ok(())
    }

    /// Every target of every enabled frontend, as policy sees them.
    pub fn targets(&self) -> Vec<gatehouse_core::Target> {
        let mut targets = Vec::new();
        if let Some(pg) = &self.postgres {
            for t in &pg.targets {
                targets.push(gatehouse_core::Target::new(
                    t.name.clone(),
                    gatehouse_core::Protocol::Postgres,
                    t.labels.clone(),
                ));
            }
        }
        if let Some(kube) = &self.kube {
            for c in &kube.clusters {
                targets.push(gatehouse_core::Target::new(
                    c.name.clone(),
                    gatehouse_core::Protocol::Kube,
                    c.labels.clone(),
                ));
            }
        }
        if let Some(ssh) = &self.ssh {
            for t in &ssh.targets {
                targets.push(gatehouse_core::Target::new(
                    t.name.clone(),
                    gatehouse_core::Protocol::Ssh,
                    t.labels.clone(),
                ));
            }
        }
        targets
    }

    /// The admin listener's URL as clients see it.
    pub fn admin_url(&self) -> String {
        if let Some(url) = &self.admin.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let scheme = if self.admin.tls_cert.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.admin.listen)
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.state_dir.join("audit")
    }

    /// Where shell recordings are written.
    pub fn recordings_dir(&self) -> PathBuf {
        self.state_dir.join("recordings")
    }
}

mod human_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like \"30s\" or \"8h\": {e}")))
    }
}

mod human_duration_opt {
    use serde::Deserializer;
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::human_duration::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    const MINIMAL: &str =
        "state_dir = \"state\"\n[policy]\ndir = \"policies\"\n[identity.dev_issuer]\nenabled = true\n";

    #[test]
    fn minimal_config_loads_with_defaults_and_resolves_paths() {
        let config = load_str(MINIMAL).unwrap();
        assert_eq!(config.admin.listen, default_admin_listen());
        assert!(config.state_dir.is_absolute());
        assert_eq!(config.audit.fsync, gatehouse_audit::FsyncMode::Group);
        assert_eq!(config.admin_url(), "http://127.0.0.1:8080");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = load_str(&format!("{MINIMAL}[audit]\nfsyncc = \"always\"\n")).unwrap_err();
        assert!(err.message.contains("fsyncc"), "{err}");
    }

    #[test]
    fn plain_http_off_loopback_is_refused() {
        let err = load_str(&format!("{MINIMAL}[admin]\nlisten = \"0.0.0.0:8080\"\n")).unwrap_err();
        assert!(err.message.contains("admin.listen"), "{err}");
    }

    #[test]
    fn no_issuer_at_all_is_refused() {
        let err = load_str("state_dir = \"s\"\n[policy]\ndir = \"policies\"\n").unwrap_err();
        assert!(err.message.contains("identity.issuers"), "{err}");
    }

    #[test]
    fn kube_clusters_are_targets_and_names_stay_unique() {
        let kube = "[kube]\nlisten = \"127.0.0.1:6443\"\nallow_plaintext = true\n[[kube.clusters]]\nname = \"dev\"\nkubeconfig = \"dev.kubeconfig\"\nlabels = { env = \"dev\" }\n";
        let config = load_str(&format!("{MINIMAL}{kube}")).unwrap();
        let targets = config.targets();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].protocol, gatehouse_core::Protocol::Kube);
        assert_eq!(targets[0].labels()["env"], "dev");
        let path = &config.kube.as_ref().unwrap().clusters[0].kubeconfig;
        assert!(path.as_ref().unwrap().is_absolute());

        let pg = "[postgres]\nlisten = \"127.0.0.1:5432\"\nallow_plaintext = true\n[[postgres.targets]]\nname = \"dev\"\nhost = \"h\"\ndatabase = \"d\"\nuser = \"u\"\npassword_env = \"P\"\n";
        let err = load_str(&format!("{MINIMAL}{kube}{pg}")).unwrap_err();
        assert!(err.message.contains("defined twice"), "{err}");
        let err = load_str(&format!("{MINIMAL}[kube]\nlisten = \"127.0.0.1:6443\"\n")).unwrap_err();
        assert!(err.message.contains("kube.tls_cert"), "{err}");
    }

    #[test]
    fn ssh_targets_join_the_target_list_and_host_key_defaults_to_the_state_dir() {
        let config = load_str(&format!(
            "{MINIMAL}[ssh]\nlisten = \"127.0.0.1:2222\"\n[[ssh.targets]]\nname = \"web-1\"\nhost = \"127.0.0.1\"\nlogin = \"deploy\"\nprivate_key_file = \"keys/k\"\nknown_hosts = \"keys/kh\"\n"
        ))
        .unwrap();
        let ssh = config.ssh.as_ref().unwrap();
        assert_eq!(ssh.host_key_path(), config.state_dir.join("ssh_host_ed25519_key"));
        let targets = config.targets();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].protocol, gatehouse_core::Protocol::Ssh);
        let err = load_str(&format!(
            "{MINIMAL}[ssh]\nlisten = \"127.0.0.1:2222\"\nmax_channels = 0\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("ssh.max_channels"), "{err}");
    }

    #[test]
    fn mask_column_rules_are_checked_at_load() {
        let config = load_str(&format!(
            "{MINIMAL}[mask]\ncolumns = {{ \"customers.full_name\" = \"secret\", \"ssn_last4\" = \"ssn\" }}\n"
        ))
        .unwrap();
        assert_eq!(config.mask.columns.len(), 2);
        let err = load_str(&format!(
            "{MINIMAL}[mask]\ncolumns = {{ \"customers.email\" = \"mail\" }}\n"
        ))
        .unwrap_err();
        assert!(
            err.message
                .contains("mask.columns.\"customers.email\": unknown data class \"mail\""),
            "{err}"
        );
        let err = load_str(&format!(
            "{MINIMAL}[mask]\ncolumns = {{ \"customers.\" = \"email\" }}\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("no empty part"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_value() {
        let err = load_str(&format!("{MINIMAL}[session]\nmax_lifetime = \"forever\"\n")).unwrap_err();
        assert!(err.message.contains("forever"), "{err}");
    }
}

#[cfg(test)]
mod examples {
    use super::*;

    /// Every config shipped in examples/ parses and validates.
    #[test]
    fn every_example_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                if let Err(e) = Config::parse(&text, &dir) {
                    panic!("{}: {e}", path.display());
                }
                seen += 1;
            }
        }
        assert!(seen >= 3, "expected the example configs in {}", dir.display());
        // The quick start is also loadable as is: its policy directory exists.
        Config::load(&dir.join("quickstart.toml")).unwrap();
    }
}
