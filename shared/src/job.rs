//! The stream message: the only contract between the api (which adds it) and the worker (which reads it).

use uuid::Uuid;

/// Largest upload whose job may be [`JobMessage::quick`]: 1 MiB, hashed in about 1.5 ms, so no
/// client would see it `processing`, and no cancel or lease is needed while it is hashed.
pub const QUICK_AT_MOST_BYTES: u64 = 1 << 20;

/// A job on the Redis stream: "hash the upload stored for this task".
///
/// It carries ids only; the row in Postgres holds everything else, so a message
/// that is lost, duplicated or replayed can do no harm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMessage {
    /// The task to hash.
    pub task_id: Uuid,
    /// The request id of the upload, to follow the task into the worker's logs.
    pub request_id: Option<String>,
    /// True for a job whose upload is still arriving: the worker hashes its bytes as the api
    /// announces them (see [`crate::follow`]), then handles it as any job once it completes.
    pub follow: bool,
    /// True for a small upload (at most [`QUICK_AT_MOST_BYTES`]) that needs MD5 alone and
    /// expects no digest: its first delivery is hashed before any claim, and its claim and result
    /// are recorded by one conditional update, which checks all of this against the row
    /// (`queries::Completion::unclaimed`); a flag the row contradicts changes nothing.
    pub quick: bool,
}

/// Why a stream entry is not a valid [`JobMessage`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JobParseError {
    /// The entry has no `task_id` field.
    #[error("stream entry has no task_id field")]
    MissingTaskId,
    /// The `task_id` field is not a UUID.
    #[error("stream entry task_id {0:?} is not a uuid")]
    InvalidTaskId(String),
}

impl JobMessage {
    /// Field holding the task id.
    pub const TASK_ID: &'static str = "task_id";
    /// Field holding the request id.
    pub const REQUEST_ID: &'static str = "request_id";
    /// Field present (`1`) on a job whose upload is still arriving.
    pub const FOLLOW: &'static str = "follow";
    /// Field present (`1`) on a [`JobMessage::quick`] job.
    pub const QUICK: &'static str = "quick";

    /// The job of a stored upload.
    pub fn new(task_id: Uuid, request_id: Option<String>) -> Self {
        JobMessage { task_id, request_id, follow: false, quick: false }
    }

    /// The job of a stored upload of `size` bytes, [`JobMessage::quick`] where it may be:
    /// `md5_alone` when the task computes no other digest and expects none.
    pub fn stored(task_id: Uuid, request_id: Option<String>, size: u64, md5_alone: bool) -> Self {
        JobMessage { quick: md5_alone && size <= QUICK_AT_MOST_BYTES, ..Self::new(task_id, request_id) }
    }

    /// The entry's field/value pairs, in the order they are added to the stream.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![(Self::TASK_ID, self.task_id.to_string())];
        if let Some(request_id) = &self.request_id {
            fields.push((Self::REQUEST_ID, request_id.clone()));
        }
        if self.follow {
            fields.push((Self::FOLLOW, "1".to_owned()));
        }
        if self.quick {
            fields.push((Self::QUICK, "1".to_owned()));
        }
        fields
    }

    /// Reads a message back from a stream entry's field/value pairs; unknown fields are ignored.
    pub fn from_fields<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, JobParseError> {
        let mut task_id = None;
        let mut request_id = None;
        let (mut follow, mut quick) = (false, false);
        for (name, value) in fields {
            let value = String::from_utf8_lossy(value).into_owned();
            match name {
                Self::TASK_ID => task_id = Some(value),
                Self::REQUEST_ID => request_id = Some(value),
                Self::FOLLOW => follow = value == "1",
                Self::QUICK => quick = value == "1",
                _ => {}
            }
        }
        let raw = task_id.ok_or(JobParseError::MissingTaskId)?;
        let task_id = Uuid::parse_str(&raw).map_err(|_| JobParseError::InvalidTaskId(raw))?;
        Ok(JobMessage { task_id, request_id, follow, quick })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_through_fields() {
        for (follow, quick) in [(false, false), (true, false), (false, true)] {
            let message =
                JobMessage { task_id: Uuid::now_v7(), request_id: Some("req-1".into()), follow, quick };
            let fields = message.to_fields();
            let parsed = JobMessage::from_fields(fields.iter().map(|(k, v)| (*k, v.as_bytes()))).unwrap();
            assert_eq!(parsed, message);
        }
    }

    #[test]
    fn only_a_small_md5_alone_upload_is_quick() {
        let id = Uuid::now_v7();
        assert!(JobMessage::stored(id, None, QUICK_AT_MOST_BYTES, true).quick);
        assert!(!JobMessage::stored(id, None, QUICK_AT_MOST_BYTES + 1, true).quick);
        assert!(!JobMessage::stored(id, None, 1, false).quick);
    }

    #[test]
    fn entry_without_task_id_is_rejected() {
        let err = JobMessage::from_fields([("request_id", b"x".as_slice())]).unwrap_err();
        assert_eq!(err, JobParseError::MissingTaskId);
        let err = JobMessage::from_fields([("task_id", b"42".as_slice())]).unwrap_err();
        assert_eq!(err, JobParseError::InvalidTaskId("42".into()));
    }
}
