//! Webhooks, the worker's side: the delivery service and its signing ([`signing`]). What an event
//! is and when it is written is `shared::webhooks` (in the transaction that ends a task).
//!
//! Every worker with `WEBHOOK_URLS` claims due
//! deliveries (a lease of [`LEASE`], so workers share the work and a dead one's attempts are
//! taken over) and sends each signed ([`signing`]), up to [`IN_FLIGHT`] at once, a free
//! slot taking the next due event within [`POLL`]. Each endpoint has its own share of the slots
//! (an equal part, claimed endpoint by endpoint) and its own circuit breaker ([`breaker`]): a
//! receiver that hangs or fails holds only its share, and after [`breaker::FAILURES_TO_OPEN`]
//! failures in a row none of its deliveries is claimed for a cool-down (5 s, doubling to 5 min),
//! then one probe decides. Each
//! outcome is recorded as its attempt ends: delivered (2xx), retried after the next step of
//! `WEBHOOK_RETRY_SCHEDULE` or a longer `Retry-After`, given up when the schedule is spent, or
//! the endpoint disabled (410 Gone). At least once: a worker that dies between the answer and
//! the record sends the event again, with the same `webhook-id`.

use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

pub mod breaker;
pub mod signing;

use std::collections::HashMap;

use breaker::Breaker;

use shared::db::{Pool, connection};
use shared::maintenance::Service;
use shared::webhooks::{self, AttemptOutcome, Delivery};
use signing::{WebhookSecret, signature};

/// Longer than an attempt can take ([`TIMEOUT`]): a claimed delivery is not due again before.
const LEASE: Duration = Duration::from_secs(60);
/// The longest an attempt may take, connection and answer included (the spec's 15 s).
const TIMEOUT: Duration = Duration::from_secs(15);
/// Deliveries one worker attempts at once.
const IN_FLIGHT: usize = 32;
/// How often an idle worker looks for due deliveries.
const POLL: Duration = Duration::from_millis(250);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// The delivery service.
pub struct DeliverWebhooks {
    pool: Pool,
    urls: Vec<String>,
    secrets: Vec<WebhookSecret>,
    schedule: Vec<Duration>,
    client: reqwest::Client,
}

impl DeliverWebhooks {
    /// The service for the endpoints `urls` (`None` when there are none), signing with
    /// `secrets` and retrying after each step of `schedule`.
    pub fn new(
        urls: &[String],
        secrets: &[WebhookSecret],
        schedule: &[Duration],
        pool: Pool,
    ) -> anyhow::Result<Option<Self>> {
        if urls.is_empty() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("md5-worker/", env!("CARGO_PKG_VERSION"), " (webhooks)"))
            .build()?;
        Ok(Some(DeliverWebhooks {
            pool,
            urls: urls.to_vec(),
            secrets: secrets.to_vec(),
            schedule: schedule.to_vec(),
            client,
        }))
    }

    async fn register(&self) -> anyhow::Result<()> {
        let mut conn = connection(&self.pool).await?;
        webhooks::register_endpoints(&mut conn, &self.urls).await?;
        Ok(())
    }

    /// Claims due deliveries, for each endpoint as many as its breaker and share allow (and
    /// `room` in all).
    async fn claim(
        &self,
        endpoints: &mut HashMap<String, Breaker>,
        room: usize,
    ) -> anyhow::Result<Vec<Delivery>> {
        let share = (IN_FLIGHT / self.urls.len()).max(1);
        let mut conn = connection(&self.pool).await?;
        let mut claimed = Vec::new();
        let now = tokio::time::Instant::now();
        for url in &self.urls {
            let breaker = endpoints.entry(url.clone()).or_default();
            let allowed = breaker.allowed(share, now).min(room - claimed.len());
            if allowed == 0 {
                continue;
            }
            let batch =
                webhooks::claim_due(&mut conn, std::slice::from_ref(url), i64::try_from(allowed)?, LEASE)
                    .await?;
            breaker.started(batch.len());
            claimed.extend(batch);
        }
        Ok(claimed)
    }

    /// Counts and records one attempt's outcome. Not recorded (Postgres away): the lease runs
    /// out and the event goes again, under the same id.
    async fn finish(&self, delivery: Delivery, outcome: AttemptOutcome) {
        let label = match &outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::RetryIn(..) => "failed",
            AttemptOutcome::GiveUp(_) => "gave_up",
            AttemptOutcome::EndpointGone => "gone",
        };
        metrics::counter!("md5_webhook_attempts_total", "outcome" => label).increment(1);
        if let AttemptOutcome::RetryIn(_, error) | AttemptOutcome::GiveUp(error) = &outcome {
            tracing::debug!(webhook.id = %delivery.event_id, webhook.url = %delivery.url, attempt = delivery.attempts, error = %error, "webhook delivery failed");
        }
        if outcome == AttemptOutcome::EndpointGone {
            tracing::warn!(webhook.url = %delivery.url, "the webhook endpoint answered 410 Gone: disabled");
        }
        let recorded = async {
            let mut conn = connection(&self.pool).await?;
            webhooks::record(&mut conn, &delivery, &outcome).await?;
            anyhow::Ok(())
        };
        if let Err(err) = recorded.await {
            tracing::warn!(webhook.id = %delivery.event_id, error = format!("{err:#}"), "cannot record a webhook attempt; it goes again when its lease runs out");
        }
    }

    async fn attempt(&self, delivery: &Delivery) -> AttemptOutcome {
        let timestamp = chrono::Utc::now().timestamp();
        let sent = self
            .client
            .post(&delivery.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &delivery.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&self.secrets, &delivery.event_id, timestamp, &delivery.payload),
            )
            .body(delivery.payload.clone())
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => AttemptOutcome::Delivered,
            Ok(answer) if answer.status() == reqwest::StatusCode::GONE => AttemptOutcome::EndpointGone,
            Ok(answer) => {
                let retry_after = answer
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.trim().parse::<u64>().ok())
                    .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
                self.failed(delivery.attempts, format!("answered {}", answer.status()), retry_after)
            }
            Err(err) => self.failed(delivery.attempts, format!("{err}"), None),
        }
    }

    /// After failed attempt number `attempts`: the next step of the schedule (or a longer
    /// `Retry-After`), or giving up once the schedule is spent.
    fn failed(&self, attempts: i32, error: String, retry_after: Option<Duration>) -> AttemptOutcome {
        match self.schedule.get(usize::try_from(attempts - 1).unwrap_or(0)) {
            Some(step) => AttemptOutcome::RetryIn((*step).max(retry_after.unwrap_or_default()), error),
            None => AttemptOutcome::GiveUp(error),
        }
    }
}

