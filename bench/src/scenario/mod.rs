//! The scenarios. Each runs against one freshly started server and returns table rows.

mod docs;
mod groups;

use std::time::{Duration, Instant};

use anyhow::bail;
use automerge::ChangeHash;
use cairn_sync::engine::Event;
use cairn_sync::ids::DocumentId;

use cairn_bench::device::{Device, Traffic};
use cairn_bench::server::{own_cpu, Cpu, Server};

pub(crate) use docs::{big, cold};
pub(crate) use groups::{groups, GroupLoad, Mode};

/// How big each scenario is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    /// Fan-out (today's, about 13 edits per peer per second).
    pub(crate) fanout: GroupLoad,
    /// One edit per peer per second.
    pub(crate) steady: GroupLoad,
    /// `steady` at four times the groups.
    pub(crate) steady4x: GroupLoad,
    /// Ten edits per peer per second.
    pub(crate) burst: GroupLoad,
    /// One cursor message per peer per second.
    pub(crate) presence: GroupLoad,
    /// One peer per group offline while the others edit.
    pub(crate) catchup: GroupLoad,
    pub(crate) docs: usize,
    pub(crate) changes_per_doc: usize,
    pub(crate) big_edits: usize,
    /// Every device's sync debounce, when not the engine's client default.
    pub(crate) client_debounce: Option<Duration>,
}

impl Sizes {
    /// Overrides every device's sync debounce, in every scenario.
    pub(crate) fn set_client_debounce(&mut self, d: Duration) {
        self.client_debounce = Some(d);
        for l in [
            &mut self.fanout,
            &mut self.steady,
            &mut self.steady4x,
            &mut self.burst,
            &mut self.presence,
            &mut self.catchup,
        ] {
            l.client_debounce = Some(d);
        }
    }

    pub(crate) fn new(quick: bool, seconds: Option<u64>) -> Sizes {
        let steady_s = seconds.unwrap_or(if quick { 10 } else { 30 });
        let groups = if quick { 10 } else { 50 };
        let steady = GroupLoad {
            groups: if quick { 5 } else { 50 },
            peers: 8,
            edits_per_peer: steady_s as usize,
            gap_ms: (900, 1100),
            grace: Duration::from_secs(if quick { 10 } else { 30 }),
            client_debounce: None,
        };
        Sizes {
            fanout: GroupLoad {
                groups,
                peers: 8,
                edits_per_peer: if quick { 10 } else { 20 },
                gap_ms: (50, 100),
                grace: Duration::from_secs(120),
                client_debounce: None,
            },
            steady,
            steady4x: GroupLoad {
                groups: steady.groups * 4,
                ..steady
            },
            burst: GroupLoad {
                groups: 10,
                peers: 8,
                edits_per_peer: 20,
                gap_ms: (100, 100),
                grace: Duration::from_secs(60),
                client_debounce: None,
            },
            presence: GroupLoad {
                groups: 10,
                peers: 8,
                edits_per_peer: if quick { 5 } else { 10 },
                gap_ms: (900, 1100),
                grace: Duration::from_secs(5),
                client_debounce: None,
            },
            catchup: GroupLoad {
                groups: 10,
                peers: 8,
                edits_per_peer: 20,
                gap_ms: (50, 100),
                grace: Duration::from_secs(60),
                client_debounce: None,
            },
            docs: if quick { 100 } else { 500 },
            changes_per_doc: 50,
            big_edits: if quick { 2_000 } else { 20_000 },
            client_debounce: None,
        }
    }
}

/// One measured phase against one server. What a scenario does not measure stays `None`
/// and its column is left out of the table.
#[derive(Debug, Clone, Default)]
pub(crate) struct Row {
    pub(crate) label: String,
    pub(crate) wall_s: f64,
    /// Edit (or message) to arrival, ms.
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
    /// The writer's part: commit to the first frame carrying the change, ms.
    pub(crate) send_p50_ms: Option<f64>,
    pub(crate) send_p99_ms: Option<f64>,
    pub(crate) cpu_s: f64,
    /// Edits made in the phase (for CPU and traffic per edit).
    pub(crate) edits: Option<u64>,
    pub(crate) rss_mb: f64,
    pub(crate) lost: u64,
    /// The bench's own CPU over the phase (it shares the machine with the server).
    pub(crate) bench_cpu_s: f64,
    /// Simulated devices in the phase (for client CPU per peer).
    pub(crate) peers: Option<u64>,
    /// Frames and bytes of every device over the phase.
    pub(crate) traffic: Option<Traffic>,
    /// Catch-up: the rejoining peers' received frames and bytes, per peer.
    pub(crate) rejoin_in: Option<(f64, f64)>,
    /// The relay's own time from a change's arrival to its passing on (its
    /// `cairn_forward_delay_seconds` over the phase): p50 and p99 as the upper bounds of
    /// their histogram buckets, ms.
    pub(crate) relay_forward_ms: Option<(f64, f64)>,
    pub(crate) note: String,
}

