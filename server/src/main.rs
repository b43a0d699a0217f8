//! `cairn-relay serve`: see `cairn-relay --help`.

use std::io::IsTerminal;

use anyhow::Context;
use cairn_relay::config::{Cli, Command};
use clap::Parser;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Dependencies whose debug or trace output quotes what peers send: tungstenite dumps
/// every frame (peer ids, document bytes), automerge prints the ops it loads, sled the keys
/// it touches, and the HTTP stack requests and headers. They are capped at `info` whatever
/// `CAIRN_LOG` asks for, so "never log content" holds at every level.
const QUIET_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "axum",
    "axum_core",
    "tower",
    "h2",
    "automerge",
    "sled",
];

/// mimalloc returns freed pages to the OS; glibc's malloc keeps them (the relay stayed at
/// 850 MB resident after every document was evicted). 500 MB of automerge documents built
/// and dropped in a live process left, in resident MB: glibc 475 after 15 s; mimalloc 7
/// after 1 s (30 when other threads built them); jemalloc 12 after 15 s, but 465 when
/// other threads built them, as the relay's storage thread and workers do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::NewStorageId { data } => {
            let id = cairn_relay::new_storage_id(&data)
                .with_context(|| format!("opening {}", data.display()))?;
            println!("new storage id: {id}");
            return Ok(());
        }
        Command::Bootstrap(args) => {
            let made = cairn_relay::bootstrap::bootstrap(&args)
                .with_context(|| format!("bootstrapping {}", args.data.display()))?;
            print_invite(&made);
            return Ok(());
        }
        Command::Backup { data, to } => {
            let done = cairn_relay::backup::backup_offline(&data, &to)
                .with_context(|| format!("backing up {}", data.display()))?;
            println!(
                "backup written to {}: {} keys, {} bytes of values",
                done.path.display(),
                done.report.keys,
                done.report.bytes
            );
            return Ok(());
        }
        Command::Restore(args) => {
            let done = cairn_relay::backup::restore(&args)
                .with_context(|| format!("restoring into {}", args.data.display()))?;
            println!(
                "restored {} keys ({} bytes of values) from a backup taken at Unix ms {} into {}; new storage id {}",
                done.report.keys,
                done.report.bytes,
                done.header.taken_ms,
                args.data.display(),
                done.storage_id
            );
            let m = &done.membership;
            println!(
                "membership: {} changes recorded after the backup, {} applied again, {} not replayable (enrolments, links, codes of conduct); {} invites and link codes closed",
                m.newer, m.applied, m.not_replayable, m.codes_closed
            );
            println!("Devices enrolled after the backup redeem a new invite; organisers make new invites.");
            return Ok(());
        }
        Command::Admin(args) => {
            if let Err(e) = cairn_relay::admin_cli::run(args).await {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
            return Ok(());
        }
        Command::Migrate { from, to } => {
            let done = cairn_relay::migrate::migrate(&from, &to)
                .with_context(|| format!("migrating {} to PostgreSQL", from.display()))?;
            println!(
                "copied {} keys ({} bytes of values, {} documents) from {} to PostgreSQL and read every one back unchanged; storage id {}",
                done.keys,
                done.bytes,
                done.documents,
                from.display(),
                done.storage_id
            );
            println!("Start the relays with --store postgres://… (CAIRN_STORE); keep the old directory until they serve.");
            return Ok(());
        }
        Command::Check { data } => match cairn_relay::check(&data) {
            Ok(report) => {
                println!(
                    "{}: whole: {} keys, {} bytes of values, generation {}; matches its durable record",
                    data.display(),
                    report.keys,
                    report.bytes,
                    report.generation
                );
                return Ok(());
            }
            Err(e) => {
                eprintln!("{}: DAMAGED: {e}", data.display());
                std::process::exit(2);
            }
        },
    };
    let config = args.validate()?;
    raise_fd_limit();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    cairn_relay::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Shows the organiser invite on the operator's terminal (stdout, never the log).
fn print_invite(made: &cairn_relay::bootstrap::Bootstrapped) {
    if made.new_group {
        println!("Created group {}.", made.group);
    } else {
        println!("New organiser invite for group {}.", made.group);
    }
    println!();
    println!("Organiser invite (one use; give it only to the group's first organiser):");
    println!("  code: {}", made.invite.code);
    println!("  link: {}", made.invite.link);
    let hours = made
        .invite
        .expires_ms
        .saturating_sub(cairn_relay::api::now_ms())
        .div_ceil(3_600_000);
    println!(
        "  expires in about {hours} hours (Unix ms {})",
        made.invite.expires_ms
    );
    println!();
    println!("Whoever redeems it in the app becomes the group's organiser. Start the relay with `cairn-relay serve`.");
}

/// `CAIRN_LOG` (default `info`) with [`QUIET_TARGETS`] capped at `info`; plain text when
/// stdout is not a terminal (journald and log files get no colour codes).
fn init_logging() {
    let user = EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // The caps are a separate filter rather than directives added to the user's: a more
    // specific user directive (`tungstenite::protocol=trace`) would win over ours.
    let caps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(QUIET_TARGETS.iter().map(|t| (*t, LevelFilter::INFO)));
    tracing_subscriber::registry()
        .with(user)
        .with(caps)
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
        .init();
}

/// Raises the open-files soft limit to the hard limit. Every connection holds a
/// descriptor and the usual soft limit (1,024) is far below `--max-connections`: at it the
/// relay could not accept even `/metrics`. `run` then fits its connection cap to the limit.
fn raise_fd_limit() {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) if soft < hard => match rlimit::increase_nofile_limit(hard) {
            Ok(now) => tracing::info!(from = soft, to = now, "raised the open-files limit"),
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "could not raise the open-files limit")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-files limit"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
