//! Meeting formats as data: the standard meeting, Troika Consulting, Case Clinic, Peer Assist
//! and a Working Out Loud week, plus the de-identified template for a case brought for case
//! collaboration.
//!
//! Templates are plain serde structs, so an organisation can ship its own as JSON; the
//! built-in ones are functions here. [`apply_template`] writes a template's steps into a
//! meeting's agenda; each item keeps a [`FormatRef`] to its step.

use automerge::transaction::Transactable;
use serde::{Deserialize, Serialize};

use crate::model::meeting::{self, AgendaKind, FormatRef, ItemId, MeetingError, NewAgendaItem};
use cairn_sync::ids::MemberId;

/// A range of minutes (`min == max` for a fixed length).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minutes {
    /// Shortest.
    pub min: u32,
    /// Longest.
    pub max: u32,
}

const fn mins(min: u32, max: u32) -> Minutes {
    Minutes { min, max }
}

/// A role people take in a format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRole {
    /// The role's name ("client", "coach").
    pub name: String,
    /// How many people take it.
    pub count: Minutes,
    /// What they do.
    pub description: String,
}

/// One step of a format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateStep {
    /// What the step is called on the agenda.
    pub title: String,
    /// How long it takes.
    pub minutes: Minutes,
    /// What kind of agenda item it becomes.
    pub kind: AgendaKind,
    /// Who leads or speaks (a role name, or "everyone").
    pub who: String,
    /// How to run it (goes into the agenda item's notes).
    pub guidance: String,
}

/// A meeting format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingTemplate {
    /// Stable id, referenced from agenda items (e.g. `troika-consulting`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// What it is for.
    pub purpose: String,
    /// The roles people take.
    pub roles: Vec<TemplateRole>,
    /// The steps in order.
    pub steps: Vec<TemplateStep>,
}

impl MeetingTemplate {
    /// The shortest and longest total length.
    pub fn total_minutes(&self) -> Minutes {
        self.steps.iter().fold(mins(0, 0), |acc, s| {
            mins(acc.min + s.minutes.min, acc.max + s.minutes.max)
        })
    }
}

fn role(name: &str, min: u32, max: u32, description: &str) -> TemplateRole {
    TemplateRole {
        name: name.into(),
        count: mins(min, max),
        description: description.into(),
    }
}

fn step(
    title: &str,
    minutes: Minutes,
    kind: AgendaKind,
    who: &str,
    guidance: &str,
) -> TemplateStep {
    TemplateStep {
        title: title.into(),
        minutes,
        kind,
        who: who.into(),
        guidance: guidance.into(),
    }
}

/// The standard meeting: check-in, review of last meeting's actions, agenda, discussion,
/// check-out.
pub fn standard_meeting() -> MeetingTemplate {
    use AgendaKind::Admin;
    MeetingTemplate {
        id: "standard-meeting".into(),
        name: "Standard meeting".into(),
        purpose: "A regular meeting of the community of practice.".into(),
        roles: vec![
            role("facilitator", 1, 1, "Holds the space and keeps time."),
            role("recorder", 1, 1, "Takes the minutes."),
        ],
        steps: vec![
            step(
                "Check-in",
                mins(5, 10),
                Admin,
                "everyone",
                "A round: how is everyone arriving today?",
            ),
            step(
                "Review last actions",
                mins(5, 10),
                Admin,
                "facilitator",
                "Go through the actions carried from last time: done, still open, or dropped.",
            ),
            step(
                "Agenda",
                mins(5, 5),
                Admin,
                "facilitator",
                "Agree the items and their time boxes.",
            ),
            step(
                "Discussion",
                mins(30, 60),
                Admin,
                "everyone",
                "The items, in order.",
            ),
            step(
                "Check-out",
                mins(5, 10),
                Admin,
                "everyone",
                "A round: one thing each takes away; topics for next time.",
            ),
        ],
    }
}

