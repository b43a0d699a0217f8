//! The admin API and `cairn-relay admin` through the real binary on loopback: one relay
//! (its log captured at trace level), the CLI run a handful of times with the token in a
//! file or the environment, never on the command line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use common::members::{call, redeem, Device};
use common::{doc_id, http_get, Raw, Seen, SyncOutcome, SOON};
use serde_json::{json, Value};

const COC_CANARY: &str = "canary-coc-5d1e: be gentle with each other";
const ORGANISER_CANARY: &str = "canary-pseud-organiser-8b2c";
const MEMBER_CANARY: &str = "canary-pseud-member-41f7";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The relay binary serving `data`, its output in `log`.
struct RelayProcess {
    child: Child,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl RelayProcess {
    async fn start(data: &Path, log: &Path, extra: &[&str]) -> RelayProcess {
        let (port, admin_port) = (free_port(), free_port());
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--data")
            .arg(data)
            .args(extra)
            .env("CAIRN_LOG", "trace")
            .env_remove("CAIRN_ADMIN_TOKEN")
            .env_remove("CAIRN_ADMIN_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn the relay binary");
        let mut relay = RelayProcess {
            child,
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            admin: format!("127.0.0.1:{admin_port}").parse().expect("addr"),
        };
        let deadline = Instant::now() + SOON;
        while http_get(relay.admin, "/metrics").await.map(|r| r.0) != Some(200) {
            assert!(Instant::now() < deadline, "the relay did not start");
            assert!(
                relay.child.try_wait().expect("try_wait").is_none(),
                "the relay exited"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        relay
    }

    fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one CLI run printed.
struct Cli {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cairn-relay admin --url URL <args>` with `env` (the token's source).
async fn cli(url: &str, env: &[(&str, &str)], args: &[&str]) -> Cli {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairn-relay"));
    command
        .args(["admin", "--url", url])
        .args(args)
        .env_remove("CAIRN_ADMIN_TOKEN")
        .env_remove("CAIRN_ADMIN_TOKEN_FILE")
        .env_remove("CAIRN_DATA")
        .env("CAIRN_LOG", "warn")
        .stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || command.output().expect("run the CLI"))
        .await
        .expect("CLI thread");
    Cli {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The value after `label` on a line of `text`.
fn after(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {text:?}"))
        .trim()
        .trim_end_matches('.')
        .to_owned()
}

fn device(v: &Value) -> Device {
    Device {
        token: v["token"].as_str().expect("token").to_owned(),
        member: v["member_id"].as_str().expect("member").to_owned(),
        device: v["device_id"].as_str().expect("device").to_owned(),
    }
}

async fn accept(addr: std::net::SocketAddr, who: &Device, group: &str) {
    let coc = call(
        addr,
        "GET",
        &format!("/v1/groups/{group}/code-of-conduct"),
        Some(&who.token),
        None,
    )
    .await
    .expect(200);
    assert_eq!(coc["text"], COC_CANARY);
    call(
        addr,
        "POST",
        &format!("/v1/groups/{group}/code-of-conduct/accept"),
        Some(&who.token),
        Some(&json!({"version": coc["version"]})),
    )
    .await
    .expect(204);
}

async fn register(
    addr: std::net::SocketAddr,
    who: &Device,
    group: &str,
    n: u64,
) -> common::members::Resp {
    call(
        addr,
        "POST",
        &format!("/v1/groups/{group}/documents"),
        Some(&who.token),
        Some(&json!({"document_id": doc_id(n).to_string(), "kind": "thread"})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_group_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("relay.log");
    let backups = dir.path().join("backups");
    let relay = RelayProcess::start(
        &data,
        &log,
        &[
            "--group-max-documents",
            "3",
            "--backup-dir",
            backups.to_str().expect("utf-8"),
        ],
    )
    .await;
    let url = relay.admin_url();
    let token_file: PathBuf = data.join("admin-token");
    let operator_token = std::fs::read_to_string(&token_file)
        .expect("the relay made a token file")
        .trim()
        .to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "only the relay's user may read the token"
        );
    }

    // Without the operator token, or with a wrong one: 401.
    let none = call(relay.admin, "GET", "/admin/v1/groups", None, None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    assert_eq!(none.code(), "unauthorized");
    assert_eq!(
        call(relay.admin, "GET", "/admin/v1/nothing-here", None, None)
            .await
            .status,
        401,
        "nothing under the admin address is probed without the token"
    );
    let wrong = call(
        relay.admin,
        "GET",
        "/admin/v1/groups",
        Some("cairnop_wrong"),
        None,
    )
    .await;
    assert_eq!(wrong.status, 401);
    let bad = cli(
        &url,
        &[("CAIRN_ADMIN_TOKEN", "not-the-operator-token-at-all")],
        &["groups"],
    )
    .await;
    assert!(!bad.ok, "a wrong token fails the CLI");
    assert!(bad.stderr.contains("401"), "{}", bad.stderr);
    // The admin API is not on the relay's public address.
    assert_eq!(
        call(
            relay.addr,
            "GET",
            "/admin/v1/groups",
            Some(&operator_token),
            None
        )
        .await
        .status,
        404
    );

    // Create a group and its organiser invite through the CLI (token from the data dir).
    let coc_file = dir.path().join("coc.txt");
    std::fs::write(&coc_file, COC_CANARY).expect("write coc");
    let data_arg = data.to_str().expect("utf-8");
    let made = cli(
        &url,
        &[],
        &[
            "--data",
            data_arg,
            "create-group",
            "--code-of-conduct-file",
            coc_file.to_str().expect("utf-8"),
        ],
    )
    .await;
    assert!(made.ok, "create-group: {}", made.stderr);
    let group = after(&made.stdout, "Created group");
    let code = after(&made.stdout, "code:");
    let organiser = device(
        &redeem(relay.addr, &code, ORGANISER_CANARY)
            .await
            .expect(200),
    );
    accept(relay.addr, &organiser, &group).await;

    // A member joins through /v1; their credential is no operator token.
    let invite = call(
        relay.addr,
        "POST",
        &format!("/v1/groups/{group}/invites"),
        Some(&organiser.token),
        Some(&json!({"role": "member", "expires_in_secs": 3600, "max_uses": 1})),
    )
    .await
    .expect(201);
    let member = device(
        &redeem(
            relay.addr,
            invite["code"].as_str().expect("code"),
            MEMBER_CANARY,
        )
        .await
        .expect(200),
    );
    accept(relay.addr, &member, &group).await;
    for token in [&member.token, &organiser.token] {
        assert_eq!(
            call(relay.admin, "GET", "/admin/v1/groups", Some(token), None)
                .await
                .status,
            401,
            "a device credential is not an operator token"
        );
    }

    // Quotas: the roster and two documents fill a group of 3; the next is refused with
    // 429 quota_exceeded and what was acknowledged before stays.
    register(relay.addr, &member, &group, 1).await.expect(201);
    let mut ws = Raw::joined_as(&format!("ws://{}/", relay.addr), &member).await;
    let mut am = Automerge::new();
    let mut tx = am.transaction();
    tx.put(ROOT, "agenda", "first item").expect("put");
    tx.commit();
    assert!(matches!(
        ws.sync_doc(doc_id(1), &mut am, &mut automerge::sync::State::new())
            .await,
        SyncOutcome::Acknowledged(_)
    ));
    register(relay.addr, &member, &group, 2).await.expect(201);
    let refused = register(relay.addr, &member, &group, 3).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.code(), "quota_exceeded");
    // A fresh copy from the relay (to the organiser: a second socket of the same device
    // would replace the first): its heads still hold the acknowledged change.
    let mut ws2 = Raw::joined_as(&format!("ws://{}/", relay.addr), &organiser).await;
    match ws2
        .sync_doc(
            doc_id(1),
            &mut Automerge::new(),
            &mut automerge::sync::State::new(),
        )
        .await
    {
        SyncOutcome::Acknowledged(heads) => assert_eq!(heads, am.get_heads()),
        SyncOutcome::Unavailable => panic!("the acknowledged document is gone"),
    }
    drop(ws2);
    // The member's one remaining socket is open...
    common::wait_metric(relay.addr, "cairn_sockets", |n| n == 1.0).await;

    // ...and suspending through the CLI has closed it by the time the CLI returns.
    let env_token = [("CAIRN_ADMIN_TOKEN", operator_token.as_str())];
    let suspended = cli(&url, &env_token, &["suspend", &group, &member.member]).await;
    assert!(suspended.ok, "suspend: {}", suspended.stderr);
    let (_, metrics) = http_get(relay.admin, "/metrics").await.expect("metrics");
    assert_eq!(
        common::metric_value(&metrics, "cairn_sockets"),
        Some(0.0),
        "the socket was closed before the call answered"
    );
    // Frames of the earlier sync may come first; then the close.
    assert!(
        matches!(ws.drain(SOON).await.last(), Some(Seen::Closed)),
        "the suspended member's socket is closed"
    );
    let removed = cli(&url, &env_token, &["remove", &group, &member.member]).await;
    assert!(removed.ok, "remove: {}", removed.stderr);
    let revoked = cli(
        &url,
        &env_token,
        &["revoke", &member.member, &member.device],
    )
    .await;
    assert!(revoked.ok, "revoke: {}", revoked.stderr);
    assert_eq!(
        call(relay.addr, "GET", "/v1/devices", Some(&member.token), None)
            .await
            .status,
        401,
        "the revoked device's credential is refused"
    );

    // Listing shows the counts: the organiser active, the removed member counted or gone.
    let list = cli(&url, &env_token, &["groups"]).await;
    assert!(list.ok, "groups: {}", list.stderr);
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&group))
        .unwrap_or_else(|| panic!("the group is listed: {}", list.stdout));
    assert!(line.contains("members 1 active"), "{line}");
    assert!(line.contains("documents 3 of 3"), "{line}");

    // Erasure: the member is gone from the group's roster as the relay serves it.
    let erased = cli(&url, &env_token, &["erase", &member.member]).await;
    assert!(erased.ok, "erase: {}", erased.stderr);
    assert!(
        erased.stdout.contains("cannot be recalled"),
        "{}",
        erased.stdout
    );
    let members = call(
        relay.addr,
        "GET",
        &format!("/v1/groups/{group}/members"),
        Some(&organiser.token),
        None,
    )
    .await
    .expect(200);
    assert!(!members.to_string().contains(&member.member), "{members}");
    assert!(!members.to_string().contains(MEMBER_CANARY), "{members}");
    let again = cli(&url, &env_token, &["erase", &member.member]).await;
    assert!(
        !again.ok && again.stderr.contains("404"),
        "{}",
        again.stderr
    );

    // Rotation: the old token stops working, the file holds the new one.
    let rotated = cli(
        &url,
        &[(
            "CAIRN_ADMIN_TOKEN_FILE",
            token_file.to_str().expect("utf-8"),
        )],
        &["rotate-token"],
    )
    .await;
    assert!(rotated.ok, "rotate-token: {}", rotated.stderr);
    let new_token = std::fs::read_to_string(&token_file)
        .expect("token")
        .trim()
        .to_owned();
    assert_ne!(new_token, operator_token);
    assert_eq!(
        call(
            relay.admin,
            "GET",
            "/admin/v1/groups",
            Some(&operator_token),
            None
        )
        .await
        .status,
        401
    );
    call(
        relay.admin,
        "GET",
        "/admin/v1/groups",
        Some(&new_token),
        None,
    )
    .await
    .expect(200);

    // Delete and restore the group, take a backup, show the defaults.
    let env_token = [("CAIRN_ADMIN_TOKEN", new_token.as_str())];
    let deleted = cli(&url, &env_token, &["delete-group", &group]).await;
    assert!(deleted.ok, "delete-group: {}", deleted.stderr);
    assert_eq!(
        call(
            relay.addr,
            "GET",
            &format!("/v1/groups/{group}/members"),
            Some(&organiser.token),
            None
        )
        .await
        .status,
        404,
        "nobody sees a deleted group"
    );
    let list = cli(&url, &env_token, &["groups"]).await;
    assert!(list.stdout.contains("DELETED"), "{}", list.stdout);
    let restored = cli(&url, &env_token, &["restore-group", &group]).await;
    assert!(restored.ok, "restore-group: {}", restored.stderr);
    call(
        relay.addr,
        "GET",
        &format!("/v1/groups/{group}/members"),
        Some(&organiser.token),
        None,
    )
    .await
    .expect(200);
    let backup = cli(&url, &env_token, &["backup"]).await;
    assert!(backup.ok, "backup: {}", backup.stderr);
    let file = after(&backup.stdout, "Backup written:");
    let file = file.split(" (").next().expect("path");
    assert!(
        Path::new(file).starts_with(&backups) && Path::new(file).exists(),
        "{file}"
    );
    let defaults = cli(&url, &env_token, &["quota"]).await;
    assert!(
        defaults.stdout.contains("documents per group 3"),
        "{}",
        defaults.stdout
    );
    // Raising the group's own limit lets the refused document in.
    let raised = cli(&url, &env_token, &["quota", &group, "--documents", "4"]).await;
    assert!(raised.ok, "quota: {}", raised.stderr);
    assert!(
        raised.stdout.contains("documents 3 of 4"),
        "{}",
        raised.stdout
    );
    register(relay.addr, &organiser, &group, 3)
        .await
        .expect(201);

    // Wrong credentials on /v1 and at the upgrade: one audit entry for the claimed
    // identity (counted), one for those that do not parse.
    // The organiser's credential with another secret: it claims the organiser.
    let mut forged = organiser.token.clone();
    let last = forged.pop().expect("a token");
    forged.push(if last == '0' { '1' } else { '0' });
    for _ in 0..3 {
        call(relay.addr, "GET", "/v1/devices", Some(&forged), None).await;
    }
    call(relay.addr, "GET", "/v1/devices", Some("garbage"), None).await;

    // The audit export: the expected kinds, ids only (checked for canaries at the end).
    let audit = cli(&url, &env_token, &["audit"]).await;
    assert!(audit.ok, "audit: {}", audit.stderr);
    let entries: Vec<Value> = audit
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON entry per line"))
        .collect();
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in [
        "group_created",
        "invite_created",
        "invite_redeemed",
        "suspended",
        "removed",
        "device_revoked",
        "operator_token_rotated",
        "group_deleted",
        "group_restored",
        "backup_taken",
        "member_erased",
        "quota_changed",
    ] {
        assert!(
            kinds.contains(&kind),
            "no {kind} in the audit log: {kinds:?}"
        );
    }
    assert_eq!(
        kinds.iter().filter(|k| **k == "backup_taken").count(),
        1,
        "one backup, one entry"
    );
    let failures: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "credential_failed")
        .collect();
    assert!(
        failures
            .iter()
            .any(|e| e["member"] == organiser.member.as_str() && e["count"] == 3),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|e| e["member"].is_null() && e["count"] == 1),
        "{failures:?}"
    );
    let suspension = entries
        .iter()
        .find(|e| e["kind"] == "suspended")
        .expect("suspended");
    assert_eq!(suspension["member"], member.member.as_str());
    assert_eq!(suspension["actor"]["type"], "operator");

    // The admin address serves the metrics an operator alerts on.
    let (status, metrics) = http_get(relay.admin, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    let free = common::metric_value(&metrics, "cairn_disk_free_bytes").expect("disk free");
    assert!(free > 0.0);
    for name in [
        "cairn_last_backup_timestamp_seconds",
        "cairn_audit_entries_total",
    ] {
        let v = common::metric_value(&metrics, name).unwrap_or(0.0);
        assert!(v > 0.0, "{name} is {v}");
    }
    assert_eq!(
        common::metric_value(&metrics, "cairn_groups_pending_deletion"),
        Some(0.0)
    );
    assert!(
        metrics.contains("cairn_backups_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cairn_quota_exceeded_total{quota=\"documents_per_group\"} 1"),
        "the refused registration is counted by its quota: {metrics}"
    );

    drop(relay);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("TRACE"),
        "the log was captured at trace level"
    );
    for secret in [
        operator_token.as_str(),
        new_token.as_str(),
        &organiser.token,
        &member.token,
        &code,
        ORGANISER_CANARY,
        MEMBER_CANARY,
        COC_CANARY,
    ] {
        assert!(
            !text.contains(secret),
            "the relay's log holds a secret or a name"
        );
    }
    for secret in [
        operator_token.as_str(),
        &organiser.token,
        &member.token,
        &code,
        ORGANISER_CANARY,
        MEMBER_CANARY,
        COC_CANARY,
    ] {
        assert!(
            !audit.stdout.contains(secret),
            "the audit log holds a secret or a name"
        );
    }
    for printed in [&made.stdout, &list.stdout, &rotated.stdout, &audit.stdout] {
        assert!(!printed.contains(&operator_token) && !printed.contains(&new_token));
    }
}

#[test]
fn the_admin_api_refuses_other_machines_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Refused at configuration, before anything is bound.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:1",
            "--admin-listen",
            "0.0.0.0:1",
            "--data",
        ])
        .arg(dir.path().join("data"))
        .env("CAIRN_LOG", "warn")
        .env_remove("CAIRN_ADMIN_ALLOW_REMOTE")
        .output()
        .expect("run the relay");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-allow-remote"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing was started");
}
