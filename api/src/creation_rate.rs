//! Tasks one client may create per second (`MAX_TASKS_PER_CLIENT_PER_SECOND`): a token bucket
//! per client, as deep as one second's worth, kept by each api process. A creation past it gets
//! 429 with `Retry-After` (the seconds until a token). Buckets that are full again are dropped
//! once more than [`MAX_TRACKED`] clients are known, so the table stays bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client_id::ClientId;

/// Clients tracked before full buckets are dropped.
const MAX_TRACKED: usize = 100_000;

/// The buckets.
#[derive(Debug)]
pub struct CreationRate {
    per_second: f64,
    buckets: Mutex<HashMap<ClientId, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl CreationRate {
    /// `per_second` creations per client (0: no bound).
    pub fn new(per_second: u32) -> Self {
        CreationRate { per_second: f64::from(per_second), buckets: Mutex::default() }
    }

    /// Takes a token for `client` (a request without one is not bounded here), or says how long
    /// until one is there.
    pub fn try_take(&self, client: Option<ClientId>) -> Result<(), Duration> {
        let Some(client) = client.filter(|_| self.per_second > 0.0) else { return Ok(()) };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("creation-rate lock");
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&client) {
            let (rate, depth) = (self.per_second, self.per_second);
            buckets.retain(|_, bucket| {
                bucket.tokens + rate * now.duration_since(bucket.at).as_secs_f64() < depth
            });
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: self.per_second, at: now });
        bucket.tokens = (bucket.tokens + self.per_second * now.duration_since(bucket.at).as_secs_f64())
            .min(self.per_second);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_a_seconds_worth_at_once_then_the_rate_and_others_are_apart() {
        let rate = CreationRate::new(5);
        let (a, b) = (
            ClientId::from_peer("10.0.0.1".parse().unwrap()),
            ClientId::from_peer("10.0.0.2".parse().unwrap()),
        );
        for _ in 0..5 {
            rate.try_take(Some(a)).unwrap();
        }
        let wait = rate.try_take(Some(a)).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
        rate.try_take(Some(b)).unwrap();
        assert!(rate.try_take(None).is_ok());
        assert!(CreationRate::new(0).try_take(Some(a)).is_ok(), "0: no bound");
    }
}
