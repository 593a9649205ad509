//! The worker's side of the Redis stream: the consumer group, reads, takeovers, acknowledgements.

use std::collections::HashSet;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, RedisResult};
use shared::JobMessage;
use shared::config::StreamArgs;
use uuid::Uuid;

/// How long the "already dead-lettered" mark of a task is kept.
pub const DEAD_LETTER_MARK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Bound on every command but the blocking read.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// One stream entry handed to this worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The entry id, to acknowledge.
    pub entry_id: String,
    /// The parsed message, or why it could not be parsed.
    pub job: Result<JobMessage, shared::job::JobParseError>,
    /// True when the entry was taken over from another consumer.
    pub taken_over: bool,
}

/// Connections and names for one consumer of the group.
pub struct Jobs {
    client: redis::Client,
    reader: Option<MultiplexedConnection>,
    commands: ConnectionManager,
    /// Stream key.
    pub stream: String,
    /// Consumer group.
    pub group: String,
    /// This process's consumer name.
    pub consumer: String,
    dead_letter: String,
    block: Duration,
    /// Where the next `XAUTOCLAIM` scan of the pending list starts (`0-0`: the beginning).
    claim_cursor: String,
}

/// Most `XAUTOCLAIM` calls one takeover round makes while following the cursor (each scans at
/// most 10 × COUNT pending entries), so a round stays short whatever the size of the list.
const MAX_CLAIM_SCANS_PER_ROUND: usize = 64;

impl Jobs {
    /// Connects (lazily) to Redis for consumer `consumer`.
    pub fn new(
        redis_url: &str,
        names: &StreamArgs,
        consumer: String,
        block: Duration,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url)
            .map_err(|err| anyhow::anyhow!("invalid REDIS_URL {redis_url:?}: {err}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|err| anyhow::anyhow!("cannot set up the Redis connection: {err}"))?;
        Ok(Jobs {
            client,
            reader: None,
            commands,
            stream: names.jobs_stream.clone(),
            group: names.jobs_group.clone(),
            consumer,
            dead_letter: names.dead_letter_stream(),
            block,
            claim_cursor: "0-0".to_owned(),
        })
    }

    /// A clone of the command connection for jobs running concurrently.
    pub fn commands(&self) -> JobsHandle {
        JobsHandle {
            client: self.client.clone(),
            commands: self.commands.clone(),
            stream: self.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            dead_letter: self.dead_letter.clone(),
        }
    }

    /// Creates the group (and the stream) if missing, reading from the start of the stream so
    /// that nothing added before the group existed is skipped.
    pub async fn ensure_group(&self) -> RedisResult<()> {
        let result: RedisResult<String> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.commands.clone())
            .await;
        match result {
            Ok(_) => {
                tracing::info!(stream = %self.stream, group = %self.group, "consumer group created");
                Ok(())
            }
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Blocks up to `READ_BLOCK_MS` for at most `count` new entries, on a connection of its own
    /// so the blocking read never stalls other commands.
    pub async fn read_new(&mut self, count: usize) -> RedisResult<Vec<Delivery>> {
        if self.reader.is_none() {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_response_timeout(Some(self.block + COMMAND_TIMEOUT));
            self.reader = Some(self.client.get_multiplexed_async_connection_with_config(&config).await?);
        }
        let reader = self.reader.as_mut().expect("connected above");
        let reply: RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(reader)
            .await;
        match reply {
            Ok(reply) => Ok(reply
                .into_iter()
                .flat_map(|reply| reply.keys)
                .flat_map(|key| key.ids)
                .map(|entry| delivery(entry, false))
                .collect()),
            Err(err) => {
                if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() {
                    self.reader = None;
                }
                Err(err)
            }
        }
    }

    /// Takes over at most `count` entries that other consumers left idle for `min_idle`.
    ///
    /// Redis scans at most 10 × `count` pending entries per `XAUTOCLAIM`, so the scan follows the
    /// cursor Redis returns, across calls and rounds, wrapping at the end of the list: an idle
    /// entry behind any number of live ones is reached within a round or two.
    pub async fn take_over_idle(&mut self, min_idle: Duration, count: usize) -> RedisResult<Vec<Delivery>> {
        for _ in 0..MAX_CLAIM_SCANS_PER_ROUND {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(min_idle.as_millis() as u64)
                .arg(&self.claim_cursor)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut self.commands.clone())
                .await?;
            let wrapped = reply.next_stream_id == "0-0";
            self.claim_cursor = reply.next_stream_id;
            if !reply.claimed.is_empty() {
                return Ok(reply.claimed.into_iter().map(|entry| delivery(entry, true)).collect());
            }
            if wrapped {
                break;
            }
        }
        Ok(Vec::new())
    }
}

fn delivery(entry: StreamId, taken_over: bool) -> Delivery {
    let fields: Vec<(String, Vec<u8>)> = entry
        .map
        .iter()
        .filter_map(|(name, value)| match value {
            redis::Value::BulkString(bytes) => Some((name.clone(), bytes.clone())),
            redis::Value::SimpleString(text) => Some((name.clone(), text.clone().into_bytes())),
            _ => None,
        })
        .collect();
    let job = JobMessage::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    Delivery { entry_id: entry.id, job, taken_over }
}

/// The commands a running job needs, on the shared multiplexed connection.
#[derive(Clone)]
pub struct JobsHandle {
    client: redis::Client,
    commands: ConnectionManager,
    stream: String,
    group: String,
    consumer: String,
    dead_letter: String,
}

impl JobsHandle {
    /// The jobs stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The shared command connection.
    pub fn connection(&self) -> ConnectionManager {
        self.commands.clone()
    }

