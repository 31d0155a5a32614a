//! `gatehouse kubeconfig`: a kubeconfig for one cluster behind the gateway, whose user is an
//! exec credential plugin (`gatehouse token show --exec-credential`), so that kubectl always
//! sends the caller's current token and nothing long-lived sits in the file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;

use crate::config::Config;

#[derive(Args)]
pub struct KubeconfigArgs {
    /// The cluster's name in the gateway's config (`[[kube.clusters]] name`).
    #[arg(long)]
    cluster: String,
    /// The gateway's Kubernetes listener, e.g. https://gatehouse.example:6443 (default: from
    /// `kube.listen` in --config).
    #[arg(long)]
    server: Option<String>,
    /// The gateway's config file, to derive --server from.
    #[arg(long, short, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
    /// PEM CA certificate(s) that signed the gateway's certificate (embedded in the file);
    /// the system's roots otherwise.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The token file the credential plugin reads (default: the GATEHOUSE_TOKEN variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Write the kubeconfig here (mode 0600) instead of printing it.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

pub fn run(args: KubeconfigArgs) -> anyhow::Result<ExitCode> {
    let server = match (&args.server, &args.config) {
        (Some(server), _) => server.trim_end_matches('/').to_string(),
        (None, Some(path)) => {
            let config = Config::load(path)?;
            let kube = config
                .kube
                .as_ref()
                .with_context(|| format!("{} has no [kube] section", path.display()))?;
            anyhow::ensure!(
                kube.clusters.iter().any(|c| c.name == args.cluster),
                "{} has no cluster named {:?}",
                path.display(),
                args.cluster
            );
            let scheme = if kube.tls_cert.is_some() { "https" } else { "http" };
            format!("{scheme}://{}", kube.listen)
        }
        (None, None) => anyhow::bail!("give --server (the gateway's Kubernetes URL) or --config"),
    };
    anyhow::ensure!(
        !args.cluster.is_empty() && !args.cluster.contains(['/', '?', '#', '%']),
        "--cluster: {:?} is not a cluster name",
        args.cluster
    );
    let mut cluster = serde_json::json!({ "server": format!("{server}/clusters/{}", args.cluster) });
    if let Some(ca) = &args.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read --ca-file {}", ca.display()))?;
        cluster["certificate-authority-data"] = base64::engine::general_purpose::STANDARD.encode(pem).into();
    }
    let command = std::env::current_exe()
        .context("cannot find the gatehouse executable for the credential plugin")?
        .display()
        .to_string();
    let mut plugin_args = vec!["token".to_string(), "show".into(), "--exec-credential".into()];
    if let Some(file) = &args.token_file {
        plugin_args.push("--token-file".into());
        plugin_args.push(file.display().to_string());
    }
    let name = format!("gatehouse-{}", args.cluster);
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": name, "cluster": cluster }],
        "users": [{ "name": name, "user": { "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": command,
            "args": plugin_args,
            "interactiveMode": "Never",
            "provideClusterInfo": false,
        }}}],
        "contexts": [{ "name": name, "context": { "cluster": name, "user": name } }],
        "current-context": name,
    });
    // JSON is YAML: kubectl and every client library read it as a kubeconfig.
    let text = format!("{}\n", serde_json::to_string_pretty(&kubeconfig)?);
    match &args.output {
        Some(path) => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            file.write_all(text.as_bytes())?;
            eprintln!(
                "Wrote {} (context {name}); use it with KUBECONFIG={} kubectl ...",
                path.display(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
