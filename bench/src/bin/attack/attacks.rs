//! The attacks of issue 6, each bounded in count and time. Every attack returns short
//! notes (counts, what the relay did to the attacker's sockets); the caller measures the
//! relay and the victim around it.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cairn_sync::ids::DocumentId;
use cairn_sync::wire::Message;
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::probe::http_get;
use crate::raw::{
    await_join, bloom_probes_message, empty_request_message, join_frame, open_socket,
    phantom_heads_message, text_bomb_message, tiny_document_message, Attacker, Incoming,
    JoinAnswer, BLOOM_ZERO, IO_TIMEOUT, RELAY,
};
use crate::victim::PEER_B;

/// The longest an attack keeps sending or holding; the caller stops it a little later.
pub(crate) const ATTACK_SPAN: Duration = Duration::from_secs(18);

/// Documents the many-docs attacker keeps unanswered at once.
const OUTSTANDING: u64 = 256;

/// Frames written between two flushes in a burst.
const BURST_BATCH: usize = 256;

/// Longest wait for the relay's answer to a bomb (the issue saw stalls up to 21 s).
const ANSWER_LIMIT: Duration = Duration::from_secs(16);

/// How big each attack is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    many_docs: usize,
    bomb_chars: usize,
    /// Random characters for the large bomb (~4 MB once automerge compresses them).
    big_bomb_chars: usize,
    slow_messages: usize,
    slow_message_bytes: usize,
    session_messages: usize,
    session_id_bytes: usize,
    ephemeral_messages: usize,
    half_sent: usize,
    half_sent_hold: Duration,
    silent: usize,
    silent_hold: Duration,
    takeovers: usize,
    takeover_span: Duration,
}

impl Sizes {
    /// The sizes from the issue.
    pub(crate) fn full() -> Sizes {
        Sizes {
            many_docs: 50_000,
            bomb_chars: 10_000_000,
            big_bomb_chars: 5_300_000,
            slow_messages: 1_200,
            slow_message_bytes: 256 * 1024,
            session_messages: 600,
            session_id_bytes: 1024 * 1024,
            ephemeral_messages: 20_000,
            half_sent: 500,
            half_sent_hold: Duration::from_secs(15),
            silent: 1_100,
            silent_hold: Duration::from_secs(10),
            takeovers: 200,
            takeover_span: Duration::from_millis(400),
        }
    }

    /// A smoke run: every attack, smaller.
    pub(crate) fn quick() -> Sizes {
        Sizes {
            many_docs: 5_000,
            bomb_chars: 1_000_000,
            big_bomb_chars: 500_000,
            slow_messages: 300,
            session_messages: 100,
            ephemeral_messages: 5_000,
            half_sent: 100,
            half_sent_hold: Duration::from_secs(5),
            silent: 300,
            silent_hold: Duration::from_secs(5),
            takeovers: 50,
            ..Sizes::full()
        }
    }

    /// Sockets this process holds at once at most (for its open-file limit).
    pub(crate) fn sockets(&self) -> u64 {
        (self.silent.max(self.half_sent).max(self.takeovers) + 64) as u64
    }
}

/// One attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attack {
    BloomZero,
    BloomProbes,
    BloomProbesMax,
    ManyDocs,
    ManyDocsHeads,
    ZipBomb,
    ZipBombBig,
    SlowReaders,
    BigSessionIds,
    EphemeralFlood,
    HalfSentHttp,
    SilentTcp,
    Takeovers,
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an attack needs built before the relay starts (so building it does not load the
/// machine during the measurement).
pub(crate) enum Prepared {
    Nothing,
    /// A sync message carrying one big change, its change size and character count.
    Bomb {
        message: Vec<u8>,
        change_bytes: usize,
        chars: usize,
    },
}

/// The relay, the victim's document, and how big to make the attack.
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    pub(crate) victim_doc: DocumentId,
    pub(crate) sizes: Sizes,
}

