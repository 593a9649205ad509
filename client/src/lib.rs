//! `md5-client`: hashes files and folders through the MD5 service and prints what `md5sum`
//! would, so `md5sum -c` verifies the output.
//!
//! It shares only the HTTP API with the service: [`service`] speaks `POST /api/v1/hashes`
//! (streamed, with an `Idempotency-Key`) and `GET /api/v1/hashes/{id}?wait=`.

pub mod algorithms;
pub mod check;
pub mod cli;
pub mod progress;
pub mod service;

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::json;

use algorithms::Algorithm;
use cli::{Cli, Command, HashArgs, ProgressMode, Sending, StatusArgs};
use progress::{Display, Progress};
use service::{Ask, Failure, Service, Task};

/// Runs the command line; the exit status says whether everything succeeded.
pub async fn run(cli: Cli) -> ExitCode {
    let timeout = std::time::Duration::from_secs(cli.timeout);
    let service = match Service::new(&cli.url, cli.api_key.as_deref(), cli.retries, timeout) {
        Ok(service) => service,
        Err(err) => {
            eprintln!("md5-client: {err:#}");
            return ExitCode::from(2);
        }
    };
    let ok = match cli.command {
        Command::Hash(args) => hash(&service, args).await,
        Command::Check(args) => check::run(&service, args).await,
        Command::Status(args) => status(&service, args).await,
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// One file to send, in the order the output lists it.
struct Job {
    index: usize,
    path: PathBuf,
    size: u64,
    ask: Ask,
}

/// What became of one file: its finished task (done or not), or why there is none.
struct Outcome {
    path: PathBuf,
    result: Result<Task, String>,
}

/// How progress is shown, from the flags.
fn display(mode: ProgressMode, quiet: bool) -> Display {
    match (quiet, mode) {
        (true, _) | (_, ProgressMode::None) => Display::Nothing,
        (_, ProgressMode::Bars) => Display::Bars,
        (_, ProgressMode::Lines) => Display::Lines,
        (_, ProgressMode::Auto) if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() => {
            Display::Bars
        }
        (_, ProgressMode::Auto) => Display::Lines,
    }
}

/// Sends every job (`sending.jobs` at once) and hands each outcome to `each` in the order of
/// the jobs, each as soon as those before it are out; `unreadable` more files were named but
/// could not be read (they count in the summary, as failed).
async fn send_all(
    service: &Service,
    sending: &Sending,
    display: Display,
    (jobs, unreadable): (Vec<Job>, usize),
    mut each: impl FnMut(&Progress, Outcome),
) {
    let progress = Progress::new(display, jobs.len() + unreadable, jobs.iter().map(|job| job.size).sum());
    progress.unreadable(unreadable);
    let resume = Resume { threshold: sending.resume_threshold, disabled: sending.no_resume };
    let mut outcomes = futures_util::stream::iter(jobs)
        .map(|job| {
            let (service, progress) = (service.clone(), progress.clone());
            async move {
                let result = send_one(&service, &progress, &job, resume).await;
                (job.index, Outcome { path: job.path, result })
            }
        })
        .buffer_unordered(sending.jobs as usize);
    let mut waiting = BTreeMap::new();
    let mut next = 0;
    while let Some((index, outcome)) = outcomes.next().await {
        waiting.insert(index, outcome);
        while let Some(outcome) = waiting.remove(&next) {
            next += 1;
            each(&progress, outcome);
        }
    }
    progress.finish();
}

/// `md5-client hash`: true when every file was hashed.
async fn hash(service: &Service, args: HashArgs) -> bool {
    let (paths, unreadable) = collect(&args.paths, args.recursive);
    let mut ok = unreadable == 0;
    let mut algorithms = Vec::new();
    for algorithm in if args.algorithms.is_empty() { vec![algorithms::MD5] } else { args.algorithms } {
        if !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
        }
    }
    let ask = Ask { algorithms: algorithms.clone(), expected: None };
    let jobs: Vec<Job> = paths
        .into_iter()
        .enumerate()
        .map(|(index, (path, size))| Job { index, path, size, ask: ask.clone() })
        .collect();
    let display = display(args.sending.progress, args.quiet);
    send_all(service, &args.sending, display, (jobs, unreadable), |progress, mut outcome| {
        outcome.result = outcome.result.and_then(|task| done_with(task, &algorithms));
        if let Err(reason) = &outcome.result {
            ok = false;
            progress.print(|| eprintln!("md5-client: {}: {reason}", shown(&outcome.path.to_string_lossy())));
        }
        progress.print(|| print_outcome(&outcome, &algorithms, args.tag, args.json));
    })
    .await;
    ok
}

/// A done task with a digest for each of `algorithms`, or why it is not one.
fn done_with(task: Task, algorithms: &[Algorithm]) -> Result<Task, String> {
    if task.status != "done" {
        return Err(format!(
            "the service could not hash it: {}",
            task.error.as_deref().unwrap_or("no reason given")
        ));
    }
    match algorithms.iter().find(|&&algorithm| task.digest(algorithm).is_none()) {
        Some(missing) => Err(format!(
            "the service answered without a valid {} digest (is it older than this client?)",
            missing.name()
        )),
        None => Ok(task),
    }
}

/// When files are sent resumably.
#[derive(Debug, Clone, Copy)]
struct Resume {
    threshold: u64,
    disabled: bool,
}

/// Uploads one file (retried under one key, or resumably when large) and waits for its task to
/// finish.
async fn send_one(service: &Service, progress: &Progress, job: &Job, resume: Resume) -> Result<Task, String> {
    let file = progress.file(&job.path.to_string_lossy(), job.size);
    // One key per file and run: every retry of this file is the same upload to the service.
    let key = uuid::Uuid::new_v4().to_string();
    let name = shown(&job.path.to_string_lossy());
    let retry = |reason: &str, wait: Duration| {
        progress.note(&format!("{name}: {reason}; trying again in {:.1} s", wait.as_secs_f64()));
    };
    let resumable = !resume.disabled && job.size >= resume.threshold;
    let result = async {
        let created = if resumable {
            service
                .upload_resumable(&job.path, &job.ask, file.sent(), |offset| file.restart_at(offset), &retry)
                .await?
        } else {
            service.upload(&job.path, &key, &job.ask, file.sent(), || file.restart(), &retry).await?
        };
        file.uploaded();
        if created.is_finished() {
            Ok(created)
        } else if progress.shows_bars() {
            service.wait_finished_showing(&created.id, &retry, |hashed| file.hashing(hashed)).await
        } else {
            service.wait_finished(&created.id, &retry).await
        }
    }
    .await
    .map_err(|failure: Failure| failure.to_string());
    file.finished(result.as_ref().is_ok_and(|task| task.status == "done"));
    result
}

/// Writes one file's lines to stdout: `<hex>  <path>` per algorithm (escaped as md5sum does;
/// `SHA256 (path) = <hex>` with `tag`) or, with `json`, one JSON object. A failed file has no
/// lines (its reason went to stderr).
fn print_outcome(outcome: &Outcome, algorithms: &[Algorithm], tag: bool, json: bool) {
    let mut stdout = std::io::stdout().lock();
    let written = if json {
        let object = match &outcome.result {
            Ok(task) => json!({"path": outcome.path.to_string_lossy(), "id": task.id, "status": task.status,
                "md5": task.md5, "digests": task.digests, "size_bytes": task.size_bytes, "error": null}),
            Err(reason) => json!({"path": outcome.path.to_string_lossy(), "id": null, "status": "error",
                "md5": null, "digests": null, "size_bytes": null, "error": reason}),
        };
        writeln!(stdout, "{object}")
    } else {
        match &outcome.result {
            Ok(task) => algorithms.iter().try_for_each(|&algorithm| {
                let hex = task.digest(algorithm).unwrap_or_default();
                let line = if tag {
                    tag_line(algorithm, hex, &outcome.path)
                } else {
                    md5sum_line(hex, &outcome.path)
                };
                stdout.write_all(&line)
            }),
            Err(_) => Ok(()),
        }
    };
    if let Err(err) = written.and_then(|()| stdout.flush()) {
        // stdout closed (`| head`): nothing more can be reported there.
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("md5-client: cannot write the output: {err}");
        }
    }
}

