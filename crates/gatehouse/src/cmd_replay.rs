//! `gatehouse replay`: plays a recorded SSH shell back in the terminal with its timing.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::config::Config;

#[derive(Args)]
pub struct ReplayArgs {
    /// A session id (s_...; every shell recorded in it plays in order) or a `.cast` file.
    session: String,
    /// The gateway's config file (recordings are in its state_dir/recordings).
    #[arg(long, short, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
    /// The recordings directory itself, instead of --config.
    #[arg(long, conflicts_with = "config")]
    dir: Option<PathBuf>,
    /// Playback speed: 2 plays twice as fast.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Print everything at once, without the recorded pauses.
    #[arg(long)]
    no_delay: bool,
    /// Cap every pause at this many seconds (idle time in the recording).
    #[arg(long)]
    idle_limit: Option<f64>,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        bail!("--speed must be a positive number");
    }
    let files = recordings(&args)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for file in files {
        let (_header, events) = gatehouse_ssh::recording::read(&file).map_err(anyhow::Error::msg)?;
        let mut last = Duration::ZERO;
        for event in events.iter().filter(|e| e.kind == "o") {
            if !args.no_delay {
                let mut pause = event.at.saturating_sub(last).as_secs_f64() / args.speed;
                if let Some(limit) = args.idle_limit {
                    pause = pause.min(limit.max(0.0));
                }
                out.flush()?;
                std::thread::sleep(Duration::from_secs_f64(pause));
            }
            last = event.at;
            out.write_all(event.data.as_bytes())?;
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The `.cast` files to play: the file given, or the session's recordings in request order.
fn recordings(args: &ReplayArgs) -> anyhow::Result<Vec<PathBuf>> {
    let given = Path::new(&args.session);
    if given.extension().is_some_and(|e| e == "cast") && given.is_file() {
        return Ok(vec![given.to_path_buf()]);
    }
    if !args.session.starts_with("s_") || !args.session.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("{:?} is neither a session id (s_...) nor a .cast file", args.session);
    }
    let dir = match (&args.dir, &args.config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(config)) => Config::load(config)?.recordings_dir(),
        (None, None) => bail!("give --config FILE or --dir DIR to find the recordings"),
    };
    let prefix = format!("{}-", args.session);
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let request = name.strip_prefix(&prefix)?.strip_suffix(".cast")?.parse().ok()?;
            Some((request, entry.path()))
        })
        .collect();
    if found.is_empty() {
        bail!("no recording of session {} in {}", args.session, dir.display());
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}
