#!/usr/bin/env bash
# `just demo`: a PostgreSQL server with sample data on 127.0.0.1:55432, and the gateway in
# front of it on 127.0.0.1:15432 with the development issuer and the example policies.
# When the machine has OpenSSH's sshd, also a throwaway sshd on 127.0.0.1:52222 (its own
# config, host key and the gateway's user key under .demo/sshd) behind the gateway's SSH
# listener on 127.0.0.1:2222 (target "web-1"). Everything lives in .demo/; Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin="$root/target/debug/gatehouse"
config="$root/examples/quickstart.toml"
demo="$root/.demo"
pgdata="$demo/pg"
mkdir -p "$demo"

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$pgbin" ] || pgbin=$(dirname "$(command -v initdb)")
# PostgreSQL refuses to run as root: run it as the unprivileged 'nobody' then.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }

if [ ! -f "$demo/pg-password" ]; then
    head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$demo/pg-password"
    chmod 600 "$demo/pg-password"
fi
export GATEHOUSE_DEMO_PASSWORD=$(cat "$demo/pg-password")

# TLS for the PostgreSQL listener: a throwaway CA and a certificate for localhost/127.0.0.1.
certs="$demo/certs"
if [ ! -f "$certs/gateway.pem" ]; then
    mkdir -p "$certs"
    (
        cd "$certs"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj "/CN=Gatehouse demo CA" -keyout ca-key.pem -out ca.pem \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout gateway-key.pem -out gateway.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >gateway.ext
        openssl x509 -req -in gateway.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
            -extfile gateway.ext -out gateway.pem 2>/dev/null
        rm -f gateway.csr gateway.ext ca.srl
        chmod 600 ca-key.pem gateway-key.pem
    )
fi

if [ ! -f "$pgdata/PG_VERSION" ]; then
    mkdir -p "$pgdata"
    [ "$(id -u)" -eq 0 ] && chown nobody "$pgdata" && chmod 700 "$pgdata"
    pwfile="$pgdata.pw"
    echo "$GATEHOUSE_DEMO_PASSWORD" > "$pwfile"
    [ "$(id -u)" -eq 0 ] && chown nobody "$pwfile"
    as_pg "$pgbin/initdb" -D "$pgdata" -U postgres --auth=scram-sha-256 --pwfile="$pwfile" >/dev/null
    rm -f "$pwfile"
    fresh=1
fi
as_pg "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w \
    -o "-p 55432 -c listen_addresses=127.0.0.1 -k $pgdata" start >/dev/null
stop_pg() { as_pg "$pgbin/pg_ctl" -D "$pgdata" -m fast stop >/dev/null 2>&1 || true; }
trap stop_pg EXIT

if [ "${fresh:-0}" = 1 ]; then
    PGPASSWORD="$GATEHOUSE_DEMO_PASSWORD" psql -X -q -h 127.0.0.1 -p 55432 -U postgres -d postgres <<SQL
CREATE ROLE gatehouse_orders LOGIN PASSWORD '$GATEHOUSE_DEMO_PASSWORD';
CREATE DATABASE orders OWNER gatehouse_orders;
SQL
    PGPASSWORD="$GATEHOUSE_DEMO_PASSWORD" psql -X -q -h 127.0.0.1 -p 55432 -U gatehouse_orders -d orders <<'SQL'
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card text);
INSERT INTO customers VALUES
  (1, 'Ada Lovelace', 'ada@example.com', '4111 1111 1111 1111'),
  (2, 'Grace Hopper', 'grace@example.org', '5500 0000 0000 0004');
SQL
fi

# A throwaway OpenSSH sshd as the SSH target, when the machine has one.
sshd_bin=/usr/sbin/sshd
ssh_dir="$demo/sshd"
ssh_text=""
if [ -x "$sshd_bin" ] && command -v ssh-keygen >/dev/null && command -v ssh >/dev/null; then
    mkdir -p "$ssh_dir" && chmod 700 "$ssh_dir"
    [ -f "$ssh_dir/host_key" ] || ssh-keygen -q -t ed25519 -N "" -C gatehouse-demo-host -f "$ssh_dir/host_key"
    [ -f "$ssh_dir/gateway_key" ] || ssh-keygen -q -t ed25519 -N "" -C gatehouse-demo-gateway -f "$ssh_dir/gateway_key"
    [ -f "$ssh_dir/user_key" ] || ssh-keygen -q -t ed25519 -N "" -C gatehouse-demo-user -f "$ssh_dir/user_key"
    cp "$ssh_dir/gateway_key.pub" "$ssh_dir/authorized_keys"
    echo "[127.0.0.1]:52222 $(cut -d' ' -f1,2 "$ssh_dir/host_key.pub")" > "$ssh_dir/known_hosts"
    cat > "$ssh_dir/sshd_config" <<CFG
