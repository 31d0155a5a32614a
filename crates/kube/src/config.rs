//! The `[kube]` config section: the HTTPS listener and the clusters behind it, each with the
//! gateway's own credential (a kubeconfig context or the in-cluster service account).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The Kubernetes API frontend.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeConfig {
    /// Address clients (kubectl) connect to.
    pub listen: SocketAddr,
    /// PEM certificate chain of the HTTPS listener.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP. Only on a loopback listener (demos and tests): the caller's token
    /// travels in the `Authorization` header.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Client connections served at once; more wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request body accepted for writes (create, update, patch), which the gateway
    /// reads whole to refuse masked placeholders. The API server's own limit is 3 MiB.
    #[serde(default = "default_max_request_body")]
    pub max_request_body: usize,
    /// Largest JSON document buffered to mask Secrets in it (one object or one list page,
    /// or one watch event). A larger list is refused with a message suggesting pagination.
    #[serde(default = "default_max_json_buffer")]
    pub max_json_buffer: usize,
    /// Authenticated callers remembered at once (one entry per distinct token and cluster).
    #[serde(default = "default_max_cached_sessions")]
    pub max_cached_sessions: usize,
    /// Clusters behind the gateway.
    #[serde(default)]
    pub clusters: Vec<KubeCluster>,
}

/// One Kubernetes cluster behind the gateway.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeCluster {
    /// The name in client URLs (`/clusters/<name>`); unique across every protocol's targets.
    pub name: String,
    /// A kubeconfig file holding the gateway's credential for this cluster.
    pub kubeconfig: Option<PathBuf>,
    /// The context to use in `kubeconfig` (its current context when absent).
    pub context: Option<String>,
    /// Use the pod's service account instead of a kubeconfig (the gateway runs in the cluster).
    #[serde(default)]
    pub in_cluster: bool,
    /// Labels for policy (Cedar entity tags), e.g. `{ env = "prod" }`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_request_body() -> usize {
    3 * 1024 * 1024
}

fn default_max_json_buffer() -> usize {
    16 * 1024 * 1024
}

fn default_max_cached_sessions() -> usize {
    10_000
}

impl KubeConfig {
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
        for c in &mut self.clusters {
            if let Some(p) = c.kubeconfig.as_mut() {
                resolve(p);
            }
        }
    }

    /// Checks that need no file system. Messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        gatehouse_core::check_listener_tls(
            "kube",
            self.listen,
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.allow_plaintext,
            "clients send their token in every request",
        )?;
        if self.max_connections == 0 {
            return Err("kube.max_connections: must be at least 1".into());
        }
        if self.max_request_body < 1024 {
            return Err("kube.max_request_body: must be at least 1024 bytes".into());
        }
        if self.max_json_buffer < 64 * 1024 {
            return Err("kube.max_json_buffer: must be at least 65536 bytes".into());
        }
        if self.max_cached_sessions == 0 {
            return Err("kube.max_cached_sessions: must be at least 1".into());
        }
        for (i, c) in self.clusters.iter().enumerate() {
            if c.name.is_empty() || !c.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(format!(
                    "kube.clusters[{i}].name: {:?} must be non-empty letters, digits, '-', '_' or '.' (it appears in URLs)",
                    c.name
                ));
            }
            let key = format!("kube.clusters[{i}] ({})", c.name);
            match (&c.kubeconfig, c.in_cluster) {
                (Some(_), true) => return Err(format!("{key}: kubeconfig and in_cluster exclude each other")),
                (None, false) => return Err(format!("{key}: set kubeconfig or in_cluster = true")),
                _ => {}
            }
            if c.in_cluster && c.context.is_some() {
                return Err(format!("{key}.context: only with a kubeconfig"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<KubeConfig, String> {
        let config: KubeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn a_cluster_needs_exactly_one_credential_source() {
        let base = "listen = \"127.0.0.1:6443\"\nallow_plaintext = true\n";
        assert!(parse(&format!("{base}[[clusters]]\nname = \"dev\"\nkubeconfig = \"k\"\n")).is_ok());
        assert!(parse(&format!("{base}[[clusters]]\nname = \"dev\"\nin_cluster = true\n")).is_ok());
        let none = parse(&format!("{base}[[clusters]]\nname = \"dev\"\n")).unwrap_err();
        assert!(none.contains("kube.clusters[0] (dev)"), "{none}");
        let both = parse(&format!(
            "{base}[[clusters]]\nname = \"dev\"\nin_cluster = true\nkubeconfig = \"k\"\n"
        ));
        assert!(both.unwrap_err().contains("exclude"));
    }

    #[test]
    fn cluster_names_are_url_safe_and_tls_is_required_off_loopback() {
        let bad = parse(
            "listen = \"127.0.0.1:6443\"\nallow_plaintext = true\n[[clusters]]\nname = \"a/b\"\nin_cluster = true\n",
        );
        assert!(bad.unwrap_err().contains("kube.clusters[0].name"));
        let plain = parse("listen = \"0.0.0.0:6443\"\nallow_plaintext = true\n").unwrap_err();
        assert!(plain.contains("kube.allow_plaintext"), "{plain}");
        assert!(
            parse("listen = \"127.0.0.1:6443\"\n")
                .unwrap_err()
                .contains("kube.tls_cert")
        );
        assert!(parse("listen = \"127.0.0.1:6443\"\nallow_plaintext = true\nbogus = 1\n").is_err());
    }
}
