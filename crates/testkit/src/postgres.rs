//! A throwaway PostgreSQL server per test, from the machine's own binaries: real behaviour,
//! free loopback port, temp dir removed on drop even when the test panicked.

use crate::gateway::free_port;
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running PostgreSQL server owned by a test.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    run_as: Option<(u32, u32)>,
}

/// Where Debian puts the server binaries; `initdb` and `pg_ctl` are not always on PATH.
const DEBIAN_BIN_DIRS: &[&str] = &[
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
];

const SUPERUSER: &str = "postgres";

impl PgServer {
    /// Initialise a cluster in a temp dir and start it on a free loopback port.
    pub fn start() -> anyhow::Result<PgServer> {
        let bin = find_bin_dir()?;
        let run_as = unprivileged_ids()?;
        let dir = tempfile::Builder::new().prefix("gatehouse-pg").tempdir()?;
        let password = random_password()?;
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password)?;
        if let Some((uid, gid)) = run_as {
            chown_recursive(dir.path(), uid, gid)?;
        }
        let mut server = PgServer {
            dir,
            bin,
            port: 0,
            password,
            run_as,
        };
        let out = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=scram-sha-256", "--no-sync", "-E", "UTF8"])
            .arg("--locale=C")
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()?;
        std::fs::remove_file(&pwfile)?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The port is picked by binding port 0; another process could take it before
        // PostgreSQL binds, so a failed start retries with a fresh port.
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            server.port = port;
            let opts = format!(
                "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='{}' \
                 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                 -c max_connections=50",
                server.dir.path().display()
            );
            let status = server
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(server.dir.path().join("log"))
                .args(["-o", &opts, "start", "-w", "-t", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if status.success() && server.wait_ready().is_ok() {
                return Ok(server);
            }
            let log = std::fs::read_to_string(server.dir.path().join("log")).unwrap_or_default();
            last_error = Some(log);
        }
        bail!("PostgreSQL did not start: {}", last_error.unwrap_or_default())
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host to connect to.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// Superuser name.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// Superuser password (generated per server).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Data directory, for editing `pg_hba.conf` or `postgresql.conf`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Run SQL as the superuser through the real `psql`; fails on any SQL error.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let out = self.psql_as(self.superuser(), &self.password, "postgres", sql)?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run SQL through `psql` as any role on any database; the raw output is returned.
    pub fn psql_as(&self, user: &str, password: &str, database: &str, sql: &str) -> anyhow::Result<Output> {
        Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", self.host(), "-p", &self.port.to_string()])
            .args(["-U", user, "-d", database, "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGSSLMODE", "disable")
            .env_remove("PGSERVICE")
            .output()
            .context("running psql")
    }

    /// Create a login role with a password.
    pub fn create_role(&self, name: &str, password: &str) -> anyhow::Result<()> {
        self.psql(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            quote_ident(name),
            quote_literal(password)
        ))?;
        Ok(())
    }

    /// Create a database owned by a role.
    pub fn create_database(&self, name: &str, owner: &str) -> anyhow::Result<()> {
        self.psql(&format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(name),
            quote_ident(owner)
        ))?;
        Ok(())
    }

    /// The role the gateway logs in as: created with `password`, which is also written to a
    /// password file for the gateway's config (`password_file`).
    pub fn gateway_role(&self, name: &str, password: &str) -> anyhow::Result<GatewayRole> {
        self.create_role(name, password)?;
        let dir = tempfile::Builder::new().prefix("gatehouse-pg-secret").tempdir()?;
        let password_file = dir.path().join(format!("{name}.pw"));
        std::fs::write(&password_file, format!("{password}\n"))?;
        Ok(GatewayRole {
            name: name.to_owned(),
            password: password.to_owned(),
            host: self.host().to_owned(),
            port: self.port,
            password_file,
            _dir: dir,
        })
    }

    /// Re-read `pg_hba.conf` and `postgresql.conf`.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.psql("SELECT pg_reload_conf()")?;
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.env_remove("PGDATA").env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid).current_dir(self.dir.path());
        }
        cmd
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.psql_as(self.superuser(), &self.password, "postgres", "SELECT 1")?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL not ready: {}", String::from_utf8_lossy(&out.stderr));
            }
            // Polling a starting server: a short pause between connection attempts.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A role the gateway logs in as, with its password file; see [`PgServer::gateway_role`].
pub struct GatewayRole {
    /// The role's name.
    pub name: String,
    /// The role's password (tests use it to look at the target directly).
    pub password: String,
    host: String,
    port: u16,
    password_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl GatewayRole {
    /// Creates database `name` owned by this role and runs `seed` in it as the role.
    pub fn database(&self, pg: &PgServer, name: &str, seed: &str) -> anyhow::Result<()> {
        pg.create_database(name, &self.name)?;
        if !seed.is_empty() {
            let out = pg.psql_as(&self.name, &self.password, name, seed)?;
            if !out.status.success() {
                bail!("seeding {name} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    /// The `[[postgres.targets]]` block for database `database` as target `target`, over
    /// plain TCP on loopback, with `labels` (TOML inline-table body such as `env = "prod"`).
    pub fn target_toml(&self, target: &str, database: &str, labels: &str) -> String {
        format!(
            r#"
[[postgres.targets]]
name = "{target}"
host = "{host}"
port = {port}
database = "{database}"
user = "{user}"
password_file = "{pw}"
tls = "disable"
labels = {{ {labels} }}
"#,
            host = self.host,
            port = self.port,
            user = self.name,
            pw = self.password_file.display(),
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["stop", "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // TempDir removes the directory when `dir` drops after this.
    }
}

fn find_bin_dir() -> anyhow::Result<PathBuf> {
    for dir in DEBIAN_BIN_DIRS {
        if Path::new(dir).join("initdb").exists() {
            return Ok(PathBuf::from(dir));
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    bail!("PostgreSQL server binaries (initdb, pg_ctl) not found")
}

/// PostgreSQL refuses to run as root: under root the server runs as `nobody`.
fn unprivileged_ids() -> anyhow::Result<Option<(u32, u32)>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    if euid != "0" {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&"nobody") && fields.len() > 3 {
            return Ok(Some((fields[2].parse()?, fields[3].parse()?)));
        }
    }
    bail!("running as root and no `nobody` user in /etc/passwd")
}

fn chown_recursive(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn random_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 18];
    let mut f = std::fs::File::open(OsStr::new("/dev/urandom"))?;
    std::io::Read::read_exact(&mut f, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_servers_start_concurrently_and_both_answer() {
        let a = std::thread::spawn(PgServer::start);
        let b = std::thread::spawn(PgServer::start);
        let a = a.join().unwrap().unwrap();
        let b = b.join().unwrap().unwrap();
        assert_ne!(a.port(), b.port());
        assert_eq!(a.psql("SELECT 40 + 2").unwrap().trim(), "42");
        assert_eq!(b.psql("SELECT current_user").unwrap().trim(), "postgres");
    }

    #[test]
    fn roles_databases_and_drop_cleanup() {
        let pg = PgServer::start().unwrap();
        pg.create_role("app", "s3cret'pw").unwrap();
        pg.create_database("orders", "app").unwrap();
        let out = pg
            .psql_as("app", "s3cret'pw", "orders", "SELECT current_database()")
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "orders");
        let bad = pg.psql_as("app", "wrong", "orders", "SELECT 1").unwrap();
        assert!(!bad.status.success());
        let dir = pg.data_dir();
        drop(pg);
        assert!(!dir.exists());
    }
}
