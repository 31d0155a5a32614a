//! `gatehouse token`: mint development tokens; print the caller's token for clients.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Subcommand;
use gatehouse_identity::{DevIssuer, MintRequest};

use crate::config::Config;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Sign a token with the development issuer (the demo and tests use it; needs
    /// `[identity.dev_issuer] enabled = true`). Prints the token alone on stdout.
    Mint {
        /// The gateway's TOML config file (the signing key lives in its state_dir).
        #[arg(long, short, env = "GATEHOUSE_CONFIG")]
        config: PathBuf,
        /// Subject: who the token names.
        #[arg(long)]
        sub: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime, e.g. 15m, 1h.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Mint for a workload (principal Agent) instead of a person (User).
        #[arg(long)]
        agent: bool,
        /// Email claim.
        #[arg(long)]
        email: Option<String>,
        /// Name claim.
        #[arg(long)]
        name: Option<String>,
        /// For agents: the person responsible for this agent (the `owner` claim).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Print the caller's current token from GATEHOUSE_TOKEN or a token file, e.g. as a
    /// kubectl exec credential plugin, so tokens refresh without editing kubeconfig.
    Show {
        /// Read the token from this file (where CI systems and Kubernetes put workload tokens).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Print a client.authentication.k8s.io/v1 ExecCredential instead of the bare token.
        #[arg(long)]
        exec_credential: bool,
    },
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Mint {
            config,
            sub,
            groups,
            ttl,
            agent,
            email,
            name,
            owner,
        } => {
            let config = Config::load(&config)?;
            anyhow::ensure!(
                config.identity.dev_issuer.enabled,
                "the development issuer is not enabled in this config ([identity.dev_issuer] enabled = true)"
            );
            let dev = DevIssuer::load_or_create(
                &config.state_dir,
                &config.admin_url(),
                &config.identity.dev_issuer.audience,
            )?;
            let token = dev.mint(&MintRequest {
                subject: sub,
                groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
                ttl,
                agent,
                email,
                name,
                owner,
            })?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Show {
            token_file,
            exec_credential,
        } => {
            let token = match token_file {
                Some(path) => {
                    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?
                }
                None => std::env::var("GATEHOUSE_TOKEN")
                    .context("GATEHOUSE_TOKEN is not set and no --token-file was given")?,
            };
            let token = token.trim();
            anyhow::ensure!(!token.is_empty(), "the token is empty");
            if exec_credential {
                let mut status = serde_json::json!({ "token": token });
                if let Some(exp) = unverified_exp(token) {
                    status["expirationTimestamp"] =
                        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(exp))
                            .to_string()
                            .into();
                }
                let credential = serde_json::json!({
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "kind": "ExecCredential",
                    "status": status,
                });
                println!("{credential}");
            } else {
                println!("{token}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `exp` claim of a JWT, read without verification: only so that a client knows when to
/// ask again. The gateway verifies every token it receives.
fn unverified_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}
