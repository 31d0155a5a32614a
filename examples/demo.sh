#!/usr/bin/env bash
# `just demo`: a PostgreSQL server with sample data on 127.0.0.1:55432, and the gateway in
# front of it on 127.0.0.1:15432 with the development issuer and the example policies.
# Everything lives in .demo/; Ctrl-C stops both.
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

  $bin audit sessions --config $config
  $bin audit verify --config $config

Stop with Ctrl-C.
TXT
"$bin" serve --config "$config"
