//! The servers under test: start one as a child process on a free loopback port with a fresh
//! data directory, sample its CPU time and peak memory from `/proc`, and kill it (by its own
//! `Child` handle) when the scenario ends.

use std::fmt;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Which server implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `cairn-relay serve --open`.
    Cairn,
    /// The official `@automerge/automerge-repo-sync-server`, bound to loopback.
    NodeSync,
    /// A plain server on `@automerge/automerge-repo` 2.5.6.
    NodeRepo,
    /// `cairn-samod-relay`: samod (the Rust automerge-repo) as a sync server, documents
    /// on disk.
    Samod,
}

impl Kind {
    /// `cairn`, `node-sync`, `node-repo` or `samod`.
    pub fn parse(s: &str) -> anyhow::Result<Kind> {
        Ok(match s {
            "cairn" => Kind::Cairn,
            "node-sync" => Kind::NodeSync,
            "node-repo" => Kind::NodeRepo,
            "samod" => Kind::Samod,
            other => {
                bail!("unknown server `{other}` (expected cairn, node-sync, node-repo or samod)")
            }
        })
    }

    /// One of the two Node servers.
    pub fn is_node(self) -> bool {
        matches!(self, Kind::NodeSync | Kind::NodeRepo)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Cairn => "cairn",
            Kind::NodeSync => "node-sync",
            Kind::NodeRepo => "node-repo",
            Kind::Samod => "samod",
        })
    }
}

/// Where the programs live.
#[derive(Debug, Clone)]
pub struct Programs {
    relay: PathBuf,
    samod: PathBuf,
    js_dir: PathBuf,
    pin_server: Option<usize>,
}

impl Programs {
    /// Finds `cairn-relay` (unless `relay` names one) and `cairn-samod-relay` beside this
    /// binary, and `tests/js` in the workspace above it.
    pub fn locate(kinds: &[Kind], relay: Option<PathBuf>) -> anyhow::Result<Programs> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let dir = exe.parent().context("this binary has no directory")?;
        let relay = relay.unwrap_or_else(|| dir.join("cairn-relay"));
        if kinds.contains(&Kind::Cairn) && !relay.is_file() {
            bail!(
                "{} not found: build it first with `cargo build --release -p cairn-relay -p cairn-bench`",
                relay.display()
            );
        }
        let samod = dir.join("cairn-samod-relay");
        if kinds.contains(&Kind::Samod) && !samod.is_file() {
            bail!(
                "{} not found: build it first with `cargo build --release -p cairn-relay -p cairn-bench`",
                samod.display()
            );
        }
        let js_dir = exe
            .ancestors()
            .map(|a| a.join("tests").join("js"))
            .chain(std::iter::once(PathBuf::from("tests/js")))
            .find(|p| p.join("package.json").is_file())
            .unwrap_or_else(|| PathBuf::from("tests/js"));
        if kinds.iter().any(|k| k.is_node()) && !js_dir.join("node_modules").is_dir() {
            bail!(
                "{}/node_modules is missing: run `npm ci` in tests/js first",
                js_dir.display()
            );
        }
        Ok(Programs {
            relay,
            samod,
            js_dir,
            pin_server: None,
        })
    }

    /// Runs every server started from now on on CPU `cpu` only (through `taskset`, which
    /// `exec`s the server, so its pid stays the server's).
    pub fn pin_server_to(&mut self, cpu: usize) {
        self.pin_server = Some(cpu);
    }
}

/// A running server process. Killed on drop.
#[derive(Debug)]
pub struct Server {
    /// Which implementation.
    pub kind: Kind,
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    child: Child,
    _data: tempfile::TempDir,
}

/// How to run the Cairn relay beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Flags appended to `serve --open --listen .. --data ..`.
    pub extra_args: Vec<String>,
    /// Address-space limit (`ulimit -v`, KiB), so an attack that makes the relay ask for
    /// tens of GiB fails inside the relay instead of starving the machine it shares.
    pub max_vm_kib: Option<u64>,
    /// Soft open-file limit (`ulimit -Sn`), e.g. the common default of 1024 so fd
    /// exhaustion shows as it would under a stock service manager.
    pub nofile: Option<u64>,
}

impl Launch {
    /// The command that starts `program`: directly, or through `sh` setting the limits
    /// and then `exec`ing it (so the child's pid is the program's). Without
    /// `RUST_BACKTRACE` from the caller's shell: symbolising a backtrace on a panic
    /// costs the relay ~120 MB of memory, which is not what a benchmark measures.
    fn command(&self, program: &Path) -> Command {
        let mut c = self.limited(program);
        c.env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        c
    }

    fn limited(&self, program: &Path) -> Command {
        if self.max_vm_kib.is_none() && self.nofile.is_none() {
            return Command::new(program);
        }
        let mut script = String::new();
        if let Some(kib) = self.max_vm_kib {
            script += &format!("ulimit -v {kib} && ");
        }
        if let Some(n) = self.nofile {
            script += &format!("ulimit -Sn {n} && ");
        }
        script += "exec \"$0\" \"$@\"";
        let mut c = Command::new("sh");
        c.arg("-c").arg(script).arg(program);
        c
    }
}

/// CPU time of a process tree, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu(
    /// Seconds.
    pub f64,
);

impl Server {
    /// Starts a fresh server (new data directory, free port) and waits until it accepts
    /// connections (at most 30 s).
    pub fn start(kind: Kind, programs: &Programs) -> anyhow::Result<Server> {
        Server::start_with(kind, programs, &Launch::default())
    }

