//! Interop plumbing: a [`TestRelay`] (the real relay (`cairn_relay::start` and `serve`) in-process on a loopback
//! port with a temporary data directory) and [`NodeProcess`], which runs the Node programs in
//! `tests/js` (`create.mjs`, `read.mjs`, `live.mjs`) with a time limit and parses the one JSON
//! line they print.
//!
//! Node children inherit the environment, so `CAIRN_WIRE_LOG=1 cargo test ...` makes them log
//! every frame to their stderr, which [`NodeError`] and [`NodeOutput`] carry.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_relay::{AppState, Config, RelayError};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Time limit for the relay to start and to stop.
const RELAY_START_STOP: Duration = Duration::from_secs(10);

/// A relay served by `cairn_relay::start` and `serve` on `127.0.0.1:<ephemeral port>` in open (development)
/// mode, with its sled store in a temporary directory removed on drop.
pub struct TestRelay {
    addr: SocketAddr,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RelayError>>>,
    // Dropped last: the store must be closed before its directory goes.
    data: tempfile::TempDir,
}

impl TestRelay {
    /// Starts a relay and waits until it answers `/healthz`. Panics if it cannot start.
    pub async fn start() -> TestRelay {
        let data = tempfile::tempdir().expect("creating a temporary relay data directory");
        Self::start_in(data, true).await
    }

    /// Starts a relay with membership (no `--open`) on a store bootstrapped with one group,
    /// and returns it with the group's first organiser invite.
    pub async fn start_with_membership() -> (TestRelay, cairn_sync::membership::api::Invite) {
        let data = tempfile::tempdir().expect("creating a temporary relay data directory");
        let args = cairn_relay::config::BootstrapArgs {
            data: data.path().join("relay"),
            code_of_conduct_file: None,
            invite_hours: 1,
            new_organiser_invite: None,
            store: "embedded".into(),
        };
        let made = tokio::task::spawn_blocking(move || cairn_relay::bootstrap::bootstrap(&args))
            .await
            .expect("bootstrap ran")
            .expect("bootstrap succeeded");
        // sled lets go of its lock (a `flock` on its `db` file) from a background thread
        // just after the last handle is dropped: wait for it without taking the store.
        wait_unlocked(&data.path().join("relay")).await;
        let relay = Self::start_in(data, false).await;
        (relay, made.invite)
    }

    async fn start_in(data: tempfile::TempDir, open: bool) -> TestRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("listener address");
        let mut config = Config::open_for_tests(addr, data.path().join("relay"));
        config.open = open;
        // `start` then `serve` (what `run` does) so that tests can reach the relay's state
        // (its membership, an injected clock for purges).
        let (state, store) = cairn_relay::start(&config).await.expect("the relay starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cairn_relay::serve(
            state.clone(),
            store,
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        let mut relay = TestRelay {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
            data,
        };
        relay.wait_healthy().await;
        relay
    }

