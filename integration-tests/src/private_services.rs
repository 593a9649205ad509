//! Private Postgres and Redis servers on free ports, for the tests that stop, kill or restart
//! them (never the shared ones) and for the benchmark.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::launcher::free_port;

fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

/// Runs a Postgres server binary, as the `postgres` user when we are root (the server refuses root).
fn pg_command(binary: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.arg("-u").arg("postgres").arg("--").arg(binary);
        command
    } else {
        Command::new(binary)
    }
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("cannot run {what}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A Postgres cluster of the test's own, in a temporary folder, on a free port.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    durable: bool,
    /// Its port.
    pub port: u16,
}

impl PrivatePostgres {
    /// `initdb`, start, and create the `md5` database; `fsync` off (fault tests kill the server,
    /// never the machine).
    pub fn start_new(root: &Path) -> anyhow::Result<Self> {
        Self::start_new_with(root, false)
    }

    /// As [`PrivatePostgres::start_new`]; `durable` keeps Postgres's default `fsync=on`, as the
    /// benchmark must.
    pub fn start_new_with(root: &Path, durable: bool) -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("no /usr/lib/postgresql: install the server with `apt-get install postgresql`")?
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .context("no initdb under /usr/lib/postgresql/*/bin: `apt-get install postgresql`")?;
        let dir = root.join("pg");
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("-R").arg("postgres").arg(root);
                    c
                },
                "chown",
            )?;
        }
        let mut initdb = pg_command(&bin.join("initdb"));
        initdb.arg("-D").arg(&dir).arg("-U").arg("postgres").arg("--auth=trust").arg("--no-sync");
        run(initdb, "initdb")?;
        let pg = PrivatePostgres { bin, dir, durable, port: free_port() };
        pg.start()?;
        let mut createdb = pg_command(&pg.bin.join("createdb"));
        createdb
            .arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(pg.port.to_string())
            .arg("-U")
            .arg("postgres")
            .arg("md5");
        run(createdb, "createdb")?;
        Ok(pg)
    }

    /// The `md5` database's URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/md5", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut start = pg_command(&self.bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(&self.dir)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("-w")
            .arg("-o")
            // fsync off unless durable: the fault tests kill the server, never the machine.
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync={}{}",
                self.port,
                self.dir.display(),
                if self.durable { "on" } else { "off" },
                self.statement_counts()
            ))
            .arg("start");
        run(start, "pg_ctl start")
    }

    /// For the benchmark (durable), `pg_stat_statements` where the server has it, so that it can
    /// count the statements of each job; the tests run without it.
    fn statement_counts(&self) -> &'static str {
        let library = self.bin.parent().map(|version| version.join("lib/pg_stat_statements.so"));
        if self.durable && library.is_some_and(|library| library.exists()) {
            " -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c pg_stat_statements.track_planning=on"
        } else {
            ""
        }
    }

    /// The postmaster's process id, while the server runs (from `postmaster.pid`).
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `SIGSTOP` to the postmaster and every backend: connections stay open and nothing answers,
    /// like a server stalled on its disk or a network path that stopped delivering.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal_all(rustix::process::Signal::STOP)
    }

    /// `SIGCONT` to the same processes: the server goes on where it stopped.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal_all(rustix::process::Signal::CONT)
    }

    fn signal_all(&self, signal: rustix::process::Signal) -> anyhow::Result<()> {
        let postmaster = self.pid().context("the private Postgres is not running")?;
        for pid in std::iter::once(postmaster).chain(children_of(postmaster)) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: the server dies as in a crash.
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        let mut stop = pg_command(&self.bin.join("pg_ctl"));
        stop.arg("-D").arg(&self.dir).arg("-m").arg("immediate").arg("stop");
        run(stop, "pg_ctl stop")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // A paused server would not stop.
        let _ = self.resume();
        let _ = self.stop_immediate();
    }
}

/// A Redis of the test's own, without persistence, on a free port.
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    child: std::sync::Mutex<Option<Child>>,
    extra: Vec<String>,
}

impl PrivateRedis {
    /// Starts `redis-server --save ''` on a free port.
    pub fn start_new() -> anyhow::Result<Self> {
        Self::start_new_with(&["--appendonly", "no"])
    }

    /// As [`PrivateRedis::start_new`], with these persistence arguments instead.
    pub fn start_new_with(persistence: &[&str]) -> anyhow::Result<Self> {
        let redis = PrivateRedis {
            port: free_port(),
            child: std::sync::Mutex::new(None),
            extra: persistence.iter().map(|s| (*s).to_owned()).collect(),
        };
        redis.start()?;
        Ok(redis)
    }

    /// The URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits for PING.
    pub fn start(&self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server: `apt-get install redis-server`")?;
        *self.child.lock().expect("redis child lock") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("redis-server did not start on port {}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().expect("redis child lock").as_ref().map(Child::id)
    }

    /// `SIGSTOP` (`resume`: `SIGCONT`): connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// `SIGCONT` after [`PrivateRedis::pause`].
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = self.pid().and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Kills the server (SIGKILL): everything in it is gone.
    pub fn kill(&self) {
        self.resume();
        if let Some(mut child) = self.child.lock().expect("redis child lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `FLUSHALL`.
    pub async fn flushall(&self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Live child processes of `parent`, from `/proc`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| crate::procfs::ProcessStat::of(pid).is_some_and(|stat| stat.parent == parent))
        .collect()
}
