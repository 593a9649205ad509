//! The one typed launcher of service processes, for the tests, the fault environment and the
//! benchmark: a process is started from the binary's own `Config` (`api::Config`,
//! `worker::Config`), never from a hand-built list of variables.
//!
//! [`config_env`] turns a configuration into the environment that makes the binary parse exactly
//! it: every setting of its clap command, under its variable name, taken from the config's own
//! fields (a test proves the round trip for both binaries).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use clap::CommandFactory;
use serde::Serialize;
use serde_json::Value;

use crate::sibling_binary;

/// A free TCP port on 127.0.0.1 (free when asked; a test binds it soon after).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A binary's configuration as it parses with no flags and no environment: its own defaults,
/// whatever variables the process running the tests has.
pub fn defaults<C: clap::Parser>(program: &str) -> C {
    let command = C::command().mut_args(|arg| arg.env(clap::builder::Resettable::Reset));
    let matches = command.get_matches_from([program]);
    C::from_arg_matches(&matches).expect("the defaults parse")
}

/// The settings of a whole service: the api's and every worker's, as the binaries parse them.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// `md5-api`'s.
    pub api: api::Config,
    /// Each `md5-worker`'s.
    pub worker: worker::Config,
}

impl ServiceConfig {
    /// The binaries' defaults, pointed at `database_url` and `redis_url`, with `UPLOAD_DIR`
    /// (`uploads`) and `LOG_FILE` (`log/md5.log`) under `root`, the api on 127.0.0.1:`port`,
    /// no free-space reserve, no creation rate per client (every test or benchmark client shares
    /// 127.0.0.1; the bound's own test sets one) and `RUST_LOG=info`.
    pub fn new(database_url: &str, redis_url: &str, root: &Path, port: u16) -> Self {
        let mut api: api::Config = defaults("md5-api");
        let mut worker: worker::Config = defaults("md5-worker");
        api.bind_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        api.min_free_bytes = 0;
        api.max_tasks_per_client_per_second = 0;
        worker.log_file = root.join("log").join("md5.log");
        for (database, redis, storage, telemetry) in [
            (&mut api.database, &mut api.redis, &mut api.storage, &mut api.telemetry),
            (&mut worker.database, &mut worker.redis, &mut worker.storage, &mut worker.telemetry),
        ] {
            database.database_url = database_url.to_owned();
            redis.redis_url = redis_url.to_owned();
            storage.upload_dir = root.join("uploads");
            telemetry.log_filter = "info".to_owned();
        }
        ServiceConfig { api, worker }
    }

    /// Both binaries use the stream `stream` and the group `group`.
    pub fn with_stream(mut self, stream: &str, group: &str) -> Self {
        for args in [&mut self.api.stream, &mut self.worker.stream] {
            args.jobs_stream = stream.to_owned();
            args.jobs_group = group.to_owned();
        }
        self
    }
}

