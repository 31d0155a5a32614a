#!/usr/bin/env bash
# `just bench`: SSH throughput and connection set-up through the gateway, against a
# throwaway OpenSSH sshd on loopback, all measured in one run on the same machine:
#   direct      ssh -> sshd
#   copy-relay  ssh -> bare TCP copy relay -> sshd (the floor for anything in the path)
#   bastion     ssh -> sshd, which runs `ssh sshd 'head ...'` (an OpenSSH bastion that
#               decrypts and re-encrypts, the fair comparison for a gateway)
#   gatehouse   ssh -> gatehouse (exec, no recording) -> sshd
# Throughput: `head -c SIZE /dev/zero` on the host into /dev/null on the client, MB/s and
# ratios. Set-up: CONNECTIONS sequential `ssh ... true`, median added latency over direct.
#
# Needs target/release/gatehouse and target/release/copy-relay
# (`cargo build --release -p gatehouse -p gatehouse-testkit`), /usr/sbin/sshd, ssh,
# ssh-keygen, sshpass. SIZE (default 1G, head -c syntax) and CONNECTIONS (default 50) tune
# it; GATEHOUSE=path picks another gatehouse binary; CIPHER (e.g. aes128-gcm@openssh.com)
# makes every OpenSSH client in the run (the bastion's too) ask for that cipher instead of
# OpenSSH's default, chacha20-poly1305.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
gatehouse="${GATEHOUSE:-$root/target/release/gatehouse}"
relay_bin="${COPY_RELAY:-$root/target/release/copy-relay}"
size=${SIZE:-1G}
connections=${CONNECTIONS:-50}

for bin in "$gatehouse" "$relay_bin" /usr/sbin/sshd; do
    [ -x "$bin" ] || { echo "ssh.sh: $bin missing; run: cargo build --release -p gatehouse -p gatehouse-testkit" >&2; exit 1; }
done
for tool in ssh ssh-keygen sshpass python3; do
    command -v "$tool" >/dev/null || { echo "ssh.sh: $tool missing (just setup)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-sshbench.XXXXXX")
pids=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
die() { echo "ssh.sh: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on port $1"
}

# The target: a throwaway sshd with its own keys.
login=$(id -un)
sshd_port=$(free_port)
ssh-keygen -q -t ed25519 -N "" -C bench-host -f "$work/host_key"
ssh-keygen -q -t ed25519 -N "" -C bench-client -f "$work/client_key"
cp "$work/client_key.pub" "$work/authorized_keys"
echo "[127.0.0.1]:$sshd_port $(cut -d' ' -f1,2 "$work/host_key.pub")" >"$work/known_hosts"
cat >"$work/sshd_config" <<CFG
ListenAddress 127.0.0.1:$sshd_port
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
PidFile $work/sshd.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PrintMotd no
MaxStartups 100
LogLevel DEBUG1
CFG
[ -d /run/sshd ] || mkdir -p /run/sshd
/usr/sbin/sshd -D -f "$work/sshd_config" -E "$work/sshd.log" &
pids+=($!)
wait_port "$sshd_port"

relay_port=$(free_port)
"$relay_bin" "127.0.0.1:$relay_port" "127.0.0.1:$sshd_port" >"$work/relay.log" 2>&1 &
pids+=($!)
wait_port "$relay_port"

gw_port=$(free_port)
admin_port=$(free_port)
mkdir -p "$work/gw"
cp -r "$root/policies" "$work/gw/policies"
cat >"$work/gw/gatehouse.toml" <<TOML
state_dir = "state"

[admin]
listen = "127.0.0.1:$admin_port"

[identity.dev_issuer]
enabled = true

[policy]
dir = "policies"

[ssh]
listen = "127.0.0.1:$gw_port"

