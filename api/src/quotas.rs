//! What one client may hold or do at once: the per-client settings by default
//! (`Config::quotas`), a key's own quotas where `md5-api keys create`/`update` gave them.

use serde::{Deserialize, Serialize};

/// One quota, by the name its refusals and `/metrics` use (a closed set: never a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Uploads streamed at once (`MAX_UPLOADS_PER_CLIENT`).
    Uploads,
    /// Unfinished resumable uploads (`MAX_OPEN_UPLOADS_PER_CLIENT`).
    OpenUploads,
    /// Bytes declared by unfinished resumable uploads (`MAX_OPEN_UPLOAD_BYTES_PER_CLIENT`).
    OpenUploadBytes,
    /// Tasks created per minute (`MAX_TASKS_PER_CLIENT_PER_SECOND` × 60).
    TasksPerMinute,
    /// Event streams open at once (`MAX_EVENT_STREAMS_PER_CLIENT`).
    EventStreams,
    /// `?wait=` long-polls held at once (`MAX_LONG_POLLS_PER_CLIENT`).
    LongPolls,
}

impl Quota {
    /// Every quota.
    pub const ALL: [Quota; 6] = [
        Quota::Uploads,
        Quota::OpenUploads,
        Quota::OpenUploadBytes,
        Quota::TasksPerMinute,
        Quota::EventStreams,
        Quota::LongPolls,
    ];

    /// Its name in a refusal's `quota` member and the `quota` label of `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Quota::Uploads => "uploads",
            Quota::OpenUploads => "open-uploads",
            Quota::OpenUploadBytes => "open-upload-bytes",
            Quota::TasksPerMinute => "tasks-per-minute",
            Quota::EventStreams => "event-streams",
            Quota::LongPolls => "long-polls",
        }
    }
}

/// A key's own quotas; `None` takes the setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverrides {
    /// Uploads this key may stream at once (default: MAX_UPLOADS_PER_CLIENT's value).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uploads: Option<u32>,
    /// Unfinished resumable uploads this key may hold (default: MAX_OPEN_UPLOADS_PER_CLIENT's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub open_uploads: Option<u32>,
    /// Bytes its unfinished resumable uploads may declare (default: MAX_OPEN_UPLOAD_BYTES_PER_CLIENT's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub open_upload_bytes: Option<u64>,
    /// Tasks it may create per minute, at an even pace (default: 60 × MAX_TASKS_PER_CLIENT_PER_SECOND;
    /// 0: no bound).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tasks_per_minute: Option<u32>,
    /// Event streams it may hold open at once (default: MAX_EVENT_STREAMS_PER_CLIENT's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event_streams: Option<u32>,
    /// `?wait=` long-polls it may hold at once (default: MAX_LONG_POLLS_PER_CLIENT's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub long_polls: Option<u32>,
}

impl QuotaOverrides {
    /// These overrides, with `newer`'s values where it has one.
    pub fn updated_by(self, newer: QuotaOverrides) -> QuotaOverrides {
        QuotaOverrides {
            uploads: newer.uploads.or(self.uploads),
            open_uploads: newer.open_uploads.or(self.open_uploads),
            open_upload_bytes: newer.open_upload_bytes.or(self.open_upload_bytes),
            tasks_per_minute: newer.tasks_per_minute.or(self.tasks_per_minute),
            event_streams: newer.event_streams.or(self.event_streams),
            long_polls: newer.long_polls.or(self.long_polls),
        }
    }
}

/// One client's quotas, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// [`Quota::Uploads`].
    pub uploads: u32,
    /// [`Quota::OpenUploads`].
    pub open_uploads: u32,
    /// [`Quota::OpenUploadBytes`].
    pub open_upload_bytes: u64,
    /// [`Quota::TasksPerMinute`] (0: no bound).
    pub tasks_per_minute: u32,
    /// [`Quota::EventStreams`].
    pub event_streams: u32,
    /// [`Quota::LongPolls`].
    pub long_polls: u32,
}

impl Quotas {
    /// These quotas with a key's own values.
    pub fn with(self, own: &QuotaOverrides) -> Quotas {
        Quotas {
            uploads: own.uploads.unwrap_or(self.uploads),
            open_uploads: own.open_uploads.unwrap_or(self.open_uploads),
            open_upload_bytes: own.open_upload_bytes.unwrap_or(self.open_upload_bytes),
            tasks_per_minute: own.tasks_per_minute.unwrap_or(self.tasks_per_minute),
            event_streams: own.event_streams.unwrap_or(self.event_streams),
            long_polls: own.long_polls.unwrap_or(self.long_polls),
        }
    }

    /// The value of `quota`.
    pub fn get(&self, quota: Quota) -> u64 {
        match quota {
            Quota::Uploads => u64::from(self.uploads),
            Quota::OpenUploads => u64::from(self.open_uploads),
            Quota::OpenUploadBytes => self.open_upload_bytes,
            Quota::TasksPerMinute => u64::from(self.tasks_per_minute),
            Quota::EventStreams => u64::from(self.event_streams),
            Quota::LongPolls => u64::from(self.long_polls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_own_quotas_win_and_an_update_keeps_what_it_does_not_name() {
        let own = QuotaOverrides { uploads: Some(2), ..QuotaOverrides::default() };
        let newer = own.updated_by(QuotaOverrides { long_polls: Some(3), ..QuotaOverrides::default() });
        assert_eq!((newer.uploads, newer.long_polls), (Some(2), Some(3)));
        let json = serde_json::to_value(newer).unwrap();
        assert_eq!(json, serde_json::json!({"uploads": 2, "long_polls": 3}));
        assert_eq!(serde_json::from_value::<QuotaOverrides>(json).unwrap(), newer);
    }
}