impl Attack {
    /// Every attack, in the order of the issue.
    pub(crate) const ALL: [Attack; 13] = [
        Attack::BloomZero,
        Attack::BloomProbes,
        Attack::BloomProbesMax,
        Attack::ManyDocs,
        Attack::ManyDocsHeads,
        Attack::ZipBomb,
        Attack::ZipBombBig,
        Attack::SlowReaders,
        Attack::BigSessionIds,
        Attack::EphemeralFlood,
        Attack::HalfSentHttp,
        Attack::SilentTcp,
        Attack::Takeovers,
    ];

    /// The name `--only` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Attack::BloomZero => "bloom-zero",
            Attack::BloomProbes => "bloom-probes",
            Attack::BloomProbesMax => "bloom-probes-max",
            Attack::ManyDocs => "many-docs",
            Attack::ManyDocsHeads => "many-docs-heads",
            Attack::ZipBomb => "zip-bomb",
            Attack::ZipBombBig => "zip-bomb-4mb",
            Attack::SlowReaders => "slow-readers",
            Attack::BigSessionIds => "big-session-ids",
            Attack::EphemeralFlood => "ephemeral-flood",
            Attack::HalfSentHttp => "half-sent-http",
            Attack::SilentTcp => "silent-tcp",
            Attack::Takeovers => "takeovers",
        }
    }

    /// Parses a comma-separated list of names (or `all`).
    pub(crate) fn parse_list(s: &str) -> anyhow::Result<Vec<Attack>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                out.extend(Attack::ALL);
                continue;
            }
            match Attack::ALL.iter().find(|a| a.name() == part) {
                Some(a) => out.push(*a),
                None => {
                    let names: Vec<&str> = Attack::ALL.iter().map(|a| a.name()).collect();
                    bail!(
                        "unknown attack `{part}` (expected one of {})",
                        names.join(", ")
                    )
                }
            }
        }
        out.dedup();
        Ok(out)
    }

    /// The attack makes the relay load documents: run the relay with a short idle
    /// eviction so "RSS after" is measured after eviction.
    pub(crate) fn loads_documents(self) -> bool {
        matches!(
            self,
            Attack::BloomZero
                | Attack::BloomProbes
                | Attack::BloomProbesMax
                | Attack::ManyDocs
                | Attack::ManyDocsHeads
                | Attack::ZipBomb
                | Attack::ZipBombBig
                | Attack::BigSessionIds
        )
    }

    /// The victim's count of received ephemeral messages belongs in the notes.
    pub(crate) fn floods_ephemerals(self) -> bool {
        matches!(self, Attack::SlowReaders | Attack::EphemeralFlood)
    }

    /// The relay's open-file count belongs in the notes.
    pub(crate) fn opens_sockets(self) -> bool {
        matches!(
            self,
            Attack::HalfSentHttp | Attack::SilentTcp | Attack::Takeovers
        )
    }

    /// Builds what the attack sends, before the relay starts.
    pub(crate) fn prepare(self, sizes: &Sizes) -> Prepared {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let text = match self {
            // One letter repeated: automerge's run-length and deflate encodings shrink
            // 10 million of them to a change of about 10 KB.
            Attack::ZipBomb => "a".repeat(sizes.bomb_chars),
            Attack::ZipBombBig => {
                // Random characters from a 64-letter alphabet: about 6 bits each survive
                // compression, so the change stays big on the wire.
                const ALPHABET: &[u8; 64] =
                    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .";
                (0..sizes.big_bomb_chars)
                    .map(|_| ALPHABET[rng.gen_range(0..64)] as char)
                    .collect()
            }
            _ => return Prepared::Nothing,
        };
        let (message, change_bytes) = text_bomb_message(&text, &mut rng);
        Prepared::Bomb {
            message,
            change_bytes,
            chars: text.chars().count(),
        }
    }

    /// Runs the attack against `target`. Every socket it opened is closed when this
    /// returns (or when the future is dropped).
    pub(crate) async fn run(self, t: &Target, prepared: Prepared) -> anyhow::Result<Vec<String>> {
        let s = t.sizes;
        match self {
            Attack::BloomZero => bloom(t, BLOOM_ZERO.to_vec()).await,
            Attack::BloomProbes => bloom(t, bloom_probes_message(100_000_000)).await,
            Attack::BloomProbesMax => bloom(t, bloom_probes_message(u32::MAX)).await,
            Attack::ManyDocs => many_docs(t, s.many_docs, false).await,
            Attack::ManyDocsHeads => many_docs(t, s.many_docs, true).await,
            Attack::ZipBomb | Attack::ZipBombBig => match prepared {
                Prepared::Bomb {
                    message,
                    change_bytes,
                    chars,
                } => bomb(t, message, change_bytes, chars).await,
                Prepared::Nothing => bail!("the bomb was not prepared"),
            },
            Attack::SlowReaders => slow_readers(t, s.slow_messages, s.slow_message_bytes).await,
            Attack::BigSessionIds => {
                big_session_ids(t, s.session_messages, s.session_id_bytes).await
            }
            Attack::EphemeralFlood => ephemeral_flood(t, s.ephemeral_messages).await,
            Attack::HalfSentHttp => half_sent_http(t, s.half_sent, s.half_sent_hold).await,
            Attack::SilentTcp => silent_tcp(t, s.silent, s.silent_hold).await,
            Attack::Takeovers => takeovers(t, s.takeovers, s.takeover_span).await,
        }
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// What became of an attacker socket that waited for an answer.
fn answer_note(answer: Option<Incoming>, since: Instant, limit: Duration) -> String {
    match answer {
        Some(Incoming::Frame(m)) => {
            format!(
                "relay answered `{}` after {} ms",
                m.kind(),
                ms(since.elapsed())
            )
        }
        Some(Incoming::Closed(why)) => format!(
            "attacker socket closed after {} ms ({why})",
            ms(since.elapsed())
        ),
        None => format!("no answer within {} s", limit.as_secs()),
    }
}

fn about(doc: DocumentId) -> impl FnMut(&Incoming) -> bool {
    move |i| match i {
        Incoming::Frame(Message::Sync(d)) => d.document_id == doc,
        Incoming::Frame(Message::DocUnavailable { document_id, .. }) => *document_id == doc,
        Incoming::Frame(Message::Error { .. }) => true,
        Incoming::Frame(_) => false,
        Incoming::Closed(_) => true,
    }
}

/// A document of the attacker's own, then a sync message about it whose `have` carries
/// a hostile Bloom filter.
async fn bloom(t: &Target, data: Vec<u8>) -> anyhow::Result<Vec<String>> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut p = Attacker::join(&t.url, "attacker-bloom").await?;
    let own = p.create_own_document(&mut rng).await?;
    let sent = Instant::now();
    let f = p.sync_frame(own, data);
    p.send(f).await?;
    let answer = p.recv_until(sent + ANSWER_LIMIT, about(own)).await;
    Ok(vec![answer_note(answer, sent, ANSWER_LIMIT)])
}