ListenAddress 127.0.0.1:52222
HostKey $ssh_dir/host_key
AuthorizedKeysFile $ssh_dir/authorized_keys
PidFile $ssh_dir/sshd.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
CFG
    # sshd wants its privilege separation directory, which no service unit made here.
    [ -d /run/sshd ] || mkdir -p /run/sshd 2>/dev/null || true
    if "$sshd_bin" -f "$ssh_dir/sshd_config" -E "$ssh_dir/sshd.log" 2>>"$ssh_dir/sshd.log"; then
        stop_sshd() { [ -f "$ssh_dir/sshd.pid" ] && kill "$(cat "$ssh_dir/sshd.pid")" 2>/dev/null || true; }
        trap 'stop_sshd; stop_pg' EXIT
        # The quick-start config plus an [ssh] section (the copy sits next to examples/, so
        # its relative paths still hold).
        { cat "$config"; cat <<CFG

# Added by examples/demo.sh: the throwaway sshd on 127.0.0.1:52222.
[ssh]
listen = "127.0.0.1:2222"

[[ssh.targets]]
name = "web-1"
host = "127.0.0.1"
port = 52222
login = "$(id -un)"
private_key_file = "$ssh_dir/gateway_key"
known_hosts = "$ssh_dir/known_hosts"
labels = { env = "prod" }
CFG
        } > "$demo/gatehouse.toml"
        config="$demo/gatehouse.toml"
        ssh_opts="-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=$demo/gateway_known_hosts -o IdentitiesOnly=yes -p 2222"
        ssh_text="
SSH: target \"web-1\" on 127.0.0.1:2222 (a throwaway sshd on 127.0.0.1:52222 behind it):

  # a certificate from the gateway's CA for the demo key, valid 1h (never past the token)
  export GATEHOUSE_TOKEN=\$($bin token mint --config $config --sub olivia --groups ops)
  $bin ssh-cert --config $config --target web-1 --public-key $ssh_dir/user_key.pub --ttl 1h
  ssh $ssh_opts -i $ssh_dir/user_key web-1@127.0.0.1           # a recorded shell
  ssh $ssh_opts -i $ssh_dir/user_key web-1@127.0.0.1 uptime    # an allowed command

  # an agent: allowlisted commands run, anything else is refused with exit status 126
  export GATEHOUSE_TOKEN=\$($bin token mint --config $config --sub ci-bot --agent --owner carol)
  $bin ssh-cert --config $config --target web-1 --public-key $ssh_dir/user_key.pub --ttl 1h
  ssh $ssh_opts -i $ssh_dir/user_key web-1@127.0.0.1 whoami
  ssh $ssh_opts -i $ssh_dir/user_key web-1@127.0.0.1 'rm -rf /tmp/x'; echo \"exit \$?\"

  # replay a recorded shell (the session id is in: $bin audit sessions --config $config)
  $bin replay SESSION --config $config
"
    else
        echo "demo: sshd did not start (see $ssh_dir/sshd.log); the SSH part is skipped" >&2
    fi
fi

"$bin" check-config "$config"
cat <<TXT

Gatehouse: admin on http://127.0.0.1:8080, PostgreSQL with TLS on localhost:15432 (target
"orders"). State (audit log, keys, store) is in .demo/state. In another terminal:

  # TLS with the demo CA, verified like production
  export PGSSLMODE=verify-full PGSSLROOTCERT=$certs/ca.pem

  # a person in group dba: reads are allowed, emails and card numbers come back masked
  export PGPASSWORD=\$($bin token mint --config $config --sub alice --groups dba)
  psql "host=localhost port=15432 dbname=orders user=alice" -c 'SELECT * FROM customers'
  # a DELETE without WHERE on a prod database is blocked for everyone
  psql "host=localhost port=15432 dbname=orders user=alice" -c 'DELETE FROM customers'

  # an agent (owned by carol): reads pass, DROP TABLE is refused, and a write on prod
  # waits for a dba-lead: psql prints NOTICE: waiting for approval XXXX-XXXX-XXXX ...
  export PGPASSWORD=\$($bin token mint --config $config --sub ci-bot --agent --owner carol)
  psql "host=localhost port=15432 dbname=orders user=ci-bot" -c "DROP TABLE customers"
  psql "host=localhost port=15432 dbname=orders user=ci-bot" -c "UPDATE customers SET name = 'x' WHERE id = 1"

  # meanwhile, in a third terminal, a DBA lead approves it (carol, its owner, could not)
  export GATEHOUSE_TOKEN=\$($bin token mint --config $config --sub dora --groups dba-leads)
  $bin approvals list --config $config
  $bin approvals approve XXXX-XXXX-XXXX --reason "ticket OPS-1" --config $config
  # ... or in the web console: open http://127.0.0.1:8080/ , sign in on the development
  # issuer's form as dora with group dba-leads, and approve it there with a reason

  $bin audit sessions --config $config
  $bin audit verify --config $config
$ssh_text
Stop with Ctrl-C.
TXT
"$bin" serve --config "$config"
