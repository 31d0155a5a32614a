#!/usr/bin/env bash
# `just bench`: requests per second through the Kubernetes gateway against the same requests
# sent directly to the testkit's API server (same machine, same client, keep-alive HTTPS):
# GET of one pod and LIST of 1,000 Secrets (masked by the gateway), with a bare TCP copy relay
# and a bare TLS-terminating HTTP relay as floors, as ratios.
#
# Needs target/release/{gatehouse,kube-bench,copy-relay,https-relay}
# (`cargo build --release -p gatehouse -p gatehouse-testkit`).
# DURATION (seconds per run, default 10) and CONCURRENCY (connections, default 8) tune it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
for bin in gatehouse kube-bench copy-relay https-relay; do
    [ -x "$root/target/release/$bin" ] || { echo "kube.sh: target/release/$bin missing; run: cargo build --release -p gatehouse -p gatehouse-testkit" >&2; exit 1; }
done
echo "kube.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ), load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
"$root/target/release/kube-bench" "$root/target/release/gatehouse" "${DURATION:-10}" "${CONCURRENCY:-8}"