/// `sync` for `count` random document ids from one socket, then disconnect. `phantom`:
/// each message claims heads the relay lacks and carries no change (nothing is written);
/// otherwise each carries one tiny change (every document is stored).
async fn many_docs(t: &Target, count: usize, phantom: bool) -> anyhow::Result<Vec<String>> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut p = Attacker::join(&t.url, "attacker-docs").await?;
    p.read();
    let data = if phantom {
        phantom_heads_message(&mut rng)
    } else {
        tiny_document_message(&mut rng)
    };
    let started = Instant::now();
    let deadline = started + ATTACK_SPAN;
    let mut sent = 0;
    let mut stopped = None;
    while sent < count {
        // Keep at most OUTSTANDING unanswered, as a patient attacker would: a burst of
        // all of them would only get this socket closed for not keeping up with the
        // relay's answers.
        while sent as u64 >= p.frames_read() + OUTSTANDING
            && Instant::now() < deadline
            && p.ended().is_none()
        {
            if let Err(e) = p.flush().await {
                stopped = Some(format!("{e:#}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(why) = p.ended() {
            stopped = Some(format!(
                "relay closed the attacker socket after {:.1} s ({why})",
                started.elapsed().as_secs_f64()
            ));
            break;
        }
        if stopped.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            stopped = Some(format!("stopped at the {} s bound", ATTACK_SPAN.as_secs()));
            break;
        }
        let f = p.sync_frame(DocumentId::random(&mut rng), data.clone());
        if let Err(e) = p.feed(f, BURST_BATCH).await {
            stopped = Some(format!("{e:#}"));
            break;
        }
        sent += 1;
    }
    if stopped.is_none() {
        if let Err(e) = p.flush().await {
            stopped = Some(format!("{e:#}"));
        }
    }
    // The relay answers every one of them; wait (bounded) until it has, to see how fast
    // it gets through them.
    while p.frames_read() < sent as u64 && Instant::now() < deadline && p.ended().is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let answered = p.frames_read();
    let mut notes = vec![format!(
        "{sent} of {count} docs sent, {answered} answers in {:.1} s ({}/s)",
        took.as_secs_f64(),
        (answered as f64 / took.as_secs_f64().max(0.001)) as u64
    )];
    notes.extend(stopped);
    Ok(notes)
}

/// One sync message carrying one change that expands enormously.
async fn bomb(
    t: &Target,
    message: Vec<u8>,
    change_bytes: usize,
    chars: usize,
) -> anyhow::Result<Vec<String>> {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut p = Attacker::join(&t.url, "attacker-bomb").await?;
    let doc = DocumentId::random(&mut rng);
    let sent = Instant::now();
    let f = p.sync_frame(doc, message);
    p.send(f).await?;
    let answer = p.recv_until(sent + ANSWER_LIMIT, about(doc)).await;
    Ok(vec![
        format!("change {} KB holding {chars} chars", change_bytes / 1000),
        answer_note(answer, sent, ANSWER_LIMIT),
    ])
}

/// Two sockets that open the victim's document and never read again, while a third
/// floods the document with big ephemeral messages.
async fn slow_readers(t: &Target, count: usize, bytes: usize) -> anyhow::Result<Vec<String>> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut slow = Vec::new();
    for i in 1..=2 {
        let mut s = Attacker::join(&t.url, &format!("attacker-slow-{i}")).await?;
        let f = s.request_frame(t.victim_doc, empty_request_message());
        s.send(f).await?;
        slow.push(s);
    }
    let mut flood = Attacker::join(&t.url, "attacker-flood").await?;
    flood.read();
    let mut payload = vec![0u8; bytes];
    rng.fill(&mut payload[..]);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut notes = Vec::new();
    while (sent as usize) < count {
        if started.elapsed() >= ATTACK_SPAN - Duration::from_secs(4) {
            notes.push("stopped at the time bound".to_owned());
            break;
        }
        let f = flood.ephemeral_frame(
            t.victim_doc,
            "attacker-flood".into(),
            sent + 1,
            payload.clone(),
        );
        if let Err(e) = flood.feed(f, 8).await {
            notes.push(format!("{e:#}"));
            break;
        }
        sent += 1;
    }
    let _ = flood.flush().await;
    notes.insert(
        0,
        format!(
            "{sent} x {} KiB sent in {:.1} s",
            bytes / 1024,
            started.elapsed().as_secs_f64()
        ),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut closed = 0;
    for s in &mut slow {
        if s.closed_within(Duration::from_millis(1500)).await.is_some() {
            closed += 1;
        }
    }
    notes.push(format!("relay closed {closed} of 2 slow readers"));
    Ok(notes)
}

/// `count` ephemeral messages with huge session ids about the attacker's own document.
async fn big_session_ids(t: &Target, count: usize, len: usize) -> anyhow::Result<Vec<String>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut p = Attacker::join(&t.url, "attacker-sessions").await?;
    let own = p.create_own_document(&mut rng).await?;
    let base = "s".repeat(len);
    let started = Instant::now();
    let mut sent = 0;
    let mut notes = Vec::new();
    while sent < count {
        if started.elapsed() >= ATTACK_SPAN {
            notes.push("stopped at the time bound".to_owned());
            break;
        }
        let session = format!("{sent:08}{}", &base[8.min(len)..]);
        let f = p.ephemeral_frame(own, session, 1, vec![0; 16]);
        if let Err(e) = p.feed(f, 4).await {
            notes.push(format!("{e:#}"));
            break;
        }
        sent += 1;
    }
    let _ = p.flush().await;
    notes.insert(
        0,
        format!(
            "{sent} x {} KiB session ids sent in {:.1} s",
            len / 1024,
            started.elapsed().as_secs_f64()
        ),
    );
    if let Some(why) = p.closed_within(Duration::from_millis(500)).await {
        notes.push(format!("attacker socket closed ({why})"));
    }
    Ok(notes)
}