[[ssh.targets]]
name = "bench"
host = "127.0.0.1"
port = $sshd_port
login = "$login"
private_key_file = "$work/client_key"
known_hosts = "$work/known_hosts"
labels = { env = "bench" }
TOML
"$gatehouse" serve --config "$work/gw/gatehouse.toml" >"$work/gw/gateway.log" 2>&1 &
pids+=($!)
wait_port "$gw_port"
wait_port "$admin_port"
token=$("$gatehouse" token mint --config "$work/gw/gatehouse.toml" --sub olivia --groups ops --ttl 1h 2>/dev/null)
export SSHPASS
SSHPASS=$(GATEHOUSE_TOKEN="$token" "$gatehouse" credentials --config "$work/gw/gatehouse.toml" --target bench --ttl 1h 2>/dev/null)

common=(-F /dev/null -o BatchMode=yes -o LogLevel=ERROR -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null -o IdentityAgent=none)
key=(-o IdentitiesOnly=yes -i "$work/client_key")
cipher_opt=""
if [ -n "${CIPHER:-}" ]; then
    common+=(-c "$CIPHER")
    cipher_opt="-c $CIPHER"
fi
inner="ssh -F /dev/null $cipher_opt -o BatchMode=yes -o LogLevel=ERROR -o UserKnownHostsFile=$work/known_hosts -o IdentitiesOnly=yes -i $work/client_key -p $sshd_port $login@127.0.0.1"
# path NAME ARGS...: the ssh command line for one path, remote command appended by the caller.
run_path() {
    local name=$1
    shift
    case "$name" in
        direct) ssh "${common[@]}" "${key[@]}" -p "$sshd_port" "$login@127.0.0.1" "$@" ;;
        copy-relay) ssh "${common[@]}" "${key[@]}" -p "$relay_port" "$login@127.0.0.1" "$@" ;;
        bastion) ssh "${common[@]}" "${key[@]}" -p "$sshd_port" "$login@127.0.0.1" "$inner" "'$*'" ;;
        gatehouse)
            sshpass -e ssh "${common[@]/BatchMode=yes/BatchMode=no}" -o PubkeyAuthentication=no \
                -o PreferredAuthentications=password -p "$gw_port" bench@127.0.0.1 "$@"
            ;;
    esac
}
now() { echo "$EPOCHREALTIME"; }
bytes=$(head -c "$size" /dev/zero | wc -c)

echo "SSH throughput: head -c $size /dev/zero through each path ($(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), client cipher ${CIPHER:-OpenSSH default})"
printf "%-11s %10s %10s %12s %12s\n" path seconds MB/s "vs direct" "vs bastion"
declare -A mbps
for path in direct copy-relay bastion gatehouse; do
    start=$(now)
    got=$(run_path "$path" "head -c $size /dev/zero" | wc -c)
    end=$(now)
    [ "$got" = "$bytes" ] || die "$path delivered $got of $bytes bytes"
    mbps[$path]=$(python3 -c "print(f'{$bytes/1e6/($end-$start):.1f}')")
    python3 - "$path" "$start" "$end" "$bytes" "${mbps[direct]}" "${mbps[bastion]:-}" <<'PY'
import sys
path, start, end, n, direct, bastion = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
rate = n / 1e6 / (end - start)
vs_b = f"{rate/float(bastion):.2f}x" if bastion else "-"
print(f"{path:<11} {end-start:10.2f} {rate:10.1f} {rate/direct:11.2f}x {vs_b:>12}")
PY
done

echo
echo "SSH connection set-up: $connections sequential 'ssh ... true', median"
printf "%-11s %12s %16s\n" path "median ms" "added vs direct"
declare -A median
for path in direct gatehouse; do
    times=()
    for _ in $(seq 1 "$connections"); do
        start=$(now)
        run_path "$path" true >/dev/null
        end=$(now)
        times+=("$(python3 -c "print(($end-$start)*1000)")")
    done
    median[$path]=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}')
    python3 -c "m=${median[$path]}; d=${median[direct]}; print(f'{\"$path\":<11} {m:12.1f} {m-d:15.1f} ms')"
done

echo
echo "Ciphers sshd negotiated (connections; the bastion's and the gateway's own legs included):"
grep -o "kex: client->server cipher: [^ ]*" "$work/sshd.log" | sed 's/.*cipher: //' | sort | uniq -c
