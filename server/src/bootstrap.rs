//! `cairn-relay bootstrap`: the operator's first step, run with the relay stopped. It
//! creates the first group (no members yet) and its first organiser invite, whose code the
//! command prints to the operator's terminal: the only secret the relay ever prints, and
//! never to the log. Whoever redeems it becomes the group's organiser.
//!
//! On a relay that has groups it refuses, unless asked for a new organiser invite to an
//! existing group (recovery, when every organiser has lost their devices).

use std::sync::Arc;

use cairn_sync::membership::api::Invite;
use cairn_sync::membership::{GroupId, KvMembershipStore, Membership, MembershipError, Quotas};
use cairn_sync::store::{SledConfig, Storage};

use crate::api::{new_document_id, now_ms};
use crate::config::BootstrapArgs;
use crate::pg_store::{PgOptions, PgStore};
use crate::RelayError;

/// The code of conduct a group starts with when the operator gives none: short and
/// generic, for organisers to replace with their group's own.
pub const DEFAULT_CODE_OF_CONDUCT: &str = "\
We meet as peers. What is shared in this group stays in this group.
Speak from your own experience; listen without judging or advising unless asked.
Be kind. No harassment, discrimination or threats.
Facilitators may remove content and suspend or remove members who break these rules.";

/// sled page cache for the short-lived bootstrap: 16 MiB is plenty for a few records.
const BOOTSTRAP_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Longest bootstrap invite: 720 hours (30 days), the longest any invite may live.
const MAX_INVITE_HOURS: u64 = 720;

/// What bootstrap made.
#[derive(Debug)]
pub struct Bootstrapped {
    /// The group.
    pub group: GroupId,
    /// Whether the group was created now (false: a recovery invite to an existing one).
    pub new_group: bool,
    /// The organiser invite (its code is shown once).
    pub invite: Invite,
}

/// Runs `bootstrap` on the data directory in `args` (the relay must be stopped).
pub fn bootstrap(args: &BootstrapArgs) -> Result<Bootstrapped, RelayError> {
    if args.invite_hours == 0 || args.invite_hours > MAX_INVITE_HOURS {
        return Err(RelayError::Membership(MembershipError::BadRequest(
            "--invite-hours must be between 1 and 720",
        )));
    }
    let code_of_conduct = match &args.code_of_conduct_file {
        Some(path) => std::fs::read_to_string(path).map_err(RelayError::CodeOfConduct)?,
        None => DEFAULT_CODE_OF_CONDUCT.to_owned(),
    };
    let store: Arc<dyn Storage> = match args.store.trim() {
        "embedded" | "sled" => {
            std::fs::create_dir_all(&args.data).map_err(cairn_sync::store::StoreError::Io)?;
            Arc::new(crate::open_store(
                &args.data,
                &SledConfig {
                    cache_capacity: BOOTSTRAP_CACHE_BYTES,
                    ..SledConfig::default()
                },
            )?)
        }
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Arc::new(PgStore::connect(
                url,
                "bootstrap",
                PgOptions {
                    pool_size: 1,
                    op_timeout: std::time::Duration::from_secs(30),
                },
            )?)
        }
        _ => {
            return Err(RelayError::Membership(MembershipError::BadRequest(
                "--store must be `embedded` or a URL starting with postgres://",
            )))
        }
    };
    let membership = Membership::open(Arc::new(KvMembershipStore::new(store)), Quotas::default())?;
    let invite_secs = args.invite_hours.saturating_mul(3600);
    let made = match &args.new_organiser_invite {
        Some(group) => {
            let group = GroupId::from(group.as_str());
            let invite = membership
                .organiser_invite(&group, invite_secs, now_ms())
                .map_err(|e| match e {
                    MembershipError::NotFound => {
                        RelayError::Membership(MembershipError::BadRequest("no such group"))
                    }
                    other => other.into(),
                })?;
            tracing::info!(group = %group, "new organiser invite for an existing group");
            Bootstrapped {
                group,
                new_group: false,
                invite,
            }
        }
        None => {
            if membership.has_groups() {
                return Err(RelayError::AlreadyBootstrapped);
            }
            let (group, invite) =
                membership.bootstrap(&code_of_conduct, new_document_id(), invite_secs, now_ms())?;
            tracing::info!(group = %group, "first group created");
            Bootstrapped {
                group,
                new_group: true,
                invite,
            }
        }
    };
    // Every commit above was durable before it returned.
    Ok(made)
}
