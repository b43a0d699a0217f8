//! Calendar arithmetic and exports for meeting series.
//!
//! - [`rrule`]: RFC 5545 recurrence rules (the monthly "4th Wednesday" / "last Thursday" and
//!   weekly rules Cairn's series use), expanded on jiff with its bundled time-zone database, so
//!   the phone, the relay and every platform agree on when a meeting is.
//! - [`reminder`]: what to remind a member about before a meeting, and when; the app schedules
//!   the local notification.
//! - [`ics`]: RFC 5545 text of a series or a single meeting, for calendar apps.
//!
//! Nothing here reads a clock: "now" and DTSTAMP are passed in.

pub mod ics;
pub mod reminder;
pub mod rrule;

use jiff::tz::TimeZone;
use thiserror::Error;

/// An IANA zone name that the bundled time-zone database does not know.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unknown time zone `{0}` (not an IANA name, or newer than this build's zone database)")]
pub struct UnknownZone(pub String);

/// Looks up an IANA zone (`Europe/London`) in the bundled database, e.g. a member's own zone
/// for [`crate::model::series::next_occurrences`].
pub fn time_zone(iana: &str) -> Result<TimeZone, UnknownZone> {
    TimeZone::get(iana).map_err(|_| UnknownZone(iana.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_come_from_the_bundled_database() {
        assert_eq!(
            time_zone("Europe/London").unwrap().iana_name(),
            Some("Europe/London")
        );
        assert_eq!(
            time_zone("Mars/Olympus_Mons"),
            Err(UnknownZone("Mars/Olympus_Mons".into()))
        );
    }
}