/// `SHA256 (<path>) = <hex>\n` as `sha256sum --tag` writes it (a path holding `\`, a newline or
/// a carriage return escaped, the line then starting with `\`).
pub fn tag_line(algorithm: Algorithm, hex: &str, path: &Path) -> Vec<u8> {
    let (escaped, name) = escape_path(path);
    let mut line = Vec::with_capacity(name.len() + hex.len() + 16);
    if escaped {
        line.push(b'\\');
    }
    line.extend_from_slice(algorithm.tag().as_bytes());
    line.extend_from_slice(b" (");
    line.extend_from_slice(&name);
    line.extend_from_slice(b") = ");
    line.extend_from_slice(hex.as_bytes());
    line.push(b'\n');
    line
}

/// `<hex>  <path>\n` as GNU md5sum (sha256sum, …) writes it: a path holding `\`, a newline or
/// a carriage return is escaped, and the line then starts with `\`.
pub fn md5sum_line(hex: &str, path: &Path) -> Vec<u8> {
    let (escaped, name) = escape_path(path);
    let mut line = Vec::with_capacity(name.len() + hex.len() + 4);
    if escaped {
        line.push(b'\\');
    }
    line.extend_from_slice(hex.as_bytes());
    line.extend_from_slice(b"  ");
    line.extend_from_slice(&name);
    line.push(b'\n');
    line
}

