//! Timestamps as the service prints them: RFC 3339, UTC, millisecond precision, `Z` suffix.

use chrono::{DateTime, SecondsFormat, Utc};
use diesel::pg::data_types::PgInterval;

/// Formats a timestamp as `2026-11-27T19:00:00.123Z`.
pub fn format_millis(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde helpers for `Option<DateTime<Utc>>` fields in the millisecond format.
pub mod option_millis {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    /// Serializes `Some(at)` as a millisecond RFC 3339 string and `None` as `null`.
    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => s.serialize_str(&super::format_millis(*at)),
            None => s.serialize_none(),
        }
    }
}

/// Serde helper for a `DateTime<Utc>` field in the millisecond format.
pub mod millis {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Serializes `at` as a millisecond RFC 3339 string.
    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_millis(*at))
    }

    /// Reads any RFC 3339 timestamp, as UTC.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text).map(|at| at.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

/// `duration` as a Postgres `interval` (microseconds, saturating).
pub(crate) fn interval(duration: std::time::Duration) -> PgInterval {
    PgInterval::from_microseconds(i64::try_from(duration.as_micros()).unwrap_or(i64::MAX))
}