/// Troika Consulting: a client and two consultants; 1–2 / 1–2 / 4–5 / 1–2 minutes.
pub fn troika_consulting() -> MeetingTemplate {
    use AgendaKind::Case;
    MeetingTemplate {
        id: "troika-consulting".into(),
        name: "Troika Consulting".into(),
        purpose: "Quick peer consulting on one member's challenge, in groups of three.".into(),
        roles: vec![
            role("client", 1, 1, "Brings a challenge (de-identified) and listens."),
            role("consultant", 2, 2, "Ask, then discuss the challenge while the client listens."),
        ],
        steps: vec![
            step("Client shares the challenge", mins(1, 2), Case, "client", "The client describes the challenge and what help they want."),
            step("Consultants ask clarifying questions", mins(1, 2), Case, "consultant", "Questions to understand, not yet advice."),
            step("Consultants discuss; client listens", mins(4, 5), Case, "consultant", "The client turns away and listens without speaking; consultants talk ideas and advice together."),
            step("Client shares what was useful", mins(1, 2), Case, "client", "The client turns back and says what was valuable."),
        ],
    }
}

/// Case Clinic: a case giver, coaches and a timekeeper; about 60–75 minutes including a
/// minute of stillness.
pub fn case_clinic() -> MeetingTemplate {
    use AgendaKind::Case;
    MeetingTemplate {
        id: "case-clinic".into(),
        name: "Case Clinic".into(),
        purpose: "Peer coaching on one member's de-identified case.".into(),
        roles: vec![
            role("case giver", 1, 1, "Brings a current case (de-identified) and a question."),
            role("coach", 2, 4, "Listens deeply, mirrors, and explores with the case giver."),
            role("timekeeper", 1, 1, "Keeps each step to time."),
        ],
        steps: vec![
            step("Roles and confidentiality", mins(5, 5), Case, "timekeeper", "Agree roles; remind everyone of the confidentiality agreement."),
            step("Case giver's intention statement", mins(12, 15), Case, "case giver", "The situation (de-identified), what is at stake, where the case giver is stuck, and the question for the group."),
            step("Clarifying questions", mins(5, 7), Case, "coach", "Only questions to understand the case."),
            step("Stillness", mins(1, 1), Case, "everyone", "One minute of silence: notice what resonates."),
            step("Mirroring", mins(10, 12), Case, "coach", "Each coach shares an image, feeling or gesture the case evoked; the case giver listens."),
            step("Generative dialogue", mins(20, 25), Case, "everyone", "Explore the case together, building on the mirrors."),
            step("Closing remarks", mins(7, 10), Case, "case giver", "Coaches' brief closing thoughts, then the case giver's reflections and next steps."),
        ],
    }
}

/// Peer Assist: a team learns from peers who have done similar work, before starting.
pub fn peer_assist() -> MeetingTemplate {
    use AgendaKind::Case;
    MeetingTemplate {
        id: "peer-assist".into(),
        name: "Peer Assist".into(),
        purpose: "Learn from peers' experience before starting a piece of work.".into(),
        roles: vec![
            role("host", 1, 4, "The member or team asking for help."),
            role("peer", 2, 8, "Members who have done something similar."),
            role(
                "facilitator",
                1,
                1,
                "Keeps the session on purpose and time.",
            ),
        ],
        steps: vec![
            step(
                "Purpose and introductions",
                mins(5, 10),
                Case,
                "facilitator",
                "What the host wants to learn; who is in the room.",
            ),
            step(
                "Host shares the context",
                mins(10, 15),
                Case,
                "host",
                "The plan, what is known, what worries them.",
            ),
            step(
                "Peers ask questions",
                mins(10, 15),
                Case,
                "peer",
                "Questions to understand the context.",
            ),
            step(
                "Peers share experience",
                mins(20, 30),
                Case,
                "peer",
                "What worked, what did not, and options — from experience.",
            ),
            step(
                "Host reflects back",
                mins(10, 15),
                Case,
                "host",
                "What the host heard and will use.",
            ),
            step(
                "Actions and thanks",
                mins(5, 10),
                Case,
                "facilitator",
                "Record actions; thank the peers.",
            ),
        ],
    }
}

/// Week `week` (1–12) of a Working Out Loud circle; `None` outside 1–12.
pub fn working_out_loud_week(week: u8) -> Option<MeetingTemplate> {
    use AgendaKind::Training;
    if !(1..=12).contains(&week) {
        return None;
    }
    Some(MeetingTemplate {
        id: format!("working-out-loud-week-{week}"),
        name: format!("Working Out Loud — week {week}"),
        purpose: "A circle of four or five members working towards personal goals by building relationships and sharing their work.".into(),
        roles: vec![role("circle member", 3, 5, "Each works towards a goal and supports the others.")],
        steps: vec![
            step("Check-in", mins(5, 10), Training, "everyone", "How did last week's commitments go?"),
            step(&format!("Week {week} exercises"), mins(30, 40), Training, "everyone", "Work through this week's exercises from the circle guide, together."),
            step("Reflection", mins(10, 15), Training, "everyone", "What did you notice? What helped?"),
            step("Commitments for the week", mins(5, 5), Training, "everyone", "Each names one small thing to do before next week."),
        ],
    })
}