/// The path as coreutils writes it in a sum line, and whether it had to be escaped.
fn escape_path(path: &Path) -> (bool, Vec<u8>) {
    let raw = path.as_os_str().as_bytes();
    let escape = raw.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r'));
    let mut name = Vec::with_capacity(raw.len());
    for &byte in raw {
        match byte {
            b'\\' if escape => name.extend_from_slice(b"\\\\"),
            b'\n' => name.extend_from_slice(b"\\n"),
            b'\r' => name.extend_from_slice(b"\\r"),
            other => name.push(other),
        }
    }
    (escape, name)
}

/// `name` for a terminal: control characters (a newline in a file name) escaped, the rest as is.
pub fn shown(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// The files named by `paths` (folders walked with `recursive`, in name order) with their sizes;
/// and how many named paths could not be used (each reason printed).
fn collect(paths: &[PathBuf], recursive: bool) -> (Vec<(PathBuf, u64)>, usize) {
    let mut files = Vec::new();
    let mut refused = 0;
    let mut refuse = |path: &Path, reason: String| {
        eprintln!("md5-client: {}: {reason}", shown(&path.to_string_lossy()));
        refused += 1;
    };
    for path in paths {
        match std::fs::metadata(path) {
            Err(err) => refuse(path, err.to_string()),
            Ok(meta) if meta.is_file() => files.push((path.clone(), meta.len())),
            Ok(meta) if meta.is_dir() && !recursive => {
                refuse(path, "is a folder (use -r to hash what is in it)".into())
            }
            Ok(meta) if meta.is_dir() => {
                for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
                    match entry {
                        Err(err) => {
                            let at = err.path().unwrap_or(path).to_owned();
                            refuse(&at, err.to_string());
                        }
                        Ok(entry) if entry.file_type().is_file() => match entry.metadata() {
                            Ok(meta) => files.push((entry.into_path(), meta.len())),
                            Err(err) => refuse(entry.path(), err.to_string()),
                        },
                        // Folders are walked; links, sockets, devices and pipes are not files to hash.
                        Ok(_) => {}
                    }
                }
            }
            Ok(_) => refuse(path, "is not a regular file".into()),
        }
    }
    (files, refused)
}

/// `md5-client status`: true when every task was found and none failed.
async fn status(service: &Service, args: StatusArgs) -> bool {
    let mut ok = true;
    for id in &args.ids {
        let retry = |reason: &str, wait: Duration| {
            eprintln!("md5-client: {id}: {reason}; trying again in {:.1} s", wait.as_secs_f64());
        };
        let answer = service.task_json(id, args.wait, &retry).await;
        match answer.and_then(|json| Ok((service.checked_task(json.clone())?, json))) {
            Ok((task, json)) => {
                if args.json {
                    println!("{json}");
                } else {
                    let detail = task.md5.as_deref().or(task.error.as_deref()).unwrap_or("-");
                    println!("{}  {}  {}", shown(id), task.status, shown(detail));
                }
                ok &= task.status != "failed" && (!task.is_finished() || task.status == "done");
            }
            Err(failure) => {
                eprintln!("md5-client: {id}: {failure}");
                ok = false;
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn names_on_the_terminal_show_control_characters_escaped() {
        assert_eq!(shown("a\nb\rc\td ü"), "a\\nb\\rc\\td ü");
    }

    #[test]
    fn lines_escape_paths_as_md5sum_does() {
        let md5 = "d41d8cd98f00b204e9800998ecf8427e";
        assert_eq!(md5sum_line(md5, Path::new("a b/c.txt")), format!("{md5}  a b/c.txt\n").into_bytes());
        assert_eq!(md5sum_line(md5, Path::new("a\\b")), format!("\\{md5}  a\\\\b\n").into_bytes());
        assert_eq!(md5sum_line(md5, Path::new("c\nd\re")), format!("\\{md5}  c\\nd\\re\n").into_bytes());
        let raw = Path::new(OsStr::from_bytes(b"caf\xe9"));
        assert_eq!(md5sum_line(md5, raw), [format!("{md5}  caf").as_bytes(), b"\xe9\n"].concat());
    }
}
