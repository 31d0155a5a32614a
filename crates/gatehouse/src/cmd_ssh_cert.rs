//! `gatehouse ssh-cert`: exchange an OIDC token and a public key for an OpenSSH user
//! certificate from the gateway's SSH CA, through the admin API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use crate::client;
use crate::cmd_credentials::Connection;

#[derive(Args)]
pub struct SshCertArgs {
    /// The SSH target the certificate is for (its name in the gateway's config).
    #[arg(long)]
    target: String,
    /// Your public key (default: ~/.ssh/id_ed25519.pub).
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// Where to write the certificate (default: next to the key, as OpenSSH looks for it:
    /// id_ed25519.pub -> id_ed25519-cert.pub). `-` prints it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Lifetime, e.g. 1h (default 8h; never beyond the token's own expiry).
    #[arg(long)]
    ttl: Option<String>,
    #[command(flatten)]
    conn: Connection,
}

pub fn run(args: SshCertArgs) -> anyhow::Result<ExitCode> {
    let public_key = match args.public_key {
        Some(p) => p,
        None => {
            let home = std::env::var_os("HOME").context("no --public-key and no HOME to find ~/.ssh/id_ed25519.pub")?;
            Path::new(&home).join(".ssh/id_ed25519.pub")
        }
    };
    let line = std::fs::read_to_string(&public_key)
        .with_context(|| format!("cannot read the public key {}", public_key.display()))?;
    let out = args.out.unwrap_or_else(|| certificate_path(&public_key));
    let url = format!("{}/api/ssh/cert", args.conn.admin_url()?);
    let token = client::require_token(args.conn.token.clone())?;
    let body = serde_json::json!({ "target": args.target, "public_key": line.trim(), "ttl": args.ttl });
    let runtime = client::runtime()?;
    let (status, value) = runtime.block_on(client::call(http::Method::POST, &url, &token, Some(body)))?;
    if !status.is_success() {
        anyhow::bail!("certificate refused ({status}): {}", client::error_message(&value));
    }
    let certificate = value.get("certificate").and_then(|c| c.as_str()).unwrap_or_default();
    anyhow::ensure!(!certificate.is_empty(), "the gateway answered without a certificate");
    if args.conn.json {
        println!("{value}");
    } else if out == Path::new("-") {
        println!("{certificate}");
    }
    if out != Path::new("-") {
        std::fs::write(&out, format!("{certificate}\n")).with_context(|| format!("cannot write {}", out.display()))?;
    }
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let written = if out == Path::new("-") {
        String::new()
    } else {
        format!(" written to {};", out.display())
    };
    eprintln!(
        "certificate {} for {}{written} expires {}",
        field("key_id"),
        args.target,
        field("expires_at")
    );
    Ok(ExitCode::SUCCESS)
}

/// OpenSSH's name for a key's certificate: `id_ed25519.pub` -> `id_ed25519-cert.pub`.
fn certificate_path(public_key: &Path) -> PathBuf {
    let name = public_key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".pub").unwrap_or(&name);
    public_key.with_file_name(format!("{stem}-cert.pub"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_lands_where_openssh_looks() {
        assert_eq!(
            certificate_path(Path::new("/home/a/.ssh/id_ed25519.pub")),
            Path::new("/home/a/.ssh/id_ed25519-cert.pub")
        );
        assert_eq!(certificate_path(Path::new("key")), Path::new("key-cert.pub"));
    }
}
