# Gatehouse recipes. `just demo` runs the gateway on the quick-start config; `just test` runs everything.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Show the recipes.
default:
    @just --list

# Install what a fresh Debian machine lacks (as root), or print the one command that would.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
    # chromium (Debian's, never a downloaded one) and node/npm drive the console test.
    for pkg in libclang-dev openssh-server openssh-client sshpass postgresql-client chromium chromium-driver nodejs npm; do
        have_pkg "$pkg" || missing+=("$pkg")
    done
    # The PostgreSQL server binaries may come from Debian's postgresql-15 or an image's own install.
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
        missing+=(postgresql)
    fi
    # Python clients the tests drive (psycopg 3 for PostgreSQL, paramiko for SSH), from PyPI.
    if ! python3 -c 'import psycopg' 2>/dev/null; then
        python3 -m pip install --quiet --disable-pip-version-check 'psycopg[binary]>=3.1' \
            || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'psycopg[binary]>=3.1'
    fi
    # paramiko for the SSH gateway's programmatic-client test.
    if ! python3 -c 'import paramiko' 2>/dev/null; then
        python3 -m pip install --quiet --disable-pip-version-check 'paramiko>=3.4' \
            || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'paramiko>=3.4'
    fi
    # ... and the Kubernetes Python client (`kubernetes`, WebSocket exec through `stream`).
    if ! python3 -c 'import kubernetes' 2>/dev/null; then
        python3 -m pip install --quiet --disable-pip-version-check 'kubernetes>=31' \
            || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'kubernetes>=31'
    fi
    # node and npm may come from Debian or an image's own install.
    if command -v node >/dev/null && command -v npm >/dev/null; then
        kept=()
        for pkg in "${missing[@]}"; do
            case "$pkg" in nodejs|npm) ;; *) kept+=("$pkg") ;; esac
        done
        missing=("${kept[@]}")
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -eq 0 ]; then
            echo "setup: installing ${missing[*]}"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends "${missing[@]}"
        else
            echo "setup: missing packages; run:"
            echo "  sudo apt-get install -y ${missing[*]}"
            exit 1
        fi
    fi
    # playwright-core for the console test, pinned by tests/console/package-lock.json; it
    # drives /usr/bin/chromium and never downloads a browser.
    if [ ! -d tests/console/node_modules/playwright-core ]; then
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/console --no-audit --no-fund --loglevel=error
    fi
    echo "setup: everything needed is installed"

# Build the gateway.
build:
    cargo build --workspace

# Run the gateway on the quick-start config (development issuer, example policies, state in .demo/).
demo: setup
    cargo build -p gatehouse
    bash examples/demo.sh

# The whole suite: unit, integration and end-to-end tests with real servers and clients, and the policy tests.
test: setup
    cargo test --workspace --no-fail-fast
    # The binary the tests just built (a `cargo run -p` would re-resolve features and rebuild).
    target/debug/gatehouse policy test policies

# Formatting and clippy, as CI wants them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Criterion benchmarks (policy decision, masking, SQL classification), then pgbench through
# the gateway as ratios to a direct connection and a bare copy relay (DURATION=secs per run),
# then SSH throughput (SIZE, default 1G) and connection set-up against direct, a copy relay
# and an OpenSSH bastion; then Kubernetes API requests per second (GET of a pod, LIST of
# 1,000 masked Secrets) through the gateway against the test API server directly, through a
# bare TCP copy relay and through a bare TLS-terminating HTTP relay.
bench: setup
    cargo bench --workspace -- --warm-up-time 1 --measurement-time 3
    cargo build --release -p gatehouse -p gatehouse-testkit
    bash bench/pgbench.sh
    bash bench/ssh.sh
    bash bench/kube.sh

# Fuzz the parsers that read client bytes (needs cargo-fuzz; runs each target for SECONDS).
fuzz seconds="30":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    # cargo-fuzz wants nightly flags; the one stable toolchain here allows them this way.
    export RUSTC_BOOTSTRAP=1
    cd fuzz
    for target in $(cargo fuzz list); do
        echo "fuzz: $target for {{seconds}}s"
        cargo fuzz run "$target" -- -max_total_time={{seconds}}
    done
