#!/usr/bin/env bash
# `just bench` (after the criterion benches): pgbench select-only throughput through the
# gateway, reported as ratios against a direct connection and against a bare TCP copy relay
# measured on the same machine in the same run. Absolute numbers depend on the machine;
# the ratios are what to compare between runs.
#
# Needs target/release/gatehouse and target/release/copy-relay
# (`cargo build --release -p gatehouse -p gatehouse-testkit`), the PostgreSQL server
# binaries, psql, pgbench and curl; pgbouncer (session mode) is compared when installed.
# DURATION (seconds per run, default 15), SCALE (pgbench scale factor, default 10), CLIENTS
# (default 8), THREADS (default 2) and MODES (default "simple extended prepared") tune it.
# GROUP_COMMIT_MS sets the gateways' group commit delay (default 5, the gateway's default).
# Each run also reports the CPU time (user + system) the proxy in the path spent per
# transaction: unlike TPS it hardly changes with what else the machine is doing.
#
# After the throughput runs, for each mode, one client (`pgbench -S -c 1 -j 1`) direct,
# through the copy relay and through the gateway (fsync=group): the latency each adds over
# direct, and the gateway's added latency as a multiple of the relay's (LATENCY=0 skips it).
# Then a ROWS-row result (default 1,000,000) with an email column streamed with psql to
# /dev/null, direct and through a fresh gateway, as `SELECT` (DataRows, masked by column
# name and content) and as `COPY (SELECT ...) TO STDOUT` (masked by content): MB/s and the
# gateway's peak resident memory (VmHWM) (STREAM=0 skips it; PGBENCH=0 runs only this part).
# The stream also goes through the copy relay: the floor any relay costs on this machine.
# BASELINE=path/to/another/gatehouse adds a gateway run by that binary to the stream runs
# (before/after figures from the same run). Each stream through a gateway or the copy relay
# also reports the CPU (user + system) that process spent, in total and per row: unlike MB/s,
# it does not depend on what else the machine runs. PERF_RECORD=DIR records a `perf record`
# profile of the gateway under test during each stream kind (DIR/select.data, DIR/copy.data).
#
# CALLGRIND=1 instead counts the instructions the gateway (fsync=group) spends per
# statement, under valgrind's callgrind: a figure that does not depend on what else the
# machine is doing. It runs TXNS (default 1000) select-only transactions per client in
# -M simple (CALLGRIND_MODE=extended or prepared for another mode) and prints the
# instructions of the relay loop (everything after login) divided by the statements.
# CALLGRIND_OUT=FILE keeps the profile for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
gatehouse=${GATEHOUSE:-$root/target/release/gatehouse}
relay_bin="$root/target/release/copy-relay"
duration=${DURATION:-15}
scale=${SCALE:-10}
clients=${CLIENTS:-8}
threads=${THREADS:-2}

for bin in "$gatehouse" "$relay_bin"; do
    [ -x "$bin" ] || { echo "pgbench.sh: $bin missing; run: cargo build --release -p gatehouse -p gatehouse-testkit" >&2; exit 1; }
done
for tool in psql pgbench curl; do
    command -v "$tool" >/dev/null || { echo "pgbench.sh: $tool missing (just setup)" >&2; exit 1; }
done
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pgbin" ] || pgbin=$(dirname "$(command -v initdb)")

# PostgreSQL refuses to run as root: run it as the unprivileged 'nobody' then.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }

work=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-pgbench.XXXXXX")
pgdata="$work/pg/data"
pids=()
pg_started=0
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # SIGTERM lets the gateways drain and flush their audit logs; whatever is still up
    # after 5 s is killed.
    # pgbouncer runs under runuser, which does not pass SIGTERM on: its pid file names it.
    [ -f "$work/pgbouncer/pgbouncer.pid" ] && kill -TERM "$(cat "$work/pgbouncer/pgbouncer.pid")" 2>/dev/null || true
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$pg_started" = 1 ]; then
        as_pg "$pgbin/pg_ctl" -D "$pgdata" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
    echo "pgbench.sh: $*" >&2
    exit 1
}

