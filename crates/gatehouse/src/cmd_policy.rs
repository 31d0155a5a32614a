//! `gatehouse policy`: validate a policy directory, run its policy tests, explain a decision.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use gatehouse_identity::{Identity, PrincipalKind};
use gatehouse_policy::{AuthzRequest, Namespace, PolicyEngine, Resource, ResourceKind};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate the schema and every .cedar file strictly; print Cedar's messages with file
    /// and line on failure (exit 1).
    Check {
        /// The policy directory (schema.cedarschema and *.cedar).
        dir: PathBuf,
    },
    /// Run the policy tests kept in DIR/tests: each case names a principal, action, resource,
    /// context and the expected decision. Exits 1 when any case fails.
    Test {
        /// The policy directory.
        dir: PathBuf,
    },
    /// Show, for one request, which policies matched and why the decision came out as it did.
    Explain {
        /// The policy directory.
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
        /// The caller's subject.
        #[arg(long, default_value = "alice")]
        sub: String,
        /// The caller's groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The caller is an agent (workload) rather than a person.
        #[arg(long)]
        agent: bool,
        /// For agents: the person responsible for it.
        #[arg(long)]
        owner: Option<String>,
        /// The action, namespaced: Postgres::read, Ssh::exec, Kube::get, Gatehouse::approve...
        #[arg(long)]
        action: String,
        /// The kind of target.
        #[arg(long, value_enum)]
        resource: Kind,
        /// The target's name.
        #[arg(long)]
        target: String,
        /// A target label, KEY=VALUE (repeatable), e.g. env=prod.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The request's context as a JSON object.
        #[arg(long, default_value = "{}")]
        context: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Database,
    Host,
    Cluster,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { dir } => match gatehouse_policy::check_dir(&dir) {
            Ok(summary) => {
                println!("{summary}");
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("{error}");
                Ok(ExitCode::FAILURE)
            }
        },
        PolicyCommand::Test { dir } => {
            let report = match gatehouse_policy::run_tests(&dir) {
                Ok(r) => r,
                Err(error) => {
                    eprintln!("{error}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            println!("{report}");
            Ok(if report.all_passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolicyCommand::Explain {
            dir,
            sub,
            groups,
            agent,
            owner,
            action,
            resource,
            target,
            labels,
            context,
        } => {
            let engine = PolicyEngine::load(&dir)?;
            let (namespace, action) = action
                .split_once("::")
                .context("--action takes a namespaced action, e.g. Postgres::read")?;
            let namespace = match namespace {
                "Postgres" => Namespace::Postgres,
                "Ssh" => Namespace::Ssh,
                "Kube" => Namespace::Kube,
                "Gatehouse" => Namespace::Gatehouse,
                other => anyhow::bail!("unknown action namespace {other:?}: Postgres, Ssh, Kube or Gatehouse"),
            };
            let context: serde_json::Value = serde_json::from_str(&context).context("--context is not JSON")?;
            let identity = Identity {
                issuer: "explain".into(),
                subject: sub,
                kind: if agent {
                    PrincipalKind::Agent
                } else {
                    PrincipalKind::User
                },
                email: None,
                name: None,
                groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
                owner,
                expires_at: SystemTime::now() + Duration::from_secs(3600),
            };
            let resource = Resource {
                kind: match resource {
                    Kind::Database => ResourceKind::Database,
                    Kind::Host => ResourceKind::Host,
                    Kind::Cluster => ResourceKind::Cluster,
                },
                name: target,
                labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
            };
            let request = AuthzRequest {
                principal: &identity,
                namespace,
                action,
                resource: &resource,
                context,
            };
            println!("{}", engine.explain(&request));
            Ok(ExitCode::SUCCESS)
        }
    }
}
