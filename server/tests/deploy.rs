//! The sample deployment files in `deploy/`: the systemd unit passes `systemd-analyze
//! verify` with its hardening, and the reverse-proxy sample keeps query strings (the
//! `?token=` credential) out of its access log.

use std::path::Path;
use std::process::Command;

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = deploy("cairn-relay.service");
    for setting in [
        "User=cairn",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/cairn /var/backups/cairn",
        "ExecStart=/usr/local/bin/cairn-relay serve",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == setting),
            "the unit lacks {setting}"
        );
    }
    assert!(
        !unit.contains("CAIRN_ADMIN_TOKEN="),
        "the token is not put in the unit"
    );
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("SKIPPED: systemd-analyze is not installed; the unit was not verified");
        return;
    };
    assert!(probe.status.success());
    // `verify` checks that ExecStart's binary exists: the same unit, pointing at the
    // binary this build made.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("cairn-relay.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/cairn-relay",
            env!("CARGO_BIN_EXE_cairn-relay"),
        ),
    )
    .expect("write the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    // Unknown or misplaced settings are only warnings to `verify`: none may name the unit.
    let about_ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cairn-relay.service"))
        .collect();
    assert!(
        about_ours.is_empty(),
        "warnings about the unit: {about_ours:?}"
    );
}

#[test]
fn the_proxy_sample_logs_paths_without_query_strings() {
    let conf = deploy("nginx.conf");
    let format = conf
        .split("log_format cairn")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("a log_format named cairn");
    assert!(format.contains("$uri"), "the log format names the path");
    for leaky in [
        "$request ",
        "$request\"",
        "$request_uri",
        "$args",
        "$query_string",
        "$arg_",
    ] {
        assert!(!format.contains(leaky), "the log format holds {leaky}");
    }
    assert!(conf.contains("access_log /var/log/nginx/cairn.access.log cairn;"));
    assert!(
        !conf
            .lines()
            .any(|l| l.trim_start().starts_with("access_log")
                && !l.contains(" cairn;")
                && !l.contains(" off;")),
        "every access log uses the cairn format"
    );
    for upgrade in [
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_http_version 1.1;",
    ] {
        assert!(conf.contains(upgrade), "the proxy lacks {upgrade}");
    }
}

#[test]
fn the_cluster_proxy_sample_hashes_organisations_drains_unready_relays_and_logs_no_queries() {
    let conf = deploy("haproxy-cluster.cfg");
    let setting = |name: &str| {
        conf.lines()
            .map(str::trim)
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` line"))
            .to_owned()
    };
    assert_eq!(setting("balance"), "balance url_param org");
    assert_eq!(setting("hash-type"), "hash-type consistent");
    assert_eq!(setting("option httpchk"), "option httpchk GET /readyz");
    assert!(conf.contains("http-check expect status 200"));
    // Every relay is health-checked.
    let servers: Vec<&str> = conf
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server "))
        .collect();
    assert!(servers.len() >= 2, "a cluster sample has several relays");
    assert!(servers.iter().all(|s| s.ends_with(" check")), "{servers:?}");
    // The log format has the path only: `?token=` never reaches the log.
    let format = setting("log-format");
    assert!(format.contains("%HPO"), "{format}");
    for leaky in ["%HU", "%HQ", "%r", "%{+Q}r", "%HP "] {
        assert!(
            !format.contains(leaky),
            "the log format holds {leaky}: {format}"
        );
    }
    assert!(conf.contains("deny if { path_beg /admin/ }"));
}
