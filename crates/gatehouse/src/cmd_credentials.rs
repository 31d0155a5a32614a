//! `gatehouse credentials`: exchange an OIDC token for a short `ghc_` credential bound to one
//! target, through the gateway's admin API; list and revoke them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::client;
use crate::config::Config;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CredentialsArgs {
    #[command(subcommand)]
    action: Option<CredentialsAction>,
    #[command(flatten)]
    create: CreateArgs,
}

#[derive(Args)]
pub struct Connection {
    /// The gateway's config file, to find the admin API (or give --admin-url).
    #[arg(long, short, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
    /// The admin API's URL, e.g. https://gatehouse.example:8080.
    #[arg(long, env = "GATEHOUSE_ADMIN_URL")]
    admin_url: Option<String>,
    /// Your OIDC token.
    #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CreateArgs {
    /// The target the credential is for (its name in the gateway's config).
    #[arg(long)]
    target: Option<String>,
    /// Lifetime, e.g. 15m (never beyond the token's own expiry).
    #[arg(long)]
    ttl: Option<String>,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Subcommand)]
pub enum CredentialsAction {
    /// Your live credentials.
    List {
        #[command(flatten)]
        conn: Connection,
    },
    /// Revoke one of your credentials by id.
    Revoke {
        /// The credential's id (cred_...).
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
}

impl Connection {
    pub fn admin_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.admin_url {
            return Ok(url.trim_end_matches('/').to_string());
        }
        match &self.config {
            Some(path) => Ok(Config::load(path)?.admin_url()),
            None => anyhow::bail!("say where the gateway is: --config FILE or --admin-url URL"),
        }
    }
}

pub fn run(args: CredentialsArgs) -> anyhow::Result<ExitCode> {
    let runtime = client::runtime()?;
    match args.action {
        None => {
            let create = args.create;
            let Some(target) = create.target else {
                anyhow::bail!("--target is required: the target the credential is for");
            };
            let url = format!("{}/api/credentials", create.conn.admin_url()?);
            let token = client::require_token(create.conn.token.clone())?;
            let body = serde_json::json!({ "target": target, "ttl": create.ttl });
            let (status, value) = runtime.block_on(client::call(http::Method::POST, &url, &token, Some(body)))?;
            if !status.is_success() {
                anyhow::bail!("credential refused ({status}): {}", client::error_message(&value));
            }
            if create.conn.json {
                println!("{value}");
            } else {
                // The secret alone on stdout: PGPASSWORD=$(gatehouse credentials ...) works.
                let secret = value.get("secret").and_then(|s| s.as_str()).unwrap_or_default();
                anyhow::ensure!(!secret.is_empty(), "the gateway answered without a secret");
                println!("{secret}");
                if let (Some(id), Some(exp)) = (value.get("id"), value.get("expires_at")) {
                    eprintln!("credential {id} for {target}, expires {exp}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(CredentialsAction::List { conn }) => {
            let url = format!("{}/api/credentials", conn.admin_url()?);
            let token = client::require_token(conn.token.clone())?;
            let (status, value) = runtime.block_on(client::call(http::Method::GET, &url, &token, None))?;
            if !status.is_success() {
                anyhow::bail!("listing refused ({status}): {}", client::error_message(&value));
            }
            if conn.json {
                println!("{value}");
            } else {
                println!("{:<18} {:<9} {:<20} EXPIRES", "ID", "PROTOCOL", "TARGET");
                for c in value.as_array().into_iter().flatten() {
                    let field = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                    println!(
                        "{:<18} {:<9} {:<20} {}",
                        field("id"),
                        field("protocol"),
                        field("target"),
                        field("expires_at")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(CredentialsAction::Revoke { id, conn }) => {
            let url = format!("{}/api/credentials/{id}", conn.admin_url()?);
            let token = client::require_token(conn.token.clone())?;
            let (status, value) = runtime.block_on(client::call(http::Method::DELETE, &url, &token, None))?;
            if !status.is_success() {
                anyhow::bail!("revoke refused ({status}): {}", client::error_message(&value));
            }
            eprintln!("revoked {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
