//! `cairn-relay admin …`: the operator's command-line client of the admin API
//! ([`crate::admin`]). Each command is one HTTP/1.1 call to `--url` (default
//! `http://127.0.0.1:8081`, the relay's default `--admin-listen`), printed for a person.
//!
//! The operator token comes from `CAIRN_ADMIN_TOKEN`, else from a file: `--token-file`
//! (`CAIRN_ADMIN_TOKEN_FILE`), else `DIR/admin-token` for `--data DIR` (`CAIRN_DATA`,
//! default `cairn-data`, as `serve`). Never from the command line, where every user of the
//! machine could read it.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::{header, Method, Request};
use clap::{Args, Subcommand};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// Longest answer the client reads: 64 MiB (an audit page of 10,000 entries is far less).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// How long one call may take: 60 s; a backup: 1 hour (it copies the whole store).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// Audit entries fetched per call.
const AUDIT_PAGE: usize = 1000;

/// Flags of `cairn-relay admin`.
#[derive(Debug, Args, Clone)]
pub struct AdminArgs {
    /// The relay's admin address (its `--admin-listen`), plain HTTP.
    #[arg(long, env = "CAIRN_ADMIN_URL", default_value = "http://127.0.0.1:8081")]
    pub url: String,
    /// File holding the operator token (when `CAIRN_ADMIN_TOKEN` is not set).
    #[arg(long, env = "CAIRN_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The relay's data directory: the token is read from `DIR/admin-token`.
    #[arg(long, env = "CAIRN_DATA", default_value = "cairn-data")]
    pub data: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The admin commands.
#[derive(Debug, Subcommand, Clone)]
pub enum AdminCommand {
    /// List groups: ids, member and document counts, sizes, deletion.
    Groups,
    /// Create a group and print its first organiser invite (to this terminal only).
    CreateGroup {
        /// A UTF-8 file with the group's code of conduct (default: a short generic one).
        #[arg(long)]
        code_of_conduct_file: Option<PathBuf>,
        /// Hours the invite works (default 72).
        #[arg(long)]
        invite_hours: Option<u64>,
    },
    /// Print a new organiser invite to an existing group (when its organisers are gone).
    OrganiserInvite {
        /// The group.
        group: String,
        /// Hours the invite works (default 72).
        #[arg(long)]
        invite_hours: Option<u64>,
    },
    /// Suspend a member of a group (their sockets close before this returns).
    Suspend {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// Remove a member from a group.
    Remove {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// Revoke one device of a member.
    Revoke {
        /// The member.
        member: String,
        /// The device.
        device: String,
    },
    /// Erase a member: devices and memberships gone, their pseudonym gone from what the
    /// relay serves. Copies already on other members' phones cannot be recalled.
    Erase {
        /// The member.
        member: String,
    },
    /// Delete a group; it can be restored during the grace period, then it is destroyed.
    DeleteGroup {
        /// The group.
        group: String,
    },
    /// Restore a deleted group within its grace period.
    RestoreGroup {
        /// The group.
        group: String,
    },
    /// Show the default quotas, or one group's; with `--documents`/`--mb`, set the group's
    /// own limits (a limit left out returns to the relay's default).
    Quota {
        /// The group (none: the defaults).
        group: Option<String>,
        /// Documents the group may hold.
        #[arg(long, requires = "group")]
        documents: Option<usize>,
        /// MiB the group's documents may take.
        #[arg(long, requires = "group")]
        mb: Option<u64>,
    },
    /// Take an online backup into the relay's `--backup-dir`.
    Backup,
    /// Print the audit log as JSON lines (oldest first).
    Audit {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Replace the operator token (the relay writes the new one to its token file).
    RotateToken,
}

/// A failed command: what to print before exiting with status 1.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

fn fail(message: impl Into<String>) -> CliError {
    CliError(message.into())
}

/// The operator token: `CAIRN_ADMIN_TOKEN`, else the token file.
fn token(args: &AdminArgs) -> Result<String, CliError> {
    if let Ok(t) = std::env::var("CAIRN_ADMIN_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_owned());
        }
    }
    let file = args
        .token_file
        .clone()
        .unwrap_or_else(|| args.data.join("admin-token"));
    let text = std::fs::read_to_string(&file).map_err(|e| {
        fail(format!(
            "reading the operator token from {}: {e} (set CAIRN_ADMIN_TOKEN, --token-file, or --data to the relay's data directory)",
            file.display()
        ))
    })?;
    Ok(text.trim().to_owned())
}

/// The `host:port` of an `http://` URL, and its path prefix.
fn target(url: &str) -> Result<(String, String), CliError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(fail(format!(
            "--url {url}: the admin API speaks plain HTTP on its own address (http://HOST:PORT)"
        )));
    };
    let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        return Err(fail(format!("--url {url}: no host")));
    }
    let prefix = prefix.trim_end_matches('/');
    Ok((
        authority.to_owned(),
        if prefix.is_empty() {
            String::new()
        } else {
            format!("/{prefix}")
        },
    ))
}

