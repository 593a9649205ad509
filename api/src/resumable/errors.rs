//! What an upload operation can refuse, and where an upload stands, in protocol-neutral terms.

use shared::models::UploadRow;
use shared::{Task, TaskStatus};

use crate::error::ApiError;

/// Why an upload operation was refused, in protocol-neutral terms; [`tus`] and [`ietf`] choose
/// the status and body.
#[derive(Debug)]
pub enum UploadError {
    /// No upload or task has this id.
    NotFound,
    /// The upload expired or was terminated (the task's status says which).
    Gone(TaskStatus),
    /// Another request holds the upload (an append in progress, here or on another replica).
    Busy,
    /// The request's offset is not the upload's.
    OffsetMismatch {
        /// The upload's durable length.
        expected: u64,
        /// What the request said.
        provided: u64,
    },
    /// The upload is complete: nothing more can be appended, and it cannot be terminated.
    Completed {
        /// Its length.
        length: u64,
    },
    /// The request's length contradicts the upload's (declared twice differently, shorter than
    /// what was received, or a body running past it).
    InconsistentLength(String),
    /// The body does not match its `Upload-Checksum`; nothing of it was kept.
    ChecksumMismatch,
    /// Anything else, answered as every route answers it (problem+json).
    Api(ApiError),
}

impl<E: Into<ApiError>> From<E> for UploadError {
    fn from(err: E) -> Self {
        UploadError::Api(err.into())
    }
}

/// Where an upload stands, as `HEAD` reports it.
#[derive(Debug)]
pub enum UploadState {
    /// Receiving bytes.
    Open {
        /// Its task (`uploading`).
        task: Task,
        /// Its row.
        upload: UploadRow,
    },
    /// Every byte arrived; its task is queued or later.
    Complete {
        /// Its task.
        task: Task,
    },
}