    async fn wait_healthy(&mut self) {
        let deadline = tokio::time::Instant::now() + RELAY_START_STOP;
        loop {
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let result = self.task.take().expect("task present").await;
                panic!("the relay stopped while starting: {result:?}");
            }
            if healthz(self.addr).await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay on {} did not answer /healthz within {RELAY_START_STOP:?}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The websocket URL, `ws://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The relay's state (its membership; `cairn_relay::members` functions take it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay's data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Stops the relay (closes sockets, flushes the store) and removes its data directory.
    /// Panics if the relay returned an error or did not stop in time.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(RELAY_START_STOP, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("the relay stopped with an error: {e}"),
                Ok(Err(e)) => panic!("the relay task failed: {e}"),
                Err(_) => panic!("the relay did not stop within {RELAY_START_STOP:?}"),
            }
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        // A test that panicked before `shutdown`: ask the relay to stop; the runtime ends it.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Waits until no process holds the lock of the sled database under `data` (any store
/// layout: the `db` files of every store directory in it).
pub async fn wait_unlocked(data: &Path) {
    let deadline = tokio::time::Instant::now() + RELAY_START_STOP;
    for db in db_files(data) {
        let file = std::fs::File::open(&db).expect("the store's db file");
        while file.try_lock().is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store at {} stays locked",
                data.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = file.unlock();
    }
}

/// Every sled `db` file under `dir` (the data directory itself in the old layout, its
/// `store-N` directories in the current one).
fn db_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if dir.join("db").is_file() {
        found.push(dir.join("db"));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() && e.path().join("db").is_file() {
                found.push(e.path().join("db"));
            }
        }
    }
    found
}

/// One `GET /healthz` over plain HTTP/1.0; true on a 200 answer.
async fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
    matches!(read, Ok(Ok(_)))
        && (answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200"))
}

/// Why running a Node program failed.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The npm packages are not installed.
    #[error("{0} has no node_modules/@automerge/automerge-repo: run `npm ci` in tests/js")]
    MissingModules(PathBuf),
    /// `node` could not be started.
    #[error("starting `node {script}` failed (is Node.js installed and on PATH?): {source}")]
    Spawn {
        /// The program.
        script: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The program did not finish (or print the awaited text) in time; it has been killed.
    #[error("`node {script}` did not {what} within {limit:?}; stderr:\n{stderr}")]
    Timeout {
        /// The program.
        script: String,
        /// What we were waiting for.
        what: String,
        /// The time limit.
        limit: Duration,
        /// What it printed on stderr so far.
        stderr: String,
    },
    /// The program exited without printing the awaited text.
    #[error("`node {script}` exited ({status:?}) before printing {awaited:?}; stderr:\n{stderr}")]
    ExitedEarly {
        /// The program.
        script: String,
        /// The exit code (`None` if killed by a signal).
        status: Option<i32>,
        /// The text we waited for.
        awaited: String,
        /// Its stderr.
        stderr: String,
    },
    /// The program failed (exit code not 0) where success was expected.
    #[error("`node {script}` failed ({status:?}); stderr:\n{stderr}")]
    Failed {
        /// The program.
        script: String,
        /// The exit code (`None` if killed by a signal).
        status: Option<i32>,
        /// Its stderr.
        stderr: String,
    },
    /// The program's stdout was not one JSON value.
    #[error("`node {script}` printed no JSON ({source}); stdout: {stdout:?}; stderr:\n{stderr}")]
    NotJson {
        /// The program.
        script: String,
        /// The parse error.
        source: serde_json::Error,
        /// Its stdout.
        stdout: String,
        /// Its stderr.
        stderr: String,
    },
}

/// The directory holding the Node programs (`tests/js`).
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Checks that `npm ci` has been run in `tests/js`.
pub fn check_node_modules() -> Result<(), NodeError> {
    let dir = js_dir();
    if dir.join("node_modules/@automerge/automerge-repo").is_dir() {
        Ok(())
    } else {
        Err(NodeError::MissingModules(dir))
    }
}

/// What a finished Node program printed.
#[derive(Debug, Clone)]
pub struct NodeOutput {
    /// The program and its arguments.
    pub script: String,
    /// The exit code (`None` if killed by a signal).
    pub status: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl NodeOutput {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The JSON value on stdout, if the program succeeded and printed one.
    pub fn json(&self) -> Result<serde_json::Value, NodeError> {
        if !self.success() {
            return Err(NodeError::Failed {
                script: self.script.clone(),
                status: self.status,
                stderr: self.stderr.clone(),
            });
        }
        serde_json::from_str(self.stdout.trim()).map_err(|source| NodeError::NotJson {
            script: self.script.clone(),
            source,
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
        })
    }
}

/// A running Node program from `tests/js`; killed if dropped while running.
pub struct NodeProcess {
    script: String,
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: watch::Receiver<(String, bool)>,
}

impl NodeProcess {
    /// Starts `node <script> <args...>` in `tests/js`.
    pub fn spawn(script: &str, args: &[&str]) -> Result<NodeProcess, NodeError> {
        Self::spawn_with_env(script, args, &[])
    }

    /// Like [`NodeProcess::spawn`], with extra environment variables (e.g. `CAIRN_PEER_ID`).
    pub fn spawn_with_env(
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<NodeProcess, NodeError> {
        check_node_modules()?;
        let label = std::iter::once(script)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(js_dir())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NodeError::Spawn {
                script: label.clone(),
                source,
            })?;
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        // stderr accumulates line by line so a caller can wait for a marker such as "watching";
        // the flag turns true at end of stream.
        let err = child.stderr.take().expect("piped stderr");
        let (tx, stderr) = watch::channel((String::new(), false));
        std::thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                tx.send_modify(|(all, _)| all.push_str(&line));
                line.clear();
            }
            tx.send_modify(|(_, done)| *done = true);
        });
        Ok(NodeProcess {
            script: label,
            child,
            stdout: Some(stdout),
            stderr,
        })
    }

    /// Everything printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.borrow().0.clone()
    }

    /// Waits until stderr contains `needle` (e.g. `live.mjs watch` printing `watching`).
    pub async fn wait_stderr(&mut self, needle: &str, limit: Duration) -> Result<(), NodeError> {
        let found = tokio::time::timeout(limit, async {
            loop {
                let (ended, has) = {
                    let seen = self.stderr.borrow_and_update();
                    (seen.1, seen.0.contains(needle))
                };
                if has {
                    return true;
                }
                if ended || self.stderr.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match found {
            Ok(true) => Ok(()),
            Ok(false) => {
                let status = self.wait_exit(Duration::from_secs(5)).await.ok().flatten();
                Err(NodeError::ExitedEarly {
                    script: self.script.clone(),
                    status,
                    awaited: needle.to_owned(),
                    stderr: self.stderr(),
                })
            }
            Err(_) => {
                self.kill();
                Err(NodeError::Timeout {
                    script: self.script.clone(),
                    what: format!("print {needle:?}"),
                    limit,
                    stderr: self.stderr(),
                })
            }
        }
    }

    /// Waits for the exit code; `Err(())` on timeout.
    async fn wait_exit(&mut self, limit: Duration) -> Result<Option<i32>, ()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok(status.code());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the program to exit and collects its output; kills it after `limit`.
    pub async fn finish(mut self, limit: Duration) -> Result<NodeOutput, NodeError> {
        let Ok(status) = self.wait_exit(limit).await else {
            self.kill();
            return Err(NodeError::Timeout {
                script: self.script.clone(),
                what: "exit".into(),
                limit,
                stderr: self.stderr(),
            });
        };
        let stdout = self.stdout.take().expect("stdout reader").join();
        // The stderr reader ends with the pipe; wait for its end-of-stream mark.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.stderr.wait_for(|(_, d)| *d)).await;
        Ok(NodeOutput {
            script: self.script.clone(),
            status,
            stdout: stdout.unwrap_or_default(),
            stderr: self.stderr(),
        })
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Heads in the form automerge-repo 2.x prints them (`handle.heads()`, `UrlHeads`): each
/// change hash as bs58check text, not hex.
pub fn url_heads(heads: &[automerge::ChangeHash]) -> Vec<String> {
    heads
        .iter()
        .map(|h| bs58::encode(h.0).with_check().into_string())
        .collect()
}

/// Runs `node <script> <args...>` in `tests/js` to completion (killed after `limit`).
pub async fn run_node(
    script: &str,
    args: &[&str],
    limit: Duration,
) -> Result<NodeOutput, NodeError> {
    NodeProcess::spawn(script, args)?.finish(limit).await
}

/// Runs a Node program that must succeed and print one JSON line; returns that JSON.
pub async fn run_node_json(
    script: &str,
    args: &[&str],
    limit: Duration,
) -> Result<serde_json::Value, NodeError> {
    run_node(script, args, limit).await?.json()
}
