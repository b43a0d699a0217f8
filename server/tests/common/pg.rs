//! A throwaway PostgreSQL server for the tests: `initdb` into a temporary directory, the
//! server on `127.0.0.1` at a free port with trust authentication for loopback only, and
//! ways to stop, crash, restart, freeze and thaw it. The server binaries must be installed
//! (`scripts/test.sh` installs them): a missing binary fails the test, it never skips.
//!
//! `initdb` and `postgres` refuse to run as root, so as root both run as the `postgres`
//! user (the temporary directory is handed to it).
//!
//! [`PgCluster::start_tls`] starts one that takes TCP connections over TLS only, with a
//! certificate for `localhost` and 127.0.0.1 from a throwaway CA made at test time.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the server may take to accept connections after a start or restart.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A PostgreSQL server in a temporary directory; dropping it crashes it (immediate stop)
/// and removes the directory.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The `postgres` user's uid and gid when this process is root.
    run_as: Option<(u32, u32)>,
    server: Mutex<Option<Child>>,
}

impl PgCluster {
    /// Creates a cluster with `initdb` and starts it; panics with the reason when it
    /// cannot.
    pub fn start() -> PgCluster {
        PgCluster::start_with(false)
    }

    /// As [`PgCluster::start`], but TCP connections must use TLS (`pg_hba` rejects plain
    /// ones): the server's certificate names `localhost` and 127.0.0.1 and is signed by
    /// a CA whose certificate is [`PgCluster::ca_file`].
    #[allow(dead_code)]
    pub fn start_tls() -> PgCluster {
        PgCluster::start_with(true)
    }

    fn start_with(tls: bool) -> PgCluster {
        let bin = find_bindir();
        let dir = tempfile::Builder::new()
            .prefix("cairn-pg")
            .tempdir()
            .expect("tempdir for PostgreSQL");
        let run_as = if is_root() {
            let ids = postgres_user().expect(
                "running as root, PostgreSQL needs the `postgres` user (scripts/test.sh makes it)",
            );
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))
                .expect("hand the PostgreSQL temp dir to the postgres user");
            Some(ids)
        } else {
            None
        };
        fs::create_dir(dir.path().join("sock")).expect("socket dir");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path().join("sock"), Some(uid), Some(gid))
                .expect("hand the socket dir to the postgres user");
        }
        let port = free_port();
        let cluster = PgCluster {
            dir,
            bin,
            port,
            run_as,
            server: Mutex::new(None),
        };
        let out = cluster
            .command("initdb")
            .args(["-D"])
            .arg(cluster.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                // Only initdb's own files skip fsync (they are made again on any
                // failure); the server keeps fsync on.
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            cluster.set_up_tls();
        }
        cluster.start_again();
        cluster
    }

    /// The CA certificate (PEM) of a [`PgCluster::start_tls`] server.
    #[allow(dead_code)]
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes the CA, the server's certificate and key (0600, the server's own: postgres
    /// refuses a key others can read), turns `ssl` on and lets TCP in over TLS only.
    fn set_up_tls(&self) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cairn test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params")
                .signed_by(&key, &ca)
                .expect("server cert");
        fs::write(self.ca_file(), ca.pem()).expect("write the CA");
        let data = self.data_dir();
        let files = [
            ("server.crt", cert.pem(), 0o644),
            ("server.key", key.serialize_pem(), 0o600),
        ];
        for (name, pem, mode) in files {
            let path = data.join(name);
            fs::write(&path, pem).expect("write a TLS file");
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
            }
        }
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
        )
        .expect("turn TLS on");
        // The first matching line wins: TLS connections in, plain TCP out.
        fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 reject\n",
        )
        .expect("pg_hba.conf");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.env_remove("PGPASSWORD").env("PGCONNECT_TIMEOUT", "10");
        // psql over TLS looks for a client certificate in $HOME, which the `postgres` user
        // may not read (root's): point it at a file that does not exist, which means none.
        let none = self.dir.path().join("no-client-cert");
        cmd.env("PGSSLCERT", &none).env("PGSSLKEY", &none);
        cmd
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` as the superuser (trust authentication on loopback).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates database `name` and returns its URL: each test its own database.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// Runs one SQL command with psql and returns its unaligned output; panics on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts the server again on the same data directory and port (after a stop or a
    /// crash: recovery included), and waits until it accepts connections.
    pub fn start_again(&self) {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        assert!(server.is_none(), "PostgreSQL is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("server log");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path().join("sock"))
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=60",
                "-c",
                "fsync=on",
                "-c",
                "logging_collector=off",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        *server = Some(child);
        drop(server);
        let started = Instant::now();
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .expect("run pg_isready");
            if ready.success() {
                return;
            }
            if let Some(status) = self.try_wait() {
                panic!(
                    "postgres exited ({status}) before it was ready: {}",
                    self.log_tail()
                );
            }
            assert!(
                started.elapsed() < READY_WITHIN,
                "PostgreSQL not ready within {READY_WITHIN:?}: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_wait(&self) -> Option<std::process::ExitStatus> {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        let status = server.as_mut()?.try_wait().ok().flatten()?;
        *server = None;
        Some(status)
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn postmaster(&self) -> u32 {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        server.as_ref().expect("PostgreSQL is running").id()
    }

    fn stop_with(&self, signal: &str) {
        let pid = self.postmaster();
        // A frozen server cannot act on the stop signal.
        signal_all(&[pid], "-CONT");
        signal_all(&[pid], signal);
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = server.take() {
            let _ = child.wait();
        }
    }

    /// Fast shutdown (SIGINT): sessions are ended, the server checkpoints and exits.
    pub fn stop_fast(&self) {
        self.stop_with("-INT");
    }

    /// Immediate shutdown (SIGQUIT), a crash: the next start runs recovery.
    pub fn stop_immediate(&self) {
        self.stop_with("-QUIT");
    }

    /// Freezes the server (SIGSTOP to the postmaster and every child process): connections
    /// stay open and nothing answers.
    pub fn freeze(&self) {
        let pid = self.postmaster();
        // The postmaster first, so it forks no new child while the others stop.
        signal_all(&[pid], "-STOP");
        signal_all(&children_of(pid), "-STOP");
    }

    /// Resumes a frozen server.
    pub fn thaw(&self) {
        let pid = self.postmaster();
        signal_all(&children_of(pid), "-CONT");
        signal_all(&[pid], "-CONT");
    }

    /// Ends every session on `db` that is listening (`pg_terminate_backend`), as a lost
    /// listen connection; returns how many were ended.
    pub fn terminate_listeners(&self, db: &str) -> usize {
        let out = self.psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            ),
        );
        out.parse().expect("a count")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let running = self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if running {
            self.stop_immediate();
        }
    }
}

fn find_bindir() -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            ));
        }
    }
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        // The newest version first.
        versions.sort();
        versions.reverse();
        candidates.extend(versions);
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .unwrap_or_else(|| {
            panic!(
                "the PostgreSQL server binaries (initdb, postgres) are not installed: \
                 run scripts/test.sh, or `apt-get install postgresql`"
            )
        })
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The `postgres` user's uid and gid from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == "postgres")
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Every process whose parent is `pid`, read from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| parent_of(&Path::new("/proc").join(child.to_string())) == Some(pid))
        .collect()
}

fn parent_of(proc_dir: &Path) -> Option<u32> {
    let stat = fs::read_to_string(proc_dir.join("stat")).ok()?;
    // `pid (comm) state ppid ...`: the command name may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn signal_all(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}
