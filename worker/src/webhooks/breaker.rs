//! One endpoint's attempts in flight and its circuit breaker: closed while it answers, open
//! (nothing claimed for it) for a cool-down after [`FAILURES_TO_OPEN`] failed attempts in a row,
//! then half-open: one probe, whose success closes it and whose failure opens it again for twice
//! as long (up to [`MAX_COOL_DOWN`]).

use std::time::Duration;

use tokio::time::Instant;

use shared::webhooks::AttemptOutcome;

/// Failed attempts in a row that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// The first cool-down.
pub const FIRST_COOL_DOWN: Duration = Duration::from_secs(5);
/// The longest cool-down.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(300);

/// One endpoint, as this worker sees it.
#[derive(Debug, Default)]
pub struct Breaker {
    in_flight: usize,
    failures: u32,
    /// Open until then; after it, one probe at a time until an attempt succeeds.
    open_until: Option<Instant>,
    cool_down: Duration,
}

impl Breaker {
    /// How many more attempts may start now, within `share` in flight.
    pub fn allowed(&self, share: usize, now: Instant) -> usize {
        match self.open_until {
            Some(until) if now < until => 0,
            // Half-open: one probe.
            Some(_) => 1usize.saturating_sub(self.in_flight),
            None => share.saturating_sub(self.in_flight),
        }
    }

    /// `started` attempts began.
    pub fn started(&mut self, started: usize) {
        self.in_flight += started;
    }

    /// An attempt ended with `outcome`.
    pub fn ended(&mut self, outcome: &AttemptOutcome, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            AttemptOutcome::Delivered | AttemptOutcome::EndpointGone => {
                self.failures = 0;
                self.open_until = None;
                self.cool_down = Duration::ZERO;
            }
            AttemptOutcome::RetryIn(..) | AttemptOutcome::GiveUp(_) => {
                self.failures += 1;
                let probing = self.open_until.is_some_and(|until| now >= until);
                if probing || self.failures >= FAILURES_TO_OPEN {
                    self.cool_down = if self.cool_down.is_zero() {
                        FIRST_COOL_DOWN
                    } else if probing {
                        (self.cool_down * 2).min(MAX_COOL_DOWN)
                    } else {
                        self.cool_down
                    };
                    self.open_until = Some(now + self.cool_down);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> AttemptOutcome {
        AttemptOutcome::RetryIn(Duration::from_secs(1), "timed out".into())
    }

    #[test]
    fn five_failures_open_it_a_probe_decides_and_the_cool_down_doubles() {
        let start = Instant::now();
        let mut breaker = Breaker::default();
        assert_eq!(breaker.allowed(16, start), 16);
        breaker.started(16);
        assert_eq!(breaker.allowed(16, start), 0, "its share is in flight");
        for _ in 0..4 {
            breaker.ended(&failed(), start);
        }
        assert_eq!(breaker.allowed(16, start), 4, "four failures: still closed");
        breaker.ended(&failed(), start);
        assert_eq!(breaker.allowed(16, start), 0, "the fifth opens it");
        // The attempts still under way end while it is open: it stays open as it was.
        for _ in 0..11 {
            breaker.ended(&failed(), start);
        }
        assert_eq!(breaker.allowed(16, start + Duration::from_secs(4)), 0);
        // After the cool-down, one probe; it fails: open for twice as long.
        let later = start + FIRST_COOL_DOWN;
        assert_eq!(breaker.allowed(16, later), 1);
        breaker.started(1);
        assert_eq!(breaker.allowed(16, later), 0, "one probe at a time");
        breaker.ended(&failed(), later);
        assert_eq!(breaker.allowed(16, later + Duration::from_secs(9)), 0);
        let probe = later + 2 * FIRST_COOL_DOWN;
        assert_eq!(breaker.allowed(16, probe), 1);
        // The next probe succeeds: closed, its whole share again.
        breaker.started(1);
        breaker.ended(&AttemptOutcome::Delivered, probe);
        assert_eq!(breaker.allowed(16, probe), 16);
    }
}
