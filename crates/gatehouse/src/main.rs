//! The `gatehouse` binary: parses the command line and wires the crates together. It owns
//! no enforcement logic of its own.

mod admin;
mod admin_approvals;
mod admin_ssh;
mod client;
mod cmd_approvals;
mod cmd_audit;
mod cmd_credentials;
mod cmd_kubeconfig;
mod cmd_policy;
mod cmd_replay;
mod cmd_ssh_cert;
mod cmd_token;
mod config;
mod console;
mod serve;
mod tls;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of glibc's malloc: the data paths allocate many small, short-lived
/// buffers (messages, parsed JSON, audit records) across worker threads, where glibc's malloc
/// and free were a sixth of the Kubernetes gateway's CPU (`docs/benchmarks.md`). Built without
/// transparent huge pages (`no_thp`), which kept an idle gateway at 37 MiB instead of 23.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration error (EX_CONFIG would be 78; sysexits' EX_USAGE, 64, is what
/// operators' scripts expect from a bad invocation or file).
pub const EXIT_CONFIG: u8 = 64;

/// Gatehouse: an identity-aware access gateway for PostgreSQL, SSH and Kubernetes.
///
/// Callers present a short-lived OIDC token; Cedar policy decides every request; the gateway
/// forwards with credentials only it holds, masks sensitive values and records every session
/// in a tamper-evident audit log.
#[derive(Parser)]
#[command(name = "gatehouse", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "GATEHOUSE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: the admin listener and every frontend enabled in the config.
    Serve {
        /// The gateway's TOML config file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file (and the policies it names) without starting anything.
    /// Exits 64 with a message naming the bad key.
    CheckConfig {
        /// The gateway's TOML config file.
        file: PathBuf,
    },
    /// Mint development tokens, or print the caller's token for clients (kubectl exec plugin).
    #[command(subcommand)]
    Token(cmd_token::TokenCommand),
    /// Validate, test and explain Cedar policies.
    #[command(subcommand)]
    Policy(cmd_policy::PolicyCommand),
    /// Verify the audit log's hash chain and read sessions back.
    #[command(subcommand)]
    Audit(cmd_audit::AuditCommand),
    /// Exchange your OIDC token for a short credential bound to one target
    /// (for clients that cannot carry a long token), list or revoke them.
    Credentials(cmd_credentials::CredentialsArgs),
    /// Review requests held for approval: list, show, approve, deny, watch
    /// (your OIDC token from --token or GATEHOUSE_TOKEN).
    #[command(subcommand)]
    Approvals(cmd_approvals::ApprovalsCommand),
    /// Write a kubeconfig for a cluster behind the gateway; its user runs
    /// `gatehouse token show --exec-credential`, so kubectl always sends your current token.
    Kubeconfig(cmd_kubeconfig::KubeconfigArgs),
    /// Get an OpenSSH certificate from the gateway's SSH CA for your public key, bound to
    /// one SSH target and valid no longer than your token (`ssh -i KEY -o CertificateFile=...`).
    SshCert(cmd_ssh_cert::SshCertArgs),
    /// Play a recorded SSH shell back in the terminal, with its timing.
    Replay(cmd_replay::ReplayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // One crypto provider for every TLS stack in the process (rustls, hyper-rustls).
    if rustls::crypto::aws_lc_rs::default_provider().install_default().is_err() {
        tracing::debug!("A rustls crypto provider was already installed.");
    }
    let result = match cli.command {
        Command::Serve { config } => serve::run(&config),
        Command::CheckConfig { file } => serve::check_config(&file),
        Command::Token(cmd) => cmd_token::run(cmd),
        Command::Policy(cmd) => cmd_policy::run(cmd),
        Command::Audit(cmd) => cmd_audit::run(cmd),
        Command::Credentials(args) => cmd_credentials::run(args),
        Command::Approvals(cmd) => cmd_approvals::run(cmd),
        Command::Kubeconfig(args) => cmd_kubeconfig::run(args),
        Command::Replay(args) => cmd_replay::run(args),
        Command::SshCert(args) => cmd_ssh_cert::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            if let Some(config_error) = error.downcast_ref::<config::ConfigError>() {
                eprintln!("gatehouse: bad config: {config_error}");
                return ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("gatehouse: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