/// One call: the answer's status and body.
async fn call(
    args: &AdminArgs,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), CliError> {
    let (authority, prefix) = target(&args.url)?;
    let exchange = async {
        let stream = TcpStream::connect(&authority).await.map_err(|e| {
            fail(format!(
                "connecting to {authority}: {e} (is the relay running with this --admin-listen?)"
            ))
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(format!("talking to {authority}: {e}")))?;
        tokio::spawn(connection);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(format!("{prefix}{path}"))
            .header(header::HOST, &authority)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body))
            .map_err(|e| fail(format!("building the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail(format!("calling {authority}: {e}")))?;
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(
            axum::body::Body::new(response.into_body()),
            MAX_ANSWER_BYTES,
        )
        .await
        .map_err(|e| fail(format!("reading the answer: {e}")))?;
        Ok((status, bytes.to_vec()))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        fail(format!(
            "{authority} did not answer within {} s",
            timeout.as_secs()
        ))
    })?
}

/// A call that must succeed: its JSON body (`Null` when empty), or the server's message.
async fn call_ok(
    args: &AdminArgs,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CliError> {
    let timeout = if path.ends_with("/backups") {
        BACKUP_TIMEOUT
    } else {
        CALL_TIMEOUT
    };
    let (status, bytes) = call(args, token, method, path, body, timeout).await?;
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let message = value["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    Err(fail(format!("the relay refused ({status}): {message}")))
}

fn print_invite(invite: &Value) {
    println!("Organiser invite (one use; give it only to the group's organiser):");
    println!("  code: {}", invite["code"].as_str().unwrap_or("?"));
    println!("  link: {}", invite["link"].as_str().unwrap_or("?"));
    println!(
        "  expires: Unix ms {}",
        invite["expires_ms"].as_u64().unwrap_or(0)
    );
    println!("Whoever redeems it in the app becomes an organiser of the group.");
}

fn quota_line(q: &Value) -> String {
    let mb = |b: &Value| {
        b.as_u64()
            .map_or("?".to_owned(), |b| (b / (1024 * 1024)).to_string())
    };
    format!(
        "documents {} of {}, MiB {} of {}",
        q["documents_used"]
            .as_u64()
            .map_or("-".into(), |n| n.to_string()),
        q["documents"]
            .as_u64()
            .map_or("?".into(), |n| n.to_string()),
        q.get("bytes_used").map_or("-".into(), mb),
        mb(&q["bytes"]),
    )
}

/// Runs one admin command against the relay.
pub async fn run(args: AdminArgs) -> Result<(), CliError> {
    let token = token(&args)?;
    let t = token.as_str();
    let a = &args;
    match &args.command {
        AdminCommand::Groups => {
            let list = call_ok(a, t, Method::GET, "/admin/v1/groups", None).await?;
            let groups = list["groups"].as_array().cloned().unwrap_or_default();
            if groups.is_empty() {
                println!("No groups yet (create one with `cairn-relay admin create-group`).");
            }
            for g in groups {
                let deleted = match g["deleted_ms"].as_u64() {
                    Some(ms) => format!(", DELETED at Unix ms {ms}"),
                    None => String::new(),
                };
                println!(
                    "{}  members {} active / {} total, documents {}, {}{deleted}",
                    g["group"].as_str().unwrap_or("?"),
                    g["members_active"],
                    g["members_total"],
                    g["documents"],
                    quota_line(&g["quota"]),
                );
            }
        }
        AdminCommand::CreateGroup {
            code_of_conduct_file,
            invite_hours,
        } => {
            let code_of_conduct = match code_of_conduct_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .map_err(|e| fail(format!("reading {}: {e}", f.display())))?,
                ),
                None => None,
            };
            let body = json!({"code_of_conduct": code_of_conduct, "invite_hours": invite_hours});
            let made = call_ok(a, t, Method::POST, "/admin/v1/groups", Some(body)).await?;
            println!(
                "Created group {}.",
                made["group_id"].as_str().unwrap_or("?")
            );
            print_invite(&made["invite"]);
        }
        AdminCommand::OrganiserInvite {
            group,
            invite_hours,
        } => {
            let body = json!({"invite_hours": invite_hours});
            let path = format!("/admin/v1/groups/{group}/organiser-invite");
            let invite = call_ok(a, t, Method::POST, &path, Some(body)).await?;
            println!("New organiser invite for group {group}.");
            print_invite(&invite);
        }
        AdminCommand::Suspend { group, member } => {
            let path = format!("/admin/v1/groups/{group}/members/{member}/suspend");
            call_ok(a, t, Method::POST, &path, None).await?;
            println!("Suspended member {member} in group {group}; their connections are closed.");
        }
        AdminCommand::Remove { group, member } => {
            let path = format!("/admin/v1/groups/{group}/members/{member}");
            call_ok(a, t, Method::DELETE, &path, None).await?;
            println!("Removed member {member} from group {group}; their connections are closed.");
        }
        AdminCommand::Revoke { member, device } => {
            let path = format!("/admin/v1/members/{member}/devices/{device}");
            call_ok(a, t, Method::DELETE, &path, None).await?;
            println!("Revoked device {device} of member {member}; its connections are closed.");
        }
        AdminCommand::Erase { member } => {
            let path = format!("/admin/v1/members/{member}");
            let erased = call_ok(a, t, Method::DELETE, &path, None).await?;
            println!(
                "Erased member {member} from {} group(s). Copies already on other members' devices cannot be recalled.",
                erased["groups"].as_array().map_or(0, Vec::len)
            );
        }
        AdminCommand::DeleteGroup { group } => {
            let path = format!("/admin/v1/groups/{group}");
            let deleted = call_ok(a, t, Method::DELETE, &path, None).await?;
            println!(
                "Deleted group {group}; it can be restored until Unix ms {}, then it is destroyed.",
                deleted["purge_after_ms"].as_u64().unwrap_or(0)
            );
        }
        AdminCommand::RestoreGroup { group } => {
            let path = format!("/admin/v1/groups/{group}/restore");
            call_ok(a, t, Method::POST, &path, None).await?;
            println!("Restored group {group}.");
        }
        AdminCommand::Quota {
            group,
            documents,
            mb,
        } => match group {
            None => {
                let q = call_ok(a, t, Method::GET, "/admin/v1/quotas", None).await?;
                println!(
                    "Defaults: documents per group {}, MiB per group {}, documents per member per hour {}",
                    q["documents_per_group"],
                    q["bytes_per_group"].as_u64().map_or(0, |b| b / (1024 * 1024)),
                    q["documents_per_member_per_hour"],
                );
            }
            Some(group) => {
                let path = format!("/admin/v1/groups/{group}/quota");
                let q = if documents.is_some() || mb.is_some() {
                    let body = json!({
                        "documents": documents,
                        "bytes": mb.map(|m| m.saturating_mul(1024 * 1024)),
                    });
                    call_ok(a, t, Method::PUT, &path, Some(body)).await?
                } else {
                    call_ok(a, t, Method::GET, &path, None).await?
                };
                println!("Group {group}: {}", quota_line(&q));
            }
        },
        AdminCommand::Backup => {
            let b = call_ok(a, t, Method::POST, "/admin/v1/backups", None).await?;
            println!(
                "Backup written: {} ({} keys, {} bytes)",
                b["path"].as_str().unwrap_or("?"),
                b["keys"],
                b["bytes"]
            );
        }
        AdminCommand::Audit { since } => {
            let mut since = *since;
            loop {
                let path = format!("/admin/v1/audit?since={since}&limit={AUDIT_PAGE}");
                let (status, bytes) = call(a, t, Method::GET, &path, None, CALL_TIMEOUT).await?;
                if status != 200 {
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    return Err(fail(format!(
                        "the relay refused ({status}): {}",
                        v["message"].as_str().unwrap_or("")
                    )));
                }
                let text = String::from_utf8_lossy(&bytes);
                let mut n = 0;
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    println!("{line}");
                    n += 1;
                    if let Some(seq) = serde_json::from_str::<Value>(line)
                        .ok()
                        .and_then(|v| v["seq"].as_u64())
                    {
                        since = since.max(seq);
                    }
                }
                if n < AUDIT_PAGE {
                    break;
                }
            }
        }
        AdminCommand::RotateToken => {
            let r = call_ok(a, t, Method::POST, "/admin/v1/token/rotate", None).await?;
            println!(
                "Rotated the operator token; the new one is in {} (the old one no longer works).",
                r["token_file"].as_str().unwrap_or("the relay's token file")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_plain_http_with_an_optional_prefix() {
        assert_eq!(
            target("http://127.0.0.1:8081").unwrap(),
            ("127.0.0.1:8081".to_owned(), String::new())
        );
        assert_eq!(
            target("http://[::1]:9/ops/").unwrap(),
            ("[::1]:9".to_owned(), "/ops".to_owned())
        );
        assert!(target("https://relay.example:8081").is_err());
        assert!(target("http:///x").is_err());
    }
}