/// A burst of small ephemeral messages about the victim's document.
async fn ephemeral_flood(t: &Target, count: usize) -> anyhow::Result<Vec<String>> {
    let mut p = Attacker::join(&t.url, "attacker-ephemeral").await?;
    p.read();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut notes = Vec::new();
    while (sent as usize) < count {
        if started.elapsed() >= ATTACK_SPAN {
            notes.push("stopped at the time bound".to_owned());
            break;
        }
        let f = p.ephemeral_frame(
            t.victim_doc,
            "attacker-ephemeral".into(),
            sent + 1,
            vec![7; 64],
        );
        if let Err(e) = p.feed(f, BURST_BATCH).await {
            notes.push(format!("{e:#}"));
            break;
        }
        sent += 1;
    }
    let _ = p.flush().await;
    notes.insert(0, format!("{sent} sent in {} ms", ms(started.elapsed())));
    // Let the relay forward what it accepted before the attacker leaves.
    if let Some(why) = p.closed_within(Duration::from_secs(2)).await {
        notes.push(format!("attacker socket closed ({why})"));
    }
    Ok(notes)
}

/// Opens up to `count` TCP connections to `addr`, 100 at a time, each given
/// [`IO_TIMEOUT`] to connect; stops early at `deadline`.
async fn open_many(addr: SocketAddr, count: usize, deadline: Instant) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count && Instant::now() < deadline {
        let batch = (count - out.len()).min(100);
        let mut set = JoinSet::new();
        for _ in 0..batch {
            set.spawn(tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr)));
        }
        let mut failed = 0;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(Ok(s))) => out.push(s),
                _ => failed += 1,
            }
        }
        if failed == batch {
            break;
        }
    }
    out
}