# free_port VAR: sets VAR to a port nothing listens on, below the ephemeral range so tests
# binding port 0 elsewhere on the machine do not take it between the pick and the bind.
# (A variable, not $(...): the list of ports already handed out must outlive the call.)
taken_ports=" "
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 12000))
        case "$taken_ports" in *" $port "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            taken_ports+="$port "
            printf -v "$1" '%s' "$port"
            return 0
        fi
    done
    die "no free port found"
}

# Polls `check ARGS...` every 50 ms for up to 30 s; names WHAT in the failure.
wait_for() {
    local what=$1
    shift
    for _ in $(seq 1 600); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    die "$what not ready after 30 s"
}

# --- PostgreSQL -------------------------------------------------------------------------
free_port pg_port
password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
mkdir -p "$work/pg"
printf '%s\n' "$password" > "$work/pg/pwfile"
if [ "$(id -u)" -eq 0 ]; then
    # nobody must reach its data dir through the temp dir.
    chmod 711 "$work"
    chown -R nobody "$work/pg"
fi
as_pg "$pgbin/initdb" -D "$pgdata" -U postgres --auth=scram-sha-256 --pwfile="$work/pg/pwfile" \
    -E UTF8 --locale=C --no-sync >"$work/initdb.log" 2>&1 || die "initdb failed: $(cat "$work/initdb.log")"
rm -f "$work/pg/pwfile"
# Durability settings do not matter to a select-only run; off, pgbench -i is quicker.
pg_started=1
as_pg "$pgbin/pg_ctl" -D "$pgdata" -l "$work/pg/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$work/pg -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || die "PostgreSQL did not start: $(cat "$work/pg/server.log")"

export PGSSLMODE=disable PGCONNECT_TIMEOUT=10
PGPASSWORD="$password" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres <<SQL
CREATE ROLE bench LOGIN PASSWORD '$password';
CREATE DATABASE bench OWNER bench;
SQL
printf '%s\n' "$password" > "$work/bench.pw"
chmod 600 "$work/bench.pw"

pgbench_runs=${PGBENCH:-1}
if [ "$pgbench_runs" = 1 ]; then
    echo "pgbench.sh: pgbench -i -s $scale (direct) ..."
    PGPASSWORD="$password" pgbench -i -q -s "$scale" -h 127.0.0.1 -p "$pg_port" -U bench bench \
        >"$work/init.log" 2>&1 || die "pgbench -i failed: $(cat "$work/init.log")"
fi

# --- copy relay -------------------------------------------------------------------------
free_port relay_port
"$relay_bin" "127.0.0.1:$relay_port" "127.0.0.1:$pg_port" >"$work/relay.log" 2>&1 &
pids+=($!)
relay_pid=$!
wait_for "copy-relay" bash -c "exec 3<>/dev/tcp/127.0.0.1/$relay_port"

# --- pgbouncer (session mode), when installed -------------------------------------------
pgbouncer_row=""
if [ "$pgbench_runs" != 1 ]; then
    :
elif command -v pgbouncer >/dev/null; then
    free_port bouncer_port
    mkdir -p "$work/pgbouncer"
    printf '"bench" "%s"\n' "$password" >"$work/pgbouncer/userlist.txt"
    cat >"$work/pgbouncer/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$pg_port dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/pgbouncer/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
logfile = $work/pgbouncer/pgbouncer.log
pidfile = $work/pgbouncer/pgbouncer.pid
INI
    [ "$(id -u)" -eq 0 ] && chown -R nobody "$work/pgbouncer"
    as_pg pgbouncer "$work/pgbouncer/pgbouncer.ini" >"$work/pgbouncer/stdout.log" 2>&1 &
    pids+=($!)
    wait_for "pgbouncer" bash -c "exec 3<>/dev/tcp/127.0.0.1/$bouncer_port"
    pgbouncer_row="pgbouncer session|$bouncer_port|bench|$password|bench"
else
    echo "pgbench.sh: pgbouncer is not installed (apt-get install pgbouncer): its row is skipped" >&2
fi

