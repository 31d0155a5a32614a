#!/usr/bin/env bash
# `just demo`: runs the gateway on the quick-start config and shows how to talk to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug/gatehouse
config=examples/quickstart.toml
mkdir -p .demo
"$bin" check-config "$config"
cat <<TXT

Gatehouse is starting on http://127.0.0.1:8080 with the development issuer and the example
policies in policies/. State (audit log, keys, store) goes to .demo/state.

In another terminal:
  export GATEHOUSE_TOKEN=\$($bin token mint --config $config --sub alice --groups dba --ttl 15m)
  curl -s http://127.0.0.1:8080/readyz
  curl -s http://127.0.0.1:8080/metrics | grep gatehouse_
  $bin policy test policies
  $bin audit verify --config $config
  $bin audit sessions --config $config

Stop with Ctrl-C.
TXT
exec "$bin" serve --config "$config"
