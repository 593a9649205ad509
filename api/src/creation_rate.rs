//! Tasks one client may create (its `tasks-per-minute` quota, by default 60 ×
//! `MAX_TASKS_PER_CLIENT_PER_SECOND`): a token bucket per client, filled at an even pace and as
//! deep as one second's worth (at least one), kept by each api process. A creation past it gets
//! 429 with `Retry-After` (the seconds until a token). Buckets that are full again are dropped
//! once more than [`MAX_TRACKED`] clients are known, so the table stays bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client_id::ClientId;

/// Clients tracked before full buckets are dropped.
const MAX_TRACKED: usize = 100_000;

/// The buckets.
#[derive(Debug, Default)]
pub struct CreationRate {
    buckets: Mutex<HashMap<ClientId, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl CreationRate {
    /// Takes a token for `client`, who may create `per_minute` tasks a minute (0: no bound; a
    /// request without a client is not bounded here), or says how long until one is there.
    pub fn try_take(&self, client: Option<ClientId>, per_minute: u32) -> Result<(), Duration> {
        let Some(client) = client.filter(|_| per_minute > 0) else { return Ok(()) };
        let rate = f64::from(per_minute) / 60.0;
        let depth = rate.max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("creation-rate lock");
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&client) {
            // Every bucket is dropped that would be full by now at this client's pace (a bucket
            // refilled at another pace is recreated full, which it nearly is).
            buckets.retain(|_, bucket| {
                bucket.tokens + rate * now.duration_since(bucket.at).as_secs_f64() < depth
            });
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: depth, at: now });
        bucket.tokens = (bucket.tokens + rate * now.duration_since(bucket.at).as_secs_f64()).min(depth);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_a_seconds_worth_at_once_then_the_rate_and_others_are_apart() {
        let rate = CreationRate::default();
        let (a, b) = (
            ClientId::from_peer("10.0.0.1".parse().unwrap()),
            ClientId::from_peer("10.0.0.2".parse().unwrap()),
        );
        for _ in 0..5 {
            rate.try_take(Some(a), 300).unwrap();
        }
        let wait = rate.try_take(Some(a), 300).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
        rate.try_take(Some(b), 300).unwrap();
        assert!(rate.try_take(None, 300).is_ok());
        assert!(rate.try_take(Some(a), 0).is_ok(), "0: no bound");
        // A slow quota: one at once, the next a minute later.
        let c = ClientId::Key(7);
        rate.try_take(Some(c), 1).unwrap();
        let wait = rate.try_take(Some(c), 1).unwrap_err();
        assert!(wait > Duration::from_secs(59) && wait <= Duration::from_secs(60), "{wait:?}");
    }
}