/// Every built-in template (Working Out Loud as week 1).
pub fn builtin() -> Vec<MeetingTemplate> {
    let mut all = vec![
        standard_meeting(),
        troika_consulting(),
        case_clinic(),
        peer_assist(),
    ];
    all.extend(working_out_loud_week(1));
    all
}

/// The id a template step's agenda item gets: derived from the template and step, so
/// applying the same template twice, or on two devices at once, adds its steps once.
fn step_item_id(template: &MeetingTemplate, step: usize) -> ItemId {
    ItemId::from(format!("t-{}-{step}", template.id).as_str())
}

/// Adds the template's steps to the meeting's agenda, after the existing items, each with
/// its longest time box, its guidance as notes and a reference to its step. Steps already
/// on the agenda (the template was applied before) are skipped. Returns the ids of the
/// items in step order.
pub fn apply_template(
    tx: &mut impl Transactable,
    template: &MeetingTemplate,
    raised_by: &MemberId,
) -> Result<Vec<ItemId>, MeetingError> {
    // Reading the agenda checks the schema.
    meeting::agenda_items(tx)?;
    let mut order = meeting::next_agenda_order(tx)?;
    let mut ids = Vec::with_capacity(template.steps.len());
    for (i, step) in template.steps.iter().enumerate() {
        let id = step_item_id(template, i);
        let item = NewAgendaItem {
            title: step.title.clone(),
            raised_by: raised_by.clone(),
            time_box_minutes: Some(step.minutes.max),
            kind: step.kind,
            format: Some(FormatRef {
                template: template.id.clone(),
                step: i as u32,
            }),
            notes: step.guidance.clone(),
        };
        if meeting::put_agenda_item(tx, &id, &item, order, 0)? {
            order += 1.0;
        }
        ids.push(id);
    }
    Ok(ids)
}

/// One section of the case template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseSection {
    /// The section's heading.
    pub heading: String,
    /// What to write there.
    pub prompt: String,
}

/// The de-identified template for a case brought for case collaboration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseTemplate {
    /// Shown first: what must not be written.
    pub reminder: String,
    /// The sections in order.
    pub sections: Vec<CaseSection>,
}

impl CaseTemplate {
    /// The built-in template.
    pub fn standard() -> Self {
        let section = |heading: &str, prompt: &str| CaseSection {
            heading: heading.into(),
            prompt: prompt.into(),
        };
        CaseTemplate {
            reminder: "De-identify: no names, initials, ages, places, dates, services or details that could identify the person or others around them.".into(),
            sections: vec![
                section("Context", "The situation in general terms (e.g. \"a person I support\"), and your role."),
                section("What is happening now", "What has changed or what is hard right now."),
                section("What has been tried", "What you and others have tried, and what happened."),
                section("My question for the group", "The one question you would like help with."),
                section("Support for me", "What you need for yourself, as the peer worker."),
            ],
        }
    }

    /// The template as the text that pre-fills the case item's notes.
    pub fn as_text(&self) -> String {
        let mut text = format!("{}\n", self.reminder);
        for s in &self.sections {
            text.push_str(&format!("\n{}\n{}\n", s.heading, s.prompt));
        }
        text
    }
}