# --- gateways: one per audit fsync mode ---------------------------------------------------
# start_gateway NAME FSYNC: writes $work/NAME/gatehouse.toml, starts it, sets NAME_port.
start_gateway() {
    local name=$1 fsync=$2 dir="$work/$1" admin_port listen_port
    free_port admin_port
    free_port listen_port
    mkdir -p "$dir"
    cat >"$dir/gatehouse.toml" <<TOML
state_dir = "$dir/state"

[admin]
listen = "127.0.0.1:$admin_port"

[identity.dev_issuer]
enabled = true

[policy]
dir = "$root/policies"
reload_interval = "60s"

[audit]
fsync = "$fsync"
group_commit_ms = ${GROUP_COMMIT_MS:-5}

[postgres]
listen = "127.0.0.1:$listen_port"
allow_plaintext = true          # loopback benchmark only

[[postgres.targets]]
name = "bench"
host = "127.0.0.1"
port = $pg_port
database = "bench"
user = "bench"
password_file = "$work/bench.pw"
tls = "disable"
labels = { env = "dev" }
TOML
    if [ "${CALLGRIND:-0}" = 1 ]; then
        valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
            "$gatehouse" serve --config "$dir/gatehouse.toml" >"$dir/gateway.log" 2>&1 &
    else
        "$gatehouse" serve --config "$dir/gatehouse.toml" >"$dir/gateway.log" 2>&1 &
    fi
    pids+=($!)
    local pid=$!
    for _ in $(seq 1 3000); do
        kill -0 "$pid" 2>/dev/null || die "gateway $name exited: $(cat "$dir/gateway.log")"
        curl -fsS "http://127.0.0.1:$admin_port/healthz" >/dev/null 2>&1 && break
        sleep 0.05
    done
    curl -fsS "http://127.0.0.1:$admin_port/healthz" >/dev/null 2>&1 || die "gateway $name not healthy after 150 s"
    wait_for "gateway $name postgres listener" bash -c "exec 3<>/dev/tcp/127.0.0.1/$listen_port"
    "$gatehouse" token mint --config "$dir/gatehouse.toml" --sub alice --groups dba --ttl 1h \
        >"$dir/token" 2>"$dir/mint.log" || die "token mint failed: $(cat "$dir/mint.log")"
    printf -v "${name//-/_}_port" '%s' "$listen_port"
    printf -v "${name//-/_}_pid" '%s' "$pid"
}
start_gateway gw-group group

if [ "${CALLGRIND:-0}" = 1 ]; then
    command -v callgrind_annotate >/dev/null || die "CALLGRIND=1 needs valgrind (apt-get install valgrind)"
    txns=${TXNS:-1000}
    echo "pgbench.sh: $clients clients x $txns transactions through the gateway under callgrind ..."
    PGPASSWORD="$(cat "$work/gw-group/token")" pgbench -S -M "${CALLGRIND_MODE:-simple}" -c "$clients" -j "$threads" -t "$txns" \
        -h 127.0.0.1 -p "$gw_group_port" -U alice bench >"$work/run.log" 2>&1 \
        || die "pgbench through the gateway failed: $(tail -n 20 "$work/run.log")"
    # SIGTERM: the gateway drains, and valgrind writes its profile as the process exits.
    kill -TERM "${pids[-1]}"
    for _ in $(seq 1 600); do kill -0 "${pids[-1]}" 2>/dev/null || break; sleep 0.1; done
    statements=$((clients * txns))
    [ -z "${CALLGRIND_OUT:-}" ] || cp "$work/callgrind.out" "$CALLGRIND_OUT"
    callgrind_annotate --inclusive=yes "$work/callgrind.out" 2>/dev/null | awk -v n="$statements" '
        /relay::run::\{\{closure\}\} \[/ && !tasks { gsub(",", "", $1); tasks = $1 }
        /PolicyEngine::authorize_with \[/ && !policy { gsub(",", "", $1); policy = $1 }
        /AuditLog::append::\{\{closure\}\} \[/ && !audit { gsub(",", "", $1); audit = $1 }
        END {
            if (!tasks) { print "pgbench.sh: no relay loop in the profile" > "/dev/stderr"; exit 1 }
            printf "instructions per statement (%d statements): relay loop %.0f, of which policy %.0f, audit %.0f\n", n, tasks / n, policy / n, audit / n
        }'
    exit 0
fi
[ "$pgbench_runs" = 1 ] && start_gateway gw-always always

# --- runs ---------------------------------------------------------------------------------
# The CPU time (user + system, all threads) the proxy of a row has used so far, in clock
# ticks; empty for direct. Divided by the transactions of a run it is the proxy's cost per
# transaction, a figure that depends far less on what else the machine runs than TPS does.
proxy_ticks() {
    local pid
    case "$1" in
        copy-relay) pid=$relay_pid ;;
        "pgbouncer session") pid=$(cat "$work/pgbouncer/pgbouncer.pid") ;;
        "gatehouse fsync=group") pid=$gw_group_pid ;;
        "gatehouse fsync=always") pid=$gw_always_pid ;;
        *) return 0 ;;
    esac
    awk '{ print $14 + $15 }' "/proc/$pid/stat"
}
clock_ticks=$(getconf CLK_TCK)

