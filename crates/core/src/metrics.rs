//! Counters for `/metrics`, rendered in the Prometheus text format by the admin listener.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::gateway::Protocol;

const PROTOCOLS: [Protocol; 3] = [Protocol::Postgres, Protocol::Ssh, Protocol::Kube];
const OUTCOMES: [&str; 3] = ["allow", "deny", "needs_approval"];

#[derive(Default)]
pub struct Metrics {
    sessions_total: [AtomicU64; 3],
    sessions_active: [AtomicU64; 3],
    decisions: [AtomicU64; 3],
    auth_failures: AtomicU64,
}

fn index(p: Protocol) -> usize {
    match p {
        Protocol::Postgres => 0,
        Protocol::Ssh => 1,
        Protocol::Kube => 2,
    }
}

impl Metrics {
    pub(crate) fn session_opened(&self, p: Protocol) {
        self.sessions_total[index(p)].fetch_add(1, Ordering::Relaxed);
        self.sessions_active[index(p)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_closed(&self, p: Protocol) {
        self.sessions_active[index(p)].fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn decision(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.decisions[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in Prometheus text format; `extra` is appended as is.
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP gatehouse_sessions_total Sessions opened, by protocol.");
        let _ = writeln!(out, "# TYPE gatehouse_sessions_total counter");
        for p in PROTOCOLS {
            let _ = writeln!(
                out,
                "gatehouse_sessions_total{{protocol=\"{p}\"}} {}",
                self.sessions_total[index(p)].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP gatehouse_sessions_active Sessions open now, by protocol.");
        let _ = writeln!(out, "# TYPE gatehouse_sessions_active gauge");
        for p in PROTOCOLS {
            let _ = writeln!(
                out,
                "gatehouse_sessions_active{{protocol=\"{p}\"}} {}",
                self.sessions_active[index(p)].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP gatehouse_decisions_total Policy decisions, by outcome.");
        let _ = writeln!(out, "# TYPE gatehouse_decisions_total counter");
        for (i, o) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "gatehouse_decisions_total{{outcome=\"{o}\"}} {}",
                self.decisions[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP gatehouse_auth_failures_total Failed authentications.");
        let _ = writeln!(out, "# TYPE gatehouse_auth_failures_total counter");
        let _ = writeln!(
            out,
            "gatehouse_auth_failures_total {}",
            self.auth_failures.load(Ordering::Relaxed)
        );
        out.push_str(extra);
        out
    }
}
