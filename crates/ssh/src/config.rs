//! The `[ssh]` config section: the listener, the gateway's host key, limits, and the hosts
//! behind the gateway with the key the gateway logs in with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The SSH frontend.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// The gateway's own host key (OpenSSH format). `{state_dir}` is replaced by the state
    /// directory; generated (ed25519, mode 0600) on first start when the file is absent.
    #[serde(default = "default_host_key")]
    pub host_key: String,
    /// The gateway's SSH certificate authority key, which signs the certificates of
    /// `gatehouse ssh-cert`; `{state_dir}` expands, generated on first start like the host key.
    #[serde(default = "default_ca_key")]
    pub ca_key: String,
    /// Connections served at once; more wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Channels one connection may have open at once.
    #[serde(default = "default_max_channels")]
    pub max_channels: usize,
    /// Time a client has from connecting to being authenticated, in seconds.
    #[serde(default = "default_auth_timeout")]
    pub auth_timeout_secs: u64,
    /// Password and keyboard-interactive answers a client may try per connection.
    #[serde(default = "default_max_auth_attempts")]
    pub max_auth_attempts: usize,
    /// Also record what clients type into shells (`"i"` events). Off by default: input
    /// holds passwords typed at prompts that the terminal does not echo.
    #[serde(default)]
    pub record_input: bool,
    /// Hosts behind the gateway.
    #[serde(default)]
    pub targets: Vec<SshTarget>,
}

/// One host behind the gateway.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshTarget {
    /// The SSH user name clients give (`ssh web-1@gateway`); unique across every
    /// protocol's targets.
    pub name: String,
    /// Where the host listens.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// The account on the host the gateway logs in as; never the client's.
    pub login: String,
    /// The gateway's private key for `login` (OpenSSH format, unencrypted).
    pub private_key_file: PathBuf,
    /// The host's key(s) in `known_hosts` format. Required: the gateway never trusts a
    /// host key on first use.
    pub known_hosts: PathBuf,
    /// Labels for policy (Cedar entity tags), e.g. `{ env = "prod" }`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_host_key() -> String {
    "{state_dir}/ssh_host_ed25519_key".into()
}

fn default_ca_key() -> String {
    "{state_dir}/ssh_ca_ed25519_key".into()
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_channels() -> usize {
    16
}

fn default_auth_timeout() -> u64 {
    30
}

fn default_max_auth_attempts() -> usize {
    3
}

fn default_port() -> u16 {
    22
}

impl SshConfig {
    /// Makes relative paths relative to the config file's directory and expands
    /// `{state_dir}` in the host key path.
    pub fn resolve_paths(&mut self, base: &Path, state_dir: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let mut host_key = PathBuf::from(self.host_key.replace("{state_dir}", &state_dir.display().to_string()));
        resolve(&mut host_key);
        self.host_key = host_key.display().to_string();
        let mut ca_key = PathBuf::from(self.ca_key.replace("{state_dir}", &state_dir.display().to_string()));
        resolve(&mut ca_key);
        self.ca_key = ca_key.display().to_string();
        for t in &mut self.targets {
            resolve(&mut t.private_key_file);
            resolve(&mut t.known_hosts);
        }
    }

    /// The host key file, once [`SshConfig::resolve_paths`] ran.
    pub fn host_key_path(&self) -> PathBuf {
        PathBuf::from(&self.host_key)
    }

    /// The CA key file, once [`SshConfig::resolve_paths`] ran.
    pub fn ca_key_path(&self) -> PathBuf {
        PathBuf::from(&self.ca_key)
    }

    /// Checks that need no file system. Messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.host_key.trim().is_empty() {
            return Err("ssh.host_key: must not be empty".into());
        }
        if self.ca_key.trim().is_empty() {
            return Err("ssh.ca_key: must not be empty".into());
        }
        if self.max_connections == 0 {
            return Err("ssh.max_connections: must be at least 1".into());
        }
        if !(1..=1024).contains(&self.max_channels) {
            return Err("ssh.max_channels: must be between 1 and 1024".into());
        }
        if !(1..=300).contains(&self.auth_timeout_secs) {
            return Err("ssh.auth_timeout_secs: must be between 1 and 300".into());
        }
        if !(1..=10).contains(&self.max_auth_attempts) {
            return Err("ssh.max_auth_attempts: must be between 1 and 10".into());
        }
        for (i, t) in self.targets.iter().enumerate() {
            if t.name.is_empty() {
                return Err(format!("ssh.targets[{i}].name: must not be empty"));
            }
            let key = format!("ssh.targets[{i}] ({})", t.name);
            if !t
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(format!(
                    "{key}.name: only letters, digits, '-', '_' and '.' (it is the SSH user name clients type)"
                ));
            }
            if t.host.is_empty() {
                return Err(format!("{key}.host: must not be empty"));
            }
            if t.port == 0 {
                return Err(format!("{key}.port: must not be 0"));
            }
            if t.login.is_empty() {
                return Err(format!("{key}.login: must not be empty"));
            }
        }
        Ok(())
    }

    /// Checks that read files: every target's key loads and its known_hosts file exists.
    pub fn check_files(&self) -> Result<(), String> {
        for t in &self.targets {
            crate::upstream::load_key(&t.private_key_file)
                .map_err(|e| format!("ssh.targets ({}).private_key_file: {e}", t.name))?;
            std::fs::metadata(&t.known_hosts)
                .map_err(|e| format!("ssh.targets ({}).known_hosts: {}: {e}", t.name, t.known_hosts.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn parse(text: &str) -> Result<SshConfig, String> {
        let mut config: SshConfig = toml_like(text)?;
        config.resolve_paths(Path::new("/etc/gatehouse"), Path::new("/var/lib/gatehouse"));
        config.validate()?;
        Ok(config)
    }

    // serde_json stands in for TOML here (this crate does not depend on toml): the
    // structure and the checks are the same.
    fn toml_like(text: &str) -> Result<SshConfig, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    const TARGET: &str =
        r#"{"name":"web-1","host":"127.0.0.1","login":"deploy","private_key_file":"keys/k","known_hosts":"keys/kh"}"#;

    #[test]
    fn defaults_and_paths() {
        let c = parse(&format!(r#"{{"listen":"127.0.0.1:2222","targets":[{TARGET}]}}"#)).unwrap();
        assert_eq!(c.host_key_path(), Path::new("/var/lib/gatehouse/ssh_host_ed25519_key"));
        assert_eq!(c.targets[0].port, 22);
        assert_eq!(c.targets[0].private_key_file, Path::new("/etc/gatehouse/keys/k"));
        assert_eq!(c.max_auth_attempts, 3);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = parse(r#"{"listen":"127.0.0.1:2222","hostkey":"x"}"#).unwrap_err();
        assert!(e.contains("hostkey"), "{e}");
        let e = parse(r#"{"listen":"127.0.0.1:2222","max_connections":0}"#).unwrap_err();
        assert!(e.contains("ssh.max_connections"), "{e}");
        let bad = TARGET.replace("web-1", "web 1");
        let e = parse(&format!(r#"{{"listen":"127.0.0.1:2222","targets":[{bad}]}}"#)).unwrap_err();
        assert!(e.contains("ssh.targets[0] (web 1).name"), "{e}");
        let no_hosts = TARGET.replace(r#","known_hosts":"keys/kh""#, "");
        let e = parse(&format!(r#"{{"listen":"127.0.0.1:2222","targets":[{no_hosts}]}}"#)).unwrap_err();
        assert!(e.contains("known_hosts"), "{e}");
    }
}