/// Adds a case to the agenda for case collaboration, its notes pre-filled with the
/// de-identified case template for the member to fill in.
pub fn add_case(
    tx: &mut impl Transactable,
    title: &str,
    raised_by: &MemberId,
    time_box_minutes: Option<u32>,
    now_ms: i64,
) -> Result<ItemId, MeetingError> {
    let item = NewAgendaItem {
        title: title.into(),
        raised_by: raised_by.clone(),
        time_box_minutes,
        kind: AgendaKind::Case,
        format: None,
        notes: CaseTemplate::standard().as_text(),
    };
    meeting::add_agenda_item(tx, &item, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::meeting::{agenda_items, init, OneOffKind};
    use automerge::{ActorId, Automerge, TextEncoding};

    fn edit<R>(
        doc: &mut Automerge,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> R,
    ) -> R {
        let mut tx = doc.transaction();
        let r = f(&mut tx);
        tx.commit();
        r
    }

    fn meeting_doc() -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        doc.set_actor(ActorId::from([1; 16]));
        edit(&mut doc, |tx| {
            init(tx, OneOffKind::Training, "Case clinic").unwrap()
        });
        doc
    }

    #[test]
    fn formats_have_the_documented_shapes() {
        let troika = troika_consulting();
        let steps: Vec<_> = troika
            .steps
            .iter()
            .map(|s| (s.minutes.min, s.minutes.max))
            .collect();
        assert_eq!(steps, vec![(1, 2), (1, 2), (4, 5), (1, 2)]);
        assert_eq!(
            troika.roles.iter().map(|r| r.count.max).sum::<u32>(),
            3,
            "a client and two consultants"
        );

        let clinic = case_clinic();
        assert_eq!(clinic.total_minutes(), Minutes { min: 60, max: 75 });
        assert!(clinic
            .steps
            .iter()
            .any(|s| s.title == "Stillness" && s.minutes == Minutes { min: 1, max: 1 }));
        let roles: Vec<_> = clinic.roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(roles, ["case giver", "coach", "timekeeper"]);

        let standard: Vec<_> = standard_meeting()
            .steps
            .into_iter()
            .map(|s| s.title)
            .collect();
        assert_eq!(
            standard,
            [
                "Check-in",
                "Review last actions",
                "Agenda",
                "Discussion",
                "Check-out"
            ]
        );
        assert!(working_out_loud_week(0).is_none() && working_out_loud_week(13).is_none());
        assert_eq!(
            working_out_loud_week(4).unwrap().id,
            "working-out-loud-week-4"
        );
        assert_eq!(builtin().len(), 5);
    }

    #[test]
    fn templates_round_trip_through_json() {
        for template in builtin() {
            let json = serde_json::to_string(&template).unwrap();
            assert_eq!(
                serde_json::from_str::<MeetingTemplate>(&json).unwrap(),
                template
            );
        }
        let json = serde_json::to_value(troika_consulting()).unwrap();
        assert_eq!(json["steps"][0]["kind"], "case");
    }

    #[test]
    fn applying_a_template_adds_its_steps_once() {
        let mut doc = meeting_doc();
        let ana = MemberId::from("ana");
        edit(&mut doc, |tx| {
            meeting::add_agenda_item(
                tx,
                &NewAgendaItem {
                    title: "Welcome".into(),
                    raised_by: ana.clone(),
                    time_box_minutes: None,
                    kind: AgendaKind::Admin,
                    format: None,
                    notes: String::new(),
                },
                1,
            )
            .unwrap()
        });
        let mut other = doc.fork().with_actor(ActorId::from([2; 16]));
        let ids = edit(&mut doc, |tx| {
            apply_template(tx, &case_clinic(), &ana).unwrap()
        });
        edit(&mut doc, |tx| {
            apply_template(tx, &case_clinic(), &ana).unwrap()
        });
        edit(&mut other, |tx| {
            apply_template(tx, &case_clinic(), &MemberId::from("ben")).unwrap()
        });
        doc.merge(&mut other).unwrap();

        let agenda = agenda_items(&doc).unwrap();
        assert_eq!(
            agenda.len(),
            1 + 7,
            "the welcome item and the seven steps, once"
        );
        assert_eq!(agenda[0].title, "Welcome");
        let steps: Vec<_> = agenda[1..].iter().map(|i| i.id.clone()).collect();
        assert_eq!(steps, ids);
        let stillness = &agenda[4];
        assert_eq!(stillness.title, "Stillness");
        assert_eq!(stillness.time_box_minutes, Some(1));
        assert_eq!(stillness.kind, AgendaKind::Case);
        assert_eq!(
            stillness.format,
            Some(FormatRef {
                template: "case-clinic".into(),
                step: 3
            })
        );
        assert!(stillness.notes.contains("silence"));
    }

    #[test]
    fn a_case_starts_from_the_de_identified_template() {
        let mut doc = meeting_doc();
        let id = edit(&mut doc, |tx| {
            add_case(
                tx,
                "Supporting someone after discharge",
                &MemberId::from("chi"),
                Some(20),
                5,
            )
            .unwrap()
        });
        let item = agenda_items(&doc)
            .unwrap()
            .into_iter()
            .find(|i| i.id == id)
            .unwrap();
        assert_eq!(item.kind, AgendaKind::Case);
        assert!(item.notes.starts_with("De-identify: no names"));
        assert!(item.notes.contains("My question for the group"));
    }
}
