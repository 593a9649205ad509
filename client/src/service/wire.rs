//! The service's answers as the client reads them, and what an upload asks.

use serde::{Deserialize, Serialize};

use super::Failure;
use crate::algorithms::Algorithm;

/// The task object of the v1 API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// The promise id.
    pub id: String,
    /// `queued`, `processing`, `done` or `failed` (and, from newer services, `uploading`,
    /// `expired` or `cancelled`).
    pub status: String,
    /// The MD5 once `done`.
    pub md5: Option<String>,
    /// The file name the service stored.
    pub file_name: String,
    /// Size of the upload.
    pub size_bytes: u64,
    /// Why the task failed.
    pub error: Option<String>,
    /// Every digest once `done`, by the service's algorithm names (older services: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<std::collections::BTreeMap<String, String>>,
    /// While `processing`, how far the hash has come (older services: none).
    #[serde(default, skip_serializing)]
    pub progress: Option<HashingProgress>,
}

/// How far a running hash has come, as the service last heard from its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct HashingProgress {
    /// Bytes hashed so far.
    pub bytes_hashed: u64,
    /// The file's size.
    pub size_bytes: u64,
}

impl Task {
    /// The task's `algorithm` digest if it is one (its length, lowercase hex): the MD5 field for
    /// MD5, else the `digests` object's.
    pub fn digest(&self, algorithm: Algorithm) -> Option<&str> {
        let hex = match algorithm {
            Algorithm::Md5 => self.md5.as_deref(),
            other => self.digests.as_ref()?.get(other.name()).map(String::as_str),
        }?;
        algorithm.is_digest(hex).then_some(hex)
    }
}

/// What one upload asks of its digests.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// Algorithms to compute besides MD5 (`?digests=`).
    pub algorithms: Vec<Algorithm>,
    /// The digest the file must have (`Repr-Digest`), lowercase hex: the service fails the task
    /// if it differs.
    pub expected: Option<(Algorithm, String)>,
}

impl Ask {
    /// A POST to `url` with this ask's `?digests=` (the names need no escaping) and
    /// `Repr-Digest`.
    pub(super) fn post(&self, http: &reqwest::Client, url: String) -> reqwest::RequestBuilder {
        use base64::Engine as _;
        let mut names: Vec<&str> = self.algorithms.iter().map(|algorithm| algorithm.name()).collect();
        names.retain(|name| *name != "md5");
        names.sort_unstable();
        names.dedup();
        let url = if names.is_empty() { url } else { format!("{url}?digests={}", names.join(",")) };
        let mut request = http.post(url);
        if let Some((algorithm, hex)) = &self.expected {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            let value =
                format!("{}=:{}:", algorithm.name(), base64::engine::general_purpose::STANDARD.encode(bytes));
            request = request.header("Repr-Digest", value);
        }
        request
    }
}

/// Statuses of a task still on its way.
const PENDING_STATUSES: &[&str] = &["queued", "processing", "uploading"];
/// Statuses of a task that ended without a result.
const FAILED_STATUSES: &[&str] = &["failed", "expired", "cancelled"];

impl Task {
    /// True once the task has ended, with a result or without.
    pub fn is_finished(&self) -> bool {
        !PENDING_STATUSES.contains(&self.status.as_str())
    }

    /// The task if it is one the client can use: a known status, and for `done` an MD5 of 32
    /// lowercase hex digits (anything else could print a line `md5sum -c` would misread).
    pub(super) fn checked(self, server: &str) -> Result<Task, Failure> {
        let status = self.status.as_str();
        if status == "done" {
            let valid = self.md5.as_deref().is_some_and(|md5| {
                md5.len() == 32 && md5.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            });
            if !valid {
                return Err(Failure::Permanent(format!(
                    "the service at {server} answered `done` without a valid MD5 (32 lowercase hex digits): {}",
                    crate::shown(
                        &format!("{:?}", self.md5.as_deref().unwrap_or("null"))
                            .chars()
                            .take(80)
                            .collect::<String>()
                    )
                )));
            }
        } else if !PENDING_STATUSES.contains(&status) && !FAILED_STATUSES.contains(&status) {
            return Err(Failure::Permanent(format!(
                "the service at {server} answered an unknown status {}",
                crate::shown(&format!("{:?}", status.chars().take(40).collect::<String>()))
            )));
        }
        Ok(self)
    }
}
