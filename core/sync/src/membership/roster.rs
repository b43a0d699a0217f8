//! The membership view members see: the relay writes each group's roster document from
//! its membership state, and nobody else may.

use super::{GroupId, MemberStatus, Membership};
use crate::docs::roster::{
    self, CodeOfConduct, MemberStatus as ShownStatus, RosterMember, RosterView,
};
use crate::engine::DocumentUpdate;
use crate::ids::DocumentId;

impl Membership {
    /// The roster document of `group` and the update that makes it equal to the membership
    /// state (idempotent: an update of a roster that already matches writes nothing). The
    /// host hands it to `Engine::update_document`. The update reads the state when it runs,
    /// not when it was made, so updates that run out of order still leave the latest view.
    pub fn roster_update(&self, group: &GroupId) -> Option<(DocumentId, DocumentUpdate)> {
        let (doc, _, _) = self.roster(group)?;
        let membership = self.clone();
        let group = group.clone();
        let update: DocumentUpdate = Box::new(move |tx| {
            let Some(view) = membership.roster_view(&group) else {
                return;
            };
            match roster::reconcile(tx, &view) {
                Ok(ops) => tracing::debug!(%group, doc = %doc, ops, "roster written"),
                // Ids only: the view holds pseudonyms and the code of conduct.
                Err(e) => {
                    tracing::error!(%group, doc = %doc, error = %e, "the roster could not be written")
                }
            }
        });
        Some((doc, update))
    }

    /// The membership view of `group` as its roster document shows it.
    pub fn roster_view(&self, group: &GroupId) -> Option<RosterView> {
        let (_, members, coc) = self.roster(group)?;
        Some(RosterView {
            members: members
                .into_iter()
                .map(|m| RosterMember {
                    member_id: m.member_id,
                    pseudonym: m.pseudonym,
                    role: m.role,
                    status: match m.status {
                        MemberStatus::Active => ShownStatus::Active,
                        MemberStatus::Suspended => ShownStatus::Suspended,
                        MemberStatus::Left => ShownStatus::Left,
                        MemberStatus::Removed => ShownStatus::Removed,
                    },
                    accepted_version: m.accepted_version,
                    joined_ms: i64::try_from(m.joined_ms).unwrap_or(i64::MAX),
                    expires_ms: m.expires_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                })
                .collect(),
            code_of_conduct: CodeOfConduct {
                version: coc.version,
                text: coc.text,
            },
        })
    }
}