impl Row {
    /// A row for a run that failed.
    pub(crate) fn failed(label: String, why: String) -> Row {
        Row {
            label,
            wall_s: f64::NAN,
            cpu_s: f64::NAN,
            rss_mb: f64::NAN,
            lost: u64::MAX,
            bench_cpu_s: f64::NAN,
            note: format!("failed: {why}"),
            ..Row::default()
        }
    }

    /// Server CPU per edit, ms.
    pub(crate) fn cpu_per_edit_ms(&self) -> Option<f64> {
        self.edits
            .filter(|e| *e > 0)
            .map(|e| self.cpu_s * 1000.0 / e as f64)
    }

    /// Client CPU (the bench process over the phase) per simulated device, ms.
    pub(crate) fn client_cpu_ms(&self) -> Option<f64> {
        self.peers
            .filter(|p| *p > 0)
            .map(|p| self.bench_cpu_s * 1000.0 / p as f64)
    }

    /// Frames per edit, (sent by clients, received by clients).
    pub(crate) fn frames_per_edit(&self) -> Option<(f64, f64)> {
        let (t, e) = (self.traffic?, self.edits.filter(|e| *e > 0)? as f64);
        Some((t.frames_sent as f64 / e, t.frames_received as f64 / e))
    }

    /// Bytes per edit, (sent by clients, received by clients).
    pub(crate) fn bytes_per_edit(&self) -> Option<(f64, f64)> {
        let (t, e) = (self.traffic?, self.edits.filter(|e| *e > 0)? as f64);
        Some((t.bytes_sent as f64 / e, t.bytes_received as f64 / e))
    }
}

/// A CPU/time sample taken at the start of a phase.
pub(crate) struct Phase {
    pub(crate) started: Instant,
    server: Cpu,
    bench: Cpu,
    forward: Option<Vec<(f64, u64)>>,
}

impl Phase {
    pub(crate) fn begin(server: &Server) -> Phase {
        Phase {
            started: Instant::now(),
            server: server.cpu(),
            bench: own_cpu(),
            forward: server.forward_histogram(),
        }
    }

    pub(crate) fn end(self, server: &Server, label: String, lost: u64) -> Row {
        Row {
            label,
            wall_s: self.started.elapsed().as_secs_f64(),
            cpu_s: server.cpu().0 - self.server.0,
            rss_mb: server.peak_rss_mb(),
            lost,
            bench_cpu_s: own_cpu().0 - self.bench.0,
            relay_forward_ms: forward_percentiles(self.forward, server.forward_histogram()),
            ..Row::default()
        }
    }
}

/// p50 and p99 (ms, as bucket upper bounds) of what a cumulative histogram gained between
/// two reads.
fn forward_percentiles(
    before: Option<Vec<(f64, u64)>>,
    after: Option<Vec<(f64, u64)>>,
) -> Option<(f64, f64)> {
    let after = after?;
    let before = before.unwrap_or_default();
    let gained: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|(b, _)| *b == le).map_or(0, |(_, c)| *c);
            (le, n.saturating_sub(was))
        })
        .collect();
    let total = gained.last()?.1;
    if total == 0 {
        return None;
    }
    let at = |q: f64| {
        let want = (q * total as f64).ceil() as u64;
        gained
            .iter()
            .find(|(_, n)| *n >= want)
            .map_or(f64::INFINITY, |(le, _)| le * 1000.0)
    };
    Some((at(0.5), at(0.99)))
}

pub(crate) fn micros_since(epoch: Instant) -> i64 {
    epoch.elapsed().as_micros() as i64
}

pub(crate) fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

/// The `q` quantile of sorted microsecond samples, in ms.
pub(crate) fn pct_ms(sorted_us: &[u32], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted_us[i] as f64 / 1000.0)
}

/// Steps `dev` until `done` holds (checked before each wait), or fails at `deadline`.
pub(crate) async fn wait_until(
    dev: &mut Device,
    deadline: Instant,
    what: &str,
    mut done: impl FnMut(&mut Device) -> bool,
) -> anyhow::Result<()> {
    loop {
        if done(dev) {
            return Ok(());
        }
        if !dev.step_until(deadline).await? {
            bail!("timed out waiting for {what}");
        }
    }
}

/// True (and the events drained) once the server showed it has `heads` of `doc`.
pub(crate) fn acked(dev: &mut Device, doc: DocumentId, heads: &[ChangeHash]) -> bool {
    let hit = dev.events.iter().any(|e| {
        matches!(e, Event::PeerHasHeads { doc: d, heads: h, .. }
            if *d == doc && sorted(h.clone()) == heads)
    });
    dev.events.clear();
    hit
}