    /// [`Server::start`] with extra relay flags and process limits (`launch` applies to
    /// the Cairn relay only).
    pub fn start_with(kind: Kind, programs: &Programs, launch: &Launch) -> anyhow::Result<Server> {
        let data = tempfile::Builder::new()
            .prefix("cairn-bench-")
            .tempdir()
            .context("creating a data directory")?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let store = data.path().join("store");
        let log = fs::File::create(data.path().join("server.log"))?;
        let mut cmd = match kind {
            Kind::Cairn => {
                let mut c = launch.command(&programs.relay);
                c.arg("serve")
                    .arg("--open")
                    .arg("--listen")
                    .arg(addr.to_string())
                    .arg("--data")
                    .arg(&store)
                    .args(&launch.extra_args)
                    .env("CAIRN_LOG", "warn");
                c
            }
            Kind::Samod => {
                let mut c = Command::new(&programs.samod);
                c.arg("--port")
                    .arg(port.to_string())
                    .arg("--data")
                    .arg(&store);
                c
            }
            Kind::NodeSync | Kind::NodeRepo => {
                let script = if kind == Kind::NodeSync {
                    "sync-server-launcher.mjs"
                } else {
                    "repo-server.mjs"
                };
                let mut c = Command::new("node");
                c.arg(programs.js_dir.join(script))
                    .arg(port.to_string())
                    .arg(&store)
                    .current_dir(&programs.js_dir);
                c
            }
        };
        if let Some(cpu) = programs.pin_server {
            cmd = pinned(&cmd, cpu);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the {kind} server"))?;
        let mut server = Server {
            kind,
            addr,
            child,
            _data: data,
        };
        server.wait_ready(Duration::from_secs(30))?;
        Ok(server)
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the {} server exited early ({status}); its log:\n{}",
                    self.kind,
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the {} server did not listen within {limit:?}; its log:\n{}",
            self.kind,
            self.log_tail()
        )
    }

    /// Everything the server wrote (its last MiB).
    pub fn log_text(&self) -> String {
        let text = fs::read_to_string(self._data.path().join("server.log")).unwrap_or_default();
        let mut from = text.len().saturating_sub(1 << 20);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        text[from..].to_owned()
    }

    /// The last lines the server wrote.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self._data.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The server's process id (for the Cairn relay under [`Launch`] limits: the relay
    /// itself, since the shell `exec`s it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `None` while the process runs; how it ended otherwise.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The relay's `cairn_forward_delay_seconds` histogram (cumulative counts per upper
    /// bound in seconds), read from its `/metrics`: `None` for the other servers, or when
    /// the relay does not answer in 2 s.
    pub fn forward_histogram(&self) -> Option<Vec<(f64, u64)>> {
        use std::io::{Read, Write};
        if self.kind != Kind::Cairn {
            return None;
        }
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let request = format!(
            "GET /metrics HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        s.write_all(request.as_bytes()).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let buckets: Vec<(f64, u64)> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("cairn_forward_delay_seconds_bucket{le=\"")?;
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        (!buckets.is_empty()).then_some(buckets)
    }

    /// The websocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// utime+stime of the server and every descendant process still running.
    pub fn cpu(&self) -> Cpu {
        let ticks: u64 = tree(self.child.id()).iter().map(|&p| proc_ticks(p)).sum();
        Cpu(ticks as f64 / clock_ticks())
    }

    /// Peak resident memory (VmHWM) of the server process tree, in MiB.
    pub fn peak_rss_mb(&self) -> f64 {
        let kb: u64 = tree(self.child.id()).iter().map(|&p| vm_hwm_kb(p)).sum();
        kb as f64 / 1024.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cmd` run through `taskset -c CPU`.
fn pinned(cmd: &Command, cpu: usize) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c")
        .arg(cpu.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    c
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// `pid` and its descendants (from `/proc/<pid>/task/*/children`).
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() && all.len() < 1000 {
        let p = all[i];
        if let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children = fs::read_to_string(t.path().join("children")).unwrap_or_default();
                all.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    all
}

/// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`), in clock ticks.
pub fn proc_ticks(pid: u32) -> u64 {
    stat_ticks(Path::new(&format!("/proc/{pid}/stat")))
}

/// utime + stime of this process.
pub fn own_cpu() -> Cpu {
    Cpu(stat_ticks(Path::new("/proc/self/stat")) as f64 / clock_ticks())
}

fn stat_ticks(path: &Path) -> u64 {
    let Ok(stat) = fs::read_to_string(path) else {
        return 0;
    };
    // The command name (field 2) may hold spaces; fields after its closing paren are plain.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so utime (14) is index 11 and stime (15) index 12.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

fn vm_hwm_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:").unwrap_or(0)
}

/// A `kB` field (`VmRSS:`, `VmHWM:`, ...) of `/proc/<pid>/status`; `None` once the process
/// is gone.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when that fails).
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Raises this process's soft open-file limit to `want` (capped at the hard limit) and
/// returns the limit now in force. Child servers started afterwards inherit it.
pub fn raise_fd_limit(want: u64) -> anyhow::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let soft = cur.current.unwrap_or(u64::MAX);
    if soft >= want {
        return Ok(soft);
    }
    let target = cur.maximum.map_or(want, |hard| want.min(hard));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: cur.maximum,
        },
    )
    .context("raising the open-file soft limit")?;
    Ok(target)
}
