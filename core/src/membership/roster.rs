//! The membership view members see: the relay writes each group's roster document from
//! its membership state, and nobody else may.

use super::{GroupId, MemberStatus, Membership};
use crate::engine::DocumentUpdate;
use crate::ids::DocumentId;
use crate::model::roster::{
    self, CodeOfConduct, MemberStatus as ShownStatus, RosterMember, RosterView,
};

impl Membership {
    /// The roster document of `group` and the update that makes it equal to the membership
    /// state (idempotent: an update of a roster that already matches writes nothing). The
    /// host hands it to `Engine::update_document`.
    pub fn roster_update(&self, group: &GroupId) -> Option<(DocumentId, DocumentUpdate)> {
        let (doc, members, coc) = self.roster(group)?;
        let view = RosterView {
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
        };
        let group = group.clone();
        let update: DocumentUpdate = Box::new(move |tx| match roster::reconcile(tx, &view) {
            Ok(ops) => tracing::debug!(%group, doc = %doc, ops, "roster written"),
            // Ids only: the view holds pseudonyms and the code of conduct.
            Err(e) => {
                tracing::error!(%group, doc = %doc, error = %e, "the roster could not be written")
            }
        });
        Some((doc, update))
    }
}