/// Every setting of `config` as `(variable, value)`, for each argument of its clap command
/// that has an environment variable; settings without a value (`None`) are left out.
pub fn config_env<C: CommandFactory + Serialize>(config: &C) -> Vec<(String, String)> {
    let mut fields = serde_json::Map::new();
    flatten_into(&mut fields, serde_json::to_value(config).expect("a Config serializes"));
    C::command()
        .get_arguments()
        .filter_map(|arg| {
            let variable = arg.get_env()?.to_str()?.to_owned();
            let value = match fields.get(arg.get_id().as_str())? {
                Value::Null => return None,
                Value::String(text) => text.clone(),
                // A list setting (clap's `value_delimiter = ','`): its items, comma-separated;
                // an empty list is no setting.
                Value::Array(items) if items.is_empty() => return None,
                Value::Array(items) => items
                    .iter()
                    .map(|item| item.as_str().map_or_else(|| item.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            Some((variable, value))
        })
        .collect()
}

/// The same settings as command-line flags (`--name value`), after the program name.
pub fn config_args<C: CommandFactory + Serialize>(program: &str, config: &C) -> Vec<String> {
    let longs: std::collections::HashMap<String, String> = C::command()
        .get_arguments()
        .filter_map(|arg| Some((arg.get_env()?.to_str()?.to_owned(), arg.get_long()?.to_owned())))
        .collect();
    let mut args = vec![program.to_owned()];
    for (variable, value) in config_env(config) {
        args.push(format!("--{}", longs[&variable]));
        args.push(value);
    }
    args
}

/// Nested objects (clap's flattened argument groups) become top-level fields.
fn flatten_into(fields: &mut serde_json::Map<String, Value>, value: Value) {
    if let Value::Object(object) = value {
        for (name, value) in object {
            match value {
                Value::Object(_) => flatten_into(fields, value),
                value => {
                    fields.insert(name, value);
                }
            }
        }
    }
}

/// How to start one process of the service: its binary, the environment from its `Config`, and
/// where its stderr goes.
pub struct Launch {
    binary: String,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
    stderr: Option<PathBuf>,
}

impl Launch {
    /// `md5-api` with `config`.
    pub fn api(config: &api::Config) -> Self {
        Launch::new("md5-api", config_env(config))
    }

    /// `md5-worker` with `config`.
    pub fn worker(config: &worker::Config) -> Self {
        Launch::new("md5-worker", config_env(config))
    }

    /// The fault-injection build of the worker (`md5-worker-faulty`) with `config` and its
    /// hidden crash hooks (`FAULT_CRASH_AT`, `FAULT_FAIL_FLUSH_ONCE`), which the `worker::Config`
    /// of this build does not have.
    pub fn faulty_worker(config: &worker::Config, hooks: &[(&str, &str)]) -> Self {
        let mut launch = Launch::new("md5-worker-faulty", config_env(config));
        launch.env.extend(hooks.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
        launch
    }

    fn new(binary: &str, env: Vec<(String, String)>) -> Self {
        Launch { binary: binary.to_owned(), env, wrapper: Vec::new(), stderr: None }
    }

    /// Runs the binary under `wrapper` (e.g. `prlimit --nofile=256:4096`), found on `PATH`.
    pub fn wrapped(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|arg| (*arg).to_owned()).collect();
        self
    }

    /// Appends the process's stderr to `path` (else it is discarded).
    pub fn stderr_to(mut self, path: &Path) -> Self {
        self.stderr = Some(path.to_owned());
        self
    }

    /// Starts the process with nothing from this process's environment but `PATH`.
    pub fn spawn(&self) -> anyhow::Result<Child> {
        let binary = sibling_binary(&self.binary)?;
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        command.env_clear().envs(self.env.iter().map(|(key, value)| (key, value)));
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        let stderr = match &self.stderr {
            Some(path) => Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
            None => Stdio::null(),
        };
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        command.spawn().with_context(|| format!("start {}", self.binary))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn defaults_ignore_the_environment_of_the_test_process() {
        let config: api::Config = defaults("md5-api");
        assert_eq!(config.max_upload_bytes, api::config::DEFAULT_MAX_UPLOAD_BYTES);
        assert_eq!(config.database.database_url, shared::config::DEFAULT_DATABASE_URL);
    }

    #[test]
    fn an_api_config_survives_the_trip_through_its_variables() {
        let mut config = api::Config::parse_from(["md5-api"]);
        config.max_upload_bytes = 12_345;
        config.api_key = Some("secret".into());
        config.max_uploads_per_client = Some(3);
        config.database.database_url = "postgres://x@127.0.0.1:1/db".into();
        config.storage.upload_dir = "/tmp/some uploads".into();
        config.telemetry.log_format = shared::config::LogFormat::Json;
        config.digests = "sha-256,crc64nvme".parse().unwrap();
        let env = config_env(&config);
        assert!(env.contains(&("DIGESTS".into(), "sha-256,crc64nvme".into())), "{env:?}");
        assert!(env.contains(&("MAX_UPLOAD_BYTES".into(), "12345".into())), "{env:?}");
        assert!(env.contains(&("LOG_FORMAT".into(), "json".into())), "{env:?}");
        let parsed = api::Config::parse_from(config_args("md5-api", &config));
        assert_eq!(format!("{parsed:?}"), format!("{config:?}"));
    }

    #[test]
    fn a_worker_config_survives_the_trip_through_its_variables() {
        let mut config = worker::Config::parse_from(["md5-worker"]);
        config.keep_uploads = true;
        config.log_max_bytes = Some(4096);
        config.metrics_addr = Some("127.0.0.1:9911".parse().unwrap());
        config.consumer_name = Some("w-1".into());
        config.worker_concurrency = 3;
        config.webhook_retry_schedule = vec![1, 2, 30];
        let env = config_env(&config);
        assert!(env.contains(&("KEEP_UPLOADS".into(), "true".into())), "{env:?}");
        // A list: its items comma-separated; an empty one is no setting at all.
        assert!(env.contains(&("WEBHOOK_RETRY_SCHEDULE".into(), "1,2,30".into())), "{env:?}");
        assert!(!env.iter().any(|(name, _)| name == "WEBHOOK_URLS"), "{env:?}");
        assert!(!env.iter().any(|(name, _)| name == "FAULT_CRASH_AT"));
        let parsed = worker::Config::parse_from(config_args("md5-worker", &config));
        assert_eq!(format!("{parsed:?}"), format!("{config:?}"));
    }
}