impl Service for DeliverWebhooks {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    async fn run(self, stop: CancellationToken) {
        while let Err(err) = self.register().await {
            tracing::warn!(error = format!("{err:#}"), "cannot register the webhook endpoints; retrying");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        tracing::info!(webhook.endpoints = self.urls.len(), "delivering webhooks");
        // Attempts run side by side, and each is recorded when it ends: one slow receiver (up
        // to the 15 s timeout) holds only its own slot, never the deliveries claimed after it.
        let this = &self;
        let mut in_flight = FuturesUnordered::new();
        let mut endpoints: HashMap<String, Breaker> = HashMap::new();
        // When to look for due deliveries next: at once after a claim that filled every free
        // slot (more may be due), else after POLL; an attempt ending does not bring it forward.
        let mut claim_at = tokio::time::Instant::now();
        // This worker's endpoints stay "seen" while it runs (events are written for them).
        let mut register_at = claim_at + webhooks::REGISTER_EVERY;
        loop {
            let room = IN_FLIGHT - in_flight.len();
            let now = tokio::time::Instant::now();
            if now >= register_at {
                register_at = now + webhooks::REGISTER_EVERY;
                if let Err(err) = self.register().await {
                    tracing::warn!(error = format!("{err:#}"), "cannot register the webhook endpoints again");
                }
            }
            if room > 0 && now >= claim_at {
                claim_at = now + POLL;
                match self.claim(&mut endpoints, room).await {
                    Ok(claimed) => {
                        if claimed.len() == room {
                            claim_at = now;
                        }
                        for delivery in claimed {
                            in_flight.push(async move {
                                let outcome = this.attempt(&delivery).await;
                                (delivery, outcome)
                            });
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = format!("{err:#}"), "cannot claim webhook deliveries");
                        claim_at = now + Duration::from_secs(1);
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                Some((delivery, outcome)) = in_flight.next() => {
                    if let Some(breaker) = endpoints.get_mut(&delivery.url) {
                        breaker.ended(&outcome, tokio::time::Instant::now());
                    }
                    self.finish(delivery, outcome).await;
                }
                () = tokio::time::sleep_until(claim_at), if in_flight.len() < IN_FLIGHT => {}
            }
        }
        // Stopping: the attempts under way end (each within the timeout) and are recorded.
        while let Some((delivery, outcome)) = in_flight.next().await {
            self.finish(delivery, outcome).await;
        }
    }
}
