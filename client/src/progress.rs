//! Progress on stderr while files upload: bars (one per file in flight and a total: bytes, rate,
//! time left), or a plain line every few seconds, or nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::{CancellationToken, DropGuard};

/// How often a plain progress line is printed (when anything moved).
const LINE_INTERVAL: Duration = Duration::from_secs(2);

/// What is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Bars.
    Bars,
    /// Plain lines.
    Lines,
    /// Nothing.
    Nothing,
}

/// Progress of one `hash` run; cheap to clone.
#[derive(Clone)]
pub struct Progress {
    shared: Arc<Shared>,
}

struct Shared {
    display: Display,
    bars: Option<(MultiProgress, ProgressBar)>,
    files: usize,
    bytes: AtomicU64,
    sent: AtomicU64,
    finished: AtomicUsize,
    failed: AtomicUsize,
    started: Instant,
    _lines: Option<DropGuard>,
}

impl Progress {
    /// Progress over `files` files of `bytes` bytes in all.
    pub fn new(display: Display, files: usize, bytes: u64) -> Self {
        let bars = (display == Display::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let total = multi.add(ProgressBar::new(bytes));
            total.set_style(style(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            ));
            total.set_prefix(format!("0/{files} files"));
            (multi, total)
        });
        let lines = CancellationToken::new();
        let shared = Arc::new(Shared {
            display,
            bars,
            files,
            bytes: AtomicU64::new(bytes),
            sent: AtomicU64::new(0),
            finished: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            started: Instant::now(),
            _lines: (display == Display::Lines).then(|| lines.clone().drop_guard()),
        });
        if display == Display::Lines {
            let weak = Arc::downgrade(&shared);
            tokio::spawn(async move {
                let mut last = None;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(LINE_INTERVAL) => {}
                        () = lines.cancelled() => return,
                    }
                    let Some(shared) = weak.upgrade() else { return };
                    let now = (shared.sent.load(Ordering::Relaxed), shared.finished.load(Ordering::Relaxed));
                    if last != Some(now) {
                        eprintln!("md5-client: {}", shared.line());
                        last = Some(now);
                    }
                }
            });
        }
        Progress { shared }
    }

    /// The progress of one file of `bytes` bytes, shown as `name`.
    pub fn file(&self, name: &str, bytes: u64) -> FileProgress {
        let bar = self.shared.bars.as_ref().map(|(multi, total)| {
            let bar = multi.insert_before(total, ProgressBar::new(bytes));
            bar.set_style(style(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            ));
            bar.set_prefix("uploading");
            bar.set_message(shorten(&crate::shown(name), 40));
            bar
        });
        FileProgress {
            counter: Arc::new(Counter { size: bytes, sent: AtomicU64::new(0), bar, progress: self.clone() }),
        }
    }

    /// True when progress is drawn as bars (a terminal), where a file's hashing is shown too.
    pub fn shows_bars(&self) -> bool {
        self.shared.bars.is_some()
    }

    /// Runs `print` (which writes to stdout) without tearing the bars.
    pub fn print(&self, print: impl FnOnce()) {
        match &self.shared.bars {
            Some((multi, _)) => multi.suspend(print),
            None => print(),
        }
    }

    /// Prints `note` on stderr (above the bars), unless progress is off.
    pub fn note(&self, note: &str) {
        match (&self.shared.bars, self.shared.display) {
            (_, Display::Nothing) => {}
            (Some((multi, _)), _) => multi.suspend(|| eprintln!("md5-client: {note}")),
            (None, _) => eprintln!("md5-client: {note}"),
        }
    }

    /// Counts `files` named files that could not be read at all (missing, a folder without
    /// `-r`): each is one of the files, and failed.
    pub fn unreadable(&self, files: usize) {
        self.shared.finished.fetch_add(files, Ordering::Relaxed);
        self.shared.failed.fetch_add(files, Ordering::Relaxed);
    }

    /// Clears the bars and, unless progress is off, prints a summary line.
    pub fn finish(&self) {
        if let Some((multi, total)) = &self.shared.bars {
            total.finish_and_clear();
            let _ = multi.clear();
        }
        if self.shared.display != Display::Nothing {
            let shared = &self.shared;
            let failed = shared.failed.load(Ordering::Relaxed);
            eprintln!(
                "md5-client: {} of {} files hashed ({}) in {}{}",
                shared.finished.load(Ordering::Relaxed) - failed,
                shared.files,
                HumanBytes(shared.sent.load(Ordering::Relaxed)),
                HumanDuration(shared.started.elapsed()),
                if failed > 0 { format!(", {failed} failed") } else { String::new() },
            );
        }
    }
}