# Rows: label, port, user, password, database.
rows=(
    "direct|$pg_port|bench|$password|bench"
    "copy-relay|$relay_port|bench|$password|bench"
    "gatehouse fsync=group|$gw_group_port|alice|$(cat "$work/gw-group/token")|bench"
)
[ "$pgbench_runs" = 1 ] && rows+=("gatehouse fsync=always|$gw_always_port|alice|$(cat "$work/gw-always/token")|bench")
[ -n "$pgbouncer_row" ] && rows=("${rows[@]:0:2}" "$pgbouncer_row" "${rows[@]:2}")
results="$work/results"
: >"$results"
[ "$pgbench_runs" = 1 ] || MODES=none
for mode in ${MODES:-simple extended prepared}; do
    [ "$mode" = none ] && continue
    for row in "${rows[@]}"; do
        IFS='|' read -r label port user pass db <<<"$row"
        echo "pgbench.sh: $label, -M $mode, ${duration}s ..."
        out="$work/run.log"
        ticks_before=$(proxy_ticks "$label")
        PGPASSWORD="$pass" pgbench -S -M "$mode" -c "$clients" -j "$threads" -T "$duration" \
            -h 127.0.0.1 -p "$port" -U "$user" "$db" >"$out" 2>&1 \
            || die "pgbench through $label (-M $mode) failed: $(tail -n 20 "$out")"
        ticks_after=$(proxy_ticks "$label")
        txns=$(awk -F': ' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$out")
        cpu_us="-"
        if [ -n "$ticks_before" ] && [ -n "$txns" ] && [ "$txns" -gt 0 ]; then
            cpu_us=$(echo "($ticks_after - $ticks_before) * 1000000 / $clock_ticks / $txns" | bc -l)
        fi
        tps=$(awk '/^tps = / { print $3; exit }' "$out")
        lat=$(awk '/^latency average = / { print $4; exit }' "$out")
        failed=$(awk -F': ' '/^number of failed transactions/ { split($2, a, " "); print a[1]; exit }' "$out")
        [ -n "$tps" ] && [ -n "$lat" ] || die "cannot parse pgbench output for $label: $(cat "$out")"
        [ "${failed:-0}" = 0 ] || die "$label (-M $mode): $failed failed transactions"
        printf '%s|%s|%s|%s|%s\n' "$mode" "$label" "$tps" "$lat" "$cpu_us" >>"$results"
    done
done

load_after_tps=$(cut -d' ' -f1-3 /proc/loadavg)

# --- one client: added latency ------------------------------------------------------------
latencies="$work/latencies"
: >"$latencies"
if [ "${LATENCY:-1}" = 1 ] && [ "$pgbench_runs" = 1 ]; then
    for mode in ${MODES:-simple extended prepared}; do
        for row in "${rows[@]}"; do
            IFS='|' read -r label port user pass db <<<"$row"
            case "$label" in direct | copy-relay | "gatehouse fsync=group") ;; *) continue ;; esac
            echo "pgbench.sh: 1 client, $label, -M $mode, ${duration}s ..."
            out="$work/run.log"
            PGPASSWORD="$pass" pgbench -S -M "$mode" -c 1 -j 1 -T "$duration" \
                -h 127.0.0.1 -p "$port" -U "$user" "$db" >"$out" 2>&1 \
                || die "1-client pgbench through $label (-M $mode) failed: $(tail -n 20 "$out")"
            lat=$(awk '/^latency average = / { print $4; exit }' "$out")
            [ -n "$lat" ] || die "cannot parse pgbench output for $label: $(cat "$out")"
            printf '%s|%s|%s\n' "$mode" "$label" "$lat" >>"$latencies"
        done
    done
