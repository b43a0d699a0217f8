//! Looking at the relay from outside: its memory and open files from `/proc`, its HTTP
//! endpoints over plain TCP, and this process's own limits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cairn_bench::server::status_kb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Gap between two memory samples.
const SAMPLE_GAP: Duration = Duration::from_millis(100);

/// Largest HTTP answer read (the metrics page is a few KiB).
const HTTP_ANSWER_LIMIT: usize = 1 << 20;

/// Current resident memory of `pid` in MiB; `None` once it is gone.
pub(crate) fn rss_mb(pid: u32) -> Option<f64> {
    status_kb(pid, "VmRSS:").map(|kb| kb as f64 / 1024.0)
}

/// Peak resident memory (VmHWM) of `pid` in MiB.
pub(crate) fn hwm_mb(pid: u32) -> Option<f64> {
    status_kb(pid, "VmHWM:").map(|kb| kb as f64 / 1024.0)
}

/// Open file descriptors of `pid`.
pub(crate) fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// The 1-minute load average.
pub(crate) fn load_1m() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Peaks seen by a [`Sampler`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Peaks {
    /// Largest VmRSS sampled, MiB.
    pub(crate) rss_mb: f64,
    /// Most open fds sampled.
    pub(crate) fds: usize,
}

/// Samples a process's VmRSS and open fds every [`SAMPLE_GAP`] on its own thread.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Peaks>>,
}

impl Sampler {
    /// Starts sampling `pid`.
    pub(crate) fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = Peaks::default();
            while !flag.load(Ordering::Relaxed) {
                if let Some(mb) = rss_mb(pid) {
                    peaks.rss_mb = peaks.rss_mb.max(mb);
                }
                if let Some(n) = open_fds(pid) {
                    peaks.fds = peaks.fds.max(n);
                }
                std::thread::sleep(SAMPLE_GAP);
            }
            peaks
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the peaks.
    pub(crate) fn finish(mut self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `GET path` over a fresh connection to `addr`; the status code and how long the whole
/// answer took. Fails after `limit`.
pub(crate) async fn http_get(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> anyhow::Result<(u16, Duration)> {
    let started = Instant::now();
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.context("connect")?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.context("write")?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = s.read(&mut buf).await.context("read")?;
            if n == 0 || answer.len() > HTTP_ANSWER_LIMIT {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let status = std::str::from_utf8(&answer[..answer.len().min(64)])
            .ok()
            .and_then(|t| t.split_whitespace().nth(1))
            .and_then(|c| c.parse::<u16>().ok());
        match status {
            Some(code) => Ok(code),
            None => bail!("no HTTP status line in {} bytes", answer.len()),
        }
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(code)) => Ok((code, started.elapsed())),
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("no answer within {limit:?}"),
    }
}

/// Raises this process's soft open-file limit to at least `want` (up to the hard limit).
/// Returns the soft limit now in force.
pub(crate) fn raise_fd_limit(want: u64) -> anyhow::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let soft = cur.current.unwrap_or(u64::MAX);
    if soft >= want {
        return Ok(soft);
    }
    let target = match cur.maximum {
        Some(hard) => want.min(hard),
        None => want,
    };
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