    /// A connection of its own, for reads that block up to `block`.
    pub async fn blocking_connection(&self, block: Duration) -> RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(block + COMMAND_TIMEOUT));
        self.client.get_multiplexed_async_connection_with_config(&config).await
    }

    /// Acknowledges entries and deletes them (one XACK and one XDEL, pipelined), so the stream
    /// holds only live entries.
    pub async fn ack_all(&self, entry_ids: &[String]) -> RedisResult<()> {
        redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(entry_ids)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(entry_ids)
            .ignore()
            .query_async::<()>(&mut self.commands.clone())
            .await
    }

    /// Resets the idle time of this consumer's entry, so no one takes over a job still running.
    pub async fn touch(&self, entry_id: &str) -> RedisResult<()> {
        redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(entry_id)
            .arg("JUSTID")
            .query_async::<redis::Value>(&mut self.commands.clone())
            .await
            .map(drop)
    }

    /// Copies a given-up job to the dead-letter stream, at most once per task: a marker key
    /// (kept for [`DEAD_LETTER_MARK_TTL`]) is set in the same atomic script, so a retry or a
    /// redelivery after a crash adds no second copy. Whether this call added it.
    pub async fn dead_letter(&self, entry_id: &str, task_id: Uuid, reason: &str) -> RedisResult<bool> {
        let script = redis::Script::new(
            r"if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[4]) then
                return redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[1], 'entry_id', ARGV[2], 'reason', ARGV[3])
              end
              return false",
        );
        script
            .key(&self.dead_letter)
            .key(format!("{}:lettered:{task_id}", self.dead_letter))
            .arg(task_id.to_string())
            .arg(entry_id)
            .arg(reason)
            .arg(DEAD_LETTER_MARK_TTL.as_millis() as u64)
            .invoke_async::<Option<String>>(&mut self.commands.clone())
            .await
            .map(|added| added.is_some())
    }

    /// Adds a job (the sweeper re-enqueuing a task).
    pub async fn enqueue(&self, job: &JobMessage) -> RedisResult<()> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream).arg("*");
        for (field, value) in job.to_fields() {
            cmd.arg(field).arg(value);
        }
        cmd.query_async::<String>(&mut self.commands.clone()).await.map(drop)
    }

    /// Task ids of every entry still in the stream (undelivered or pending).
    pub async fn live_task_ids(&self) -> RedisResult<HashSet<Uuid>> {
        let mut ids = HashSet::new();
        let mut start = "-".to_owned();
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.stream)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.commands.clone())
                .await?;
            let Some(last) = page.ids.last() else { break };
            start = format!("({}", last.id);
            let full = page.ids.len() == 1000;
            for entry in page.ids {
                if let Ok(job) = delivery(entry, false).job {
                    ids.insert(job.task_id);
                }
            }
            if !full {
                break;
            }
        }
        Ok(ids)
    }

    /// Takes the sweeper's turn for `period`, so workers do not all sweep at once.
    pub async fn try_sweep_turn(&self, period: Duration) -> RedisResult<bool> {
        let key = format!("{}:sweeper", self.stream);
        let taken: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&self.consumer)
            .arg("NX")
            .arg("PX")
            .arg(period.as_millis() as u64)
            .query_async(&mut self.commands.clone())
            .await?;
        Ok(taken.is_some())
    }
}