fi

# --- streaming a large masked result ------------------------------------------------------
streams="$work/streams"
: >"$streams"
if [ "${STREAM:-1}" = 1 ]; then
    rows_n=${ROWS:-1000000}
    echo "pgbench.sh: a $rows_n-row table with emails ..."
    PGPASSWORD="$password" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U bench -d bench <<SQL
CREATE TABLE people AS
    SELECT i AS id, 'user' || i || '@example.com' AS email, md5(i::text) AS note
    FROM generate_series(1, $rows_n) AS i;
SQL
    stream_paths="direct copy-relay gatehouse"
    if [ -n "${BASELINE:-}" ]; then
        [ -x "$BASELINE" ] || die "BASELINE=$BASELINE is not an executable"
        gatehouse_now=$gatehouse
        gatehouse=$BASELINE
        start_gateway gw-baseline group
        baseline_pid=${pids[-1]}
        gatehouse=$gatehouse_now
        stream_paths="direct copy-relay baseline gatehouse"
    fi
    start_gateway gw-stream group
    stream_pid=${pids[-1]}
    # cpu_ticks PID: user + system CPU of the process so far, in clock ticks (0 without a PID).
    # The gateway's CPU per row does not depend on what else the machine runs, unlike MB/s.
    cpu_ticks() { if [ -n "$1" ]; then awk '{ print $14 + $15 }' "/proc/$1/stat"; else echo 0; fi; }
    clk_tck=$(getconf CLK_TCK)
    rss_before=$(awk '/^VmRSS/ { print $2 }' "/proc/$stream_pid/status")
    gw_token=$(cat "$work/gw-stream/token")
    for kind in select copy; do
        case "$kind" in
            select) sql="SELECT id, email, note FROM people" ;;
            copy) sql="COPY (SELECT id, email, note FROM people) TO STDOUT" ;;
        esac
        for path in $stream_paths $stream_paths; do
            gw_pid=""
            case "$path" in
                baseline) port=$gw_baseline_port user=alice pass=$(cat "$work/gw-baseline/token") gw_pid=$baseline_pid ;;
                direct) port=$pg_port user=bench pass=$password ;;
                copy-relay) port=$relay_port user=bench pass=$password gw_pid=$relay_pid ;;
                gatehouse) port=$gw_stream_port user=alice pass=$gw_token gw_pid=$stream_pid ;;
            esac
            echo "pgbench.sh: stream ($kind) $path ..."
            perf_pid=""
            if [ -n "${PERF_RECORD:-}" ] && [ "$path" = gatehouse ]; then
                mkdir -p "$PERF_RECORD"
                perf record -e cpu-clock -F 1999 -p "$gw_pid" -o "$PERF_RECORD/$kind.data" >/dev/null 2>&1 &
                perf_pid=$!
                sleep 1
            fi
            cpu_before=$(cpu_ticks "$gw_pid")
            start=$(date +%s.%N)
            bytes=$(PGPASSWORD="$pass" psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$user" -d bench \
                -c "$sql" | wc -c) || die "streaming through $path failed"
            end=$(date +%s.%N)
            cpu=$(($(cpu_ticks "$gw_pid") - cpu_before))
            if [ -n "$perf_pid" ]; then
                kill -INT "$perf_pid" 2>/dev/null || true
                wait "$perf_pid" 2>/dev/null || true
            fi
            printf '%s|%s|%s|%s|%s\n' "$kind" "$path" "$bytes" "$(echo "$end - $start" | bc -l)" "${gw_pid:+$cpu}" >>"$streams"
        done
    done
    hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$stream_pid/status")
fi

# --- report -------------------------------------------------------------------------------
if [ -s "$results" ]; then
    echo
    echo "pgbench -S -c $clients -j $threads -T $duration, scale $scale, $(nproc) CPUs, load $load_after_tps after the runs"
    awk -F'|' '
        { mode[NR] = $1; label[NR] = $2; tps[NR] = $3; lat[NR] = $4; cpu[NR] = $5
          if ($2 == "direct") direct[$1] = $3
          if ($2 == "copy-relay") relay[$1] = $3
          if ($2 == "pgbouncer session") bouncer[$1] = $3 }
        END {
            printf "%-9s %-24s %12s %12s %10s %14s %14s %16s\n", "protocol", "path", "tps", "latency ms", "vs direct", "vs copy-relay", "vs pgbouncer", "proxy CPU us/tx"
            for (i = 1; i <= NR; i++) {
                vb = bouncer[mode[i]] ? sprintf("%14.2f", tps[i] / bouncer[mode[i]]) : sprintf("%14s", "-")
                vc = cpu[i] == "-" ? sprintf("%16s", "-") : sprintf("%16.1f", cpu[i])
                printf "%-9s %-24s %12.0f %12.3f %10.2f %14.2f %s %s\n", mode[i], label[i], tps[i], lat[i], tps[i] / direct[mode[i]], tps[i] / relay[mode[i]], vb, vc
            }
        }' "$results"
fi
if [ -s "$latencies" ]; then
    echo
    echo "1 client (pgbench -S -c 1 -j 1 -T $duration): average latency and what each path adds over direct"
    awk -F'|' '
        { mode[NR] = $1; label[NR] = $2; lat[NR] = $3
          if ($2 == "direct") direct[$1] = $3
          if ($2 == "copy-relay") relay[$1] = $3 }
        END {
            printf "%-9s %-24s %12s %12s %18s\n", "protocol", "path", "latency us", "added us", "vs relay added"
            for (i = 1; i <= NR; i++) {
                added = (lat[i] - direct[mode[i]]) * 1000
                radded = (relay[mode[i]] - direct[mode[i]]) * 1000
                ratio = (label[i] == "direct" || radded <= 0) ? "-" : sprintf("%.2fx", added / radded)
                printf "%-9s %-24s %12.1f %12.1f %18s\n", mode[i], label[i], lat[i] * 1000, added, ratio
            }
        }' "$latencies"
fi
if [ -s "$streams" ]; then
    echo
    echo "streaming $rows_n rows (id, email, note) with psql -A -t to wc -c, two runs each, alternating; copy-relay is a bare TCP relay"
    echo "(gateway CPU: user + system seconds the gateway process spent during the stream, and per row)"
    awk -F'|' -v rows="$rows_n" -v tck="$clk_tck" '
        { kind[NR] = $1; path[NR] = $2; bytes[NR] = $3; secs[NR] = $4; cpu[NR] = $5
          if ($2 == "direct" && (!best[$1] || $4 < best[$1])) best[$1] = $4 }
        END {
            printf "%-7s %-10s %12s %10s %10s %10s %12s %12s\n", "query", "path", "bytes", "seconds", "MB/s", "vs direct", "gateway CPU", "CPU ns/row"
            for (i = 1; i <= NR; i++) {
                c = cpu[i] == "" ? sprintf("%12s %12s", "-", "-") : sprintf("%11.2fs %12.0f", cpu[i] / tck, cpu[i] / tck / rows * 1e9)
                printf "%-7s %-10s %12d %10.2f %10.1f %10.2f %s\n", kind[i], path[i], bytes[i], secs[i], bytes[i] / secs[i] / 1e6, best[kind[i]] / secs[i], c
            }
        }' "$streams"
    echo "gateway memory: VmRSS $((rss_before / 1024)) MiB after start, peak (VmHWM) $((hwm / 1024)) MiB after the streams"
fi