/// How many of `streams` the other side has closed (read returns end of stream, an
/// answer, or an error within a moment), counted without blocking on the open ones.
async fn count_closed(streams: &mut [TcpStream]) -> usize {
    let mut closed = 0;
    let mut buf = [0u8; 1024];
    for s in streams {
        match tokio::time::timeout(Duration::from_millis(2), s.read(&mut buf)).await {
            Err(_) => {}
            Ok(_) => closed += 1,
        }
    }
    closed
}

async fn timed_metrics(addr: SocketAddr) -> String {
    match http_get(addr, "/metrics", Duration::from_secs(10)).await {
        Ok((code, took)) => format!("GET /metrics {code} in {} ms", ms(took)),
        Err(e) => format!("GET /metrics failed: {e:#}"),
    }
}

/// `count` connections that send half an HTTP request and stall for `hold`.
async fn half_sent_http(t: &Target, count: usize, hold: Duration) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let mut streams = open_many(t.addr, count, started + Duration::from_secs(5)).await;
    let opened = streams.len();
    let partial = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        t.addr
    );
    let mut written = 0;
    for s in &mut streams {
        if let Ok(Ok(())) = tokio::time::timeout(IO_TIMEOUT, s.write_all(partial.as_bytes())).await
        {
            written += 1;
        }
    }
    tokio::time::sleep(hold / 2).await;
    let during = timed_metrics(t.addr).await;
    tokio::time::sleep_until((started + hold).into()).await;
    let closed = count_closed(&mut streams).await;
    Ok(vec![
        format!("{opened} of {count} opened, {written} half-requests sent"),
        format!(
            "after {} s the relay had closed {closed} of them",
            started.elapsed().as_secs()
        ),
        format!("during: {during}"),
    ])
}