impl Shared {
    fn line(&self) -> String {
        let sent = self.sent.load(Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = sent as f64 / seconds;
        let bytes = self.bytes.load(Ordering::Relaxed);
        let left = if rate > 0.0 && sent < bytes {
            format!(", about {} left", HumanDuration(Duration::from_secs_f64((bytes - sent) as f64 / rate)))
        } else {
            String::new()
        };
        format!(
            "{}/{} files, {} of {} sent ({}/s{left})",
            self.finished.load(Ordering::Relaxed),
            self.files,
            HumanBytes(sent),
            HumanBytes(bytes),
            HumanBytes(rate as u64),
        )
    }
}

/// Progress of one file; dropping it removes its bar.
pub struct FileProgress {
    counter: Arc<Counter>,
}

struct Counter {
    size: u64,
    sent: AtomicU64,
    bar: Option<ProgressBar>,
    progress: Progress,
}

impl FileProgress {
    /// A callback that counts bytes sent (given to the upload body).
    pub fn sent(&self) -> impl Fn(u64) + Clone + Send + Sync + 'static {
        let counter = self.counter.clone();
        move |bytes| {
            counter.sent.fetch_add(bytes, Ordering::Relaxed);
            counter.progress.shared.sent.fetch_add(bytes, Ordering::Relaxed);
            if let Some(bar) = &counter.bar {
                bar.inc(bytes);
            }
            if let Some((_, total)) = &counter.progress.shared.bars {
                total.inc(bytes);
            }
        }
    }

    /// The upload starts again: what it had sent no longer counts.
    pub fn restart(&self) {
        self.restart_at(0);
    }

    /// The upload goes on from byte `offset` (a resumed upload): what was sent past it counts
    /// no more.
    pub fn restart_at(&self, offset: u64) {
        let counter = &self.counter;
        let sent = counter.sent.swap(offset, Ordering::Relaxed);
        counter.progress.shared.sent.fetch_sub(sent, Ordering::Relaxed);
        let total = counter.progress.shared.sent.fetch_add(offset, Ordering::Relaxed) + offset;
        if let Some(bar) = &counter.bar {
            bar.set_position(offset);
        }
        if let Some((_, bar)) = &counter.progress.shared.bars {
            bar.set_position(total);
        }
    }

    /// The upload is done; the file now waits for its result.
    pub fn uploaded(&self) {
        if let Some(bar) = &self.counter.bar {
            bar.set_prefix("hashing");
        }
    }

    /// The service reports how far the file's hash has come: its bar shows the bytes hashed.
    pub fn hashing(&self, progress: crate::service::HashingProgress) {
        if let Some(bar) = &self.counter.bar {
            bar.set_length(progress.size_bytes);
            bar.set_position(progress.bytes_hashed);
        }
    }

    /// The file has its result (`ok`) or failed.
    pub fn finished(self, ok: bool) {
        let shared = &self.counter.progress.shared;
        let finished = shared.finished.fetch_add(1, Ordering::Relaxed) + 1;
        if !ok {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            // What a failed file will never send no longer counts towards the total.
            let unsent = self.counter.size.saturating_sub(self.counter.sent.load(Ordering::Relaxed));
            let bytes = shared.bytes.fetch_sub(unsent, Ordering::Relaxed) - unsent;
            if let Some((_, total)) = &shared.bars {
                total.set_length(bytes);
            }
        }
        if let Some((_, total)) = &shared.bars {
            total.set_prefix(format!("{finished}/{} files", shared.files));
        }
    }
}

impl Drop for FileProgress {
    fn drop(&mut self) {
        if let (Some(bar), Some((multi, _))) = (&self.counter.bar, &self.counter.progress.shared.bars) {
            bar.finish_and_clear();
            multi.remove(bar);
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `name` cut to its last `max` characters.
fn shorten(name: &str, max: usize) -> String {
    let count = name.chars().count();
    if count <= max {
        name.to_owned()
    } else {
        format!("…{}", name.chars().skip(count - max + 1).collect::<String>())
    }
}