/// `count` connections that never send a byte, held for `hold`; /metrics timed during.
async fn silent_tcp(t: &Target, count: usize, hold: Duration) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let mut streams = open_many(t.addr, count, started + Duration::from_secs(8)).await;
    let opened = streams.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = timed_metrics(t.addr).await;
    let until = (started + hold).max(Instant::now());
    tokio::time::sleep_until(until.into()).await;
    let closed = count_closed(&mut streams).await;
    Ok(vec![
        format!("{opened} of {count} opened"),
        format!("during: {during}"),
        format!("relay closed {closed} by the end"),
    ])
}

/// What became of one takeover socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// The join was refused (with an `error`), or the connection failed.
    Refused,
    /// Accepted, then replaced by a later join: closed with an `error` frame first.
    ClosedWithError,
    /// Accepted, then closed without a word.
    ClosedSilently,
    /// Accepted and still open at the end.
    Open,
}

/// One socket joining as `peer` that then waits for its close (until `end`).
async fn takeover(url: String, peer: &'static str, mut end: watch::Receiver<bool>) -> Fate {
    let Ok(ws) = open_socket(&url).await else {
        return Fate::Refused;
    };
    let (mut sink, mut stream) = ws.split();
    let sent = tokio::time::timeout(
        IO_TIMEOUT,
        sink.send(WsMessage::Binary(join_frame(peer).into())),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return Fate::Refused;
    }
    match await_join(&mut stream).await {
        Ok(JoinAnswer::Accepted) => {}
        _ => return Fate::Refused,
    }
    let mut saw_error = false;
    loop {
        tokio::select! {
            next = stream.next() => match next {
                Some(Ok(WsMessage::Binary(b))) => {
                    if matches!(Message::decode(&b), Ok(Message::Error { .. })) {
                        saw_error = true;
                    }
                }
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => {
                    return if saw_error { Fate::ClosedWithError } else { Fate::ClosedSilently };
                }
                Some(Ok(_)) => {}
            },
            _ = end.wait_for(|e| *e) => return Fate::Open,
        }
    }
}

/// `count` joins with the victim B's peer id within `span`, then one join as the relay.
async fn takeovers(t: &Target, count: usize, span: Duration) -> anyhow::Result<Vec<String>> {
    let (end_tx, end_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let started = Instant::now();
    for i in 0..count {
        let at = started + span.mul_f64(i as f64 / count as f64);
        tokio::time::sleep_until(at.into()).await;
        set.spawn(takeover(t.url.clone(), PEER_B, end_rx.clone()));
    }
    let joins_took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let relay_join = {
        let ws = open_socket(&t.url)
            .await
            .context("connecting as the relay")?;
        let (mut sink, mut stream) = ws.split();
        tokio::time::timeout(
            IO_TIMEOUT,
            sink.send(WsMessage::Binary(join_frame(RELAY).into())),
        )
        .await
        .context("sending join")??;
        match await_join(&mut stream).await {
            Ok(JoinAnswer::Accepted) => "accepted".to_owned(),
            Ok(JoinAnswer::Refused(why)) => {
                format!("refused ({})", why.chars().take(60).collect::<String>())
            }
            Ok(JoinAnswer::Closed) => "closed without answer".to_owned(),
            Err(e) => format!("{e:#}"),
        }
    };
    let _ = end_tx.send(true);
    let mut fates = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline.into(), set.join_next()).await {
        fates.push(r.unwrap_or(Fate::Refused));
    }
    let n = |f: Fate| fates.iter().filter(|x| **x == f).count();
    Ok(vec![
        format!("{count} joins as victim B in {} ms", ms(joins_took)),
        format!(
            "replaced: {} with error frame, {} silently; {} refused; {} open at end",
            n(Fate::ClosedWithError),
            n(Fate::ClosedSilently),
            n(Fate::Refused),
            n(Fate::Open)
        ),
        format!("join as {RELAY}: {relay_join}"),
    ])
}
