//! Multi-buffer MD5: the MD5s of many files advanced side by side in SIMD lanes.
//!
//! One MD5 stream cannot use a CPU's vector units (each 64-byte block depends on the previous
//! one), but the MD5s of different files are independent: an AVX2 register holds 8 of them, an
//! AVX-512 register 16. [`Lanes`] gathers the large MD5-only files of every job a worker runs
//! and feeds them to those lanes, a chunk per file per round; a file that ends leaves its lane
//! and the next waiting file takes it, between two rounds.
//!
//! The SIMD kernels are `md5-many`'s (AVX-512 with `VPTERNLOGD`/`VPROLD`, AVX2, dual-chain
//! interleaving; its single-stream kernel is also faster than `md-5`'s assembly). Its unsafe code
//! stays in that crate: this module has none, and chooses the instruction set at run time (or as
//! `MD5_SIMD` forces, which the tests use to run every path the CPU has).
//!
//! Per hashing thread, a reading thread fills one chunk per file per round while the hashing
//! thread hashes the previous round. Memory is bounded: at most [`ROUNDS_IN_FLIGHT`] rounds of
//! `width` chunks of [`CHUNK_BYTES`] per thread (AVX-512: 3 × 32 × 64 KiB = 6 MiB; AVX2: 3 MiB).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use md5_many::{Md5Many, Md5State};
use tokio::sync::oneshot;

use crate::direct_read::read_full;
use crate::running::HashProgress;

/// Bytes read per file per round. 64 KiB reads cost few system calls and, 8–16 at a time, stay in
/// the L2 and L3 caches between the copy out of the page cache and the hash.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks a file may get in one round when few files share a thread's lanes (a lone file: 4 ×
/// 64 KiB per hand-over between the reading and the hashing thread instead of one).
pub const MAX_CHUNKS_PER_ROUND: usize = 4;

/// Rounds whose buffers exist at once per thread: one being read, one queued, one being hashed.
pub const ROUNDS_IN_FLIGHT: usize = 3;

/// Which MD5 code to run (`MD5_SIMD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Md5Simd {
    /// The widest path this CPU has: AVX-512, else AVX2, else scalar.
    Auto,
    /// 16 lanes (AVX-512 F/BW/VL and the rest of Ice Lake's set); refused at start without it.
    Avx512,
    /// 8 lanes (AVX2); refused at start without it.
    Avx2,
    /// One file at a time per thread, `md-5`-style scalar code.
    Scalar,
}

/// The path an [`Engine`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdPath {
    /// 16 lanes.
    Avx512,
    /// 8 lanes.
    Avx2,
    /// One stream at a time.
    Scalar,
}

impl SimdPath {
    /// `avx512`, `avx2` or `scalar`.
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Avx512 => "avx512",
            SimdPath::Avx2 => "avx2",
            SimdPath::Scalar => "scalar",
        }
    }
}

/// An MD5 kernel for many streams at once, chosen once per process.
#[derive(Debug, Clone, Copy)]
pub struct Engine {
    path: SimdPath,
    many: Option<Md5Many>,
}

impl Engine {
    /// The engine `choice` asks for; an error when this CPU lacks the instructions it forces.
    pub fn select(choice: Md5Simd) -> Result<Engine, String> {
        let level = fearless_simd::Level::new();
        let avx512 = level.as_avx512().map(|token| Engine {
            path: SimdPath::Avx512,
            many: Some(Md5Many::from_level(fearless_simd::Level::Avx512(token))),
        });
        let avx2 = level.as_avx2().map(|token| Engine {
            path: SimdPath::Avx2,
            many: Some(Md5Many::from_level(fearless_simd::Level::Avx2(token))),
        });
        let scalar = Engine { path: SimdPath::Scalar, many: None };
        match choice {
            Md5Simd::Auto => Ok(avx512.or(avx2).unwrap_or(scalar)),
            Md5Simd::Avx512 => avx512.ok_or_else(|| "MD5_SIMD=avx512: this CPU has no AVX-512".to_owned()),
            Md5Simd::Avx2 => avx2.ok_or_else(|| "MD5_SIMD=avx2: this CPU has no AVX2".to_owned()),
            Md5Simd::Scalar => Ok(scalar),
        }
    }

    /// Every path this CPU can run, widest first (for the tests and the benchmark).
    pub fn available() -> Vec<Engine> {
        [Md5Simd::Avx512, Md5Simd::Avx2, Md5Simd::Scalar]
            .into_iter()
            .filter_map(|choice| Engine::select(choice).ok())
            .collect()
    }

    /// The path it runs.
    pub fn path(&self) -> SimdPath {
        self.path
    }

    /// MD5s advanced by one instruction stream: 16, 8 or 1.
    pub fn lanes(&self) -> usize {
        match self.many {
            Some(many) => many.lanes(),
            None => 1,
        }
    }

    /// Files one thread hashes at once: two chains of lanes with SIMD (`md5-many` interleaves
    /// two register sets to hide latency), one file without.
    pub fn width(&self) -> usize {
        match self.many {
            Some(_) => 2 * self.lanes(),
            None => 1,
        }
    }

    /// Appends `inputs[i]` to `states[i]`, each of any length.
    pub fn update(&self, states: &mut [Md5State], inputs: &[&[u8]]) {
        match self.many {
            Some(many) => many.update_many(states, inputs),
            None => {
                for (state, input) in states.iter_mut().zip(inputs) {
                    state.update(input);
                }
            }
        }
    }

    /// The digests of `states`.
    pub fn finalize(&self, states: &[Md5State]) -> Vec<[u8; 16]> {
        let mut outputs = vec![[0u8; 16]; states.len()];
        match self.many {
            Some(many) => many.finalize_many(states, &mut outputs),
            None => {
                for (state, output) in states.iter().zip(&mut outputs) {
                    *output = state.finalize();
                }
            }
        }
        outputs
    }
}

/// The answer for one file: its MD5 and length, or why it could not be read.
pub type Md5Reply = io::Result<([u8; 16], u64)>;

/// A file waiting for, or holding, a lane.
struct Job {
    path: PathBuf,
    reply: oneshot::Sender<Md5Reply>,
    progress: Arc<HashProgress>,
}

/// One hashing thread's queue and how many files it holds.
struct Thread {
    submit: mpsc::Sender<Job>,
    files: Arc<AtomicUsize>,
}

/// The worker's multi-buffer MD5 threads. Dropping it ends them once their files are done.
pub struct Lanes {
    engine: Engine,
    threads: Vec<Thread>,
    in_use: Arc<AtomicUsize>,
}

impl Lanes {
    /// Starts `threads` hashing threads (each with its reading thread) running `engine`.
    pub fn start(engine: Engine, threads: usize) -> io::Result<Lanes> {
        let in_use = Arc::new(AtomicUsize::new(0));
        let mut started = Vec::with_capacity(threads.max(1));
        for n in 0..threads.max(1) {
            let (submit, jobs) = mpsc::channel::<Job>();
            let (rounds_tx, rounds_rx) = mpsc::sync_channel::<Round>(1);
            let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
            let files = Arc::new(AtomicUsize::new(0));
            let reader = Reader {
                width: engine.width(),
                jobs,
                rounds: rounds_tx,
                empty: empty_rx,
                allocated: 0,
                files: files.clone(),
                in_use: in_use.clone(),
            };
            std::thread::Builder::new().name(format!("md5-lanes-read-{n}")).spawn(move || {
                let _crash = CrashOnPanic;
                reader.run();
            })?;
            std::thread::Builder::new().name(format!("md5-lanes-{n}")).spawn(move || {
                let _crash = CrashOnPanic;
                hash_rounds(engine, &rounds_rx, &empty_tx);
            })?;
            started.push(Thread { submit, files });
        }
        Ok(Lanes { engine, threads: started, in_use })
    }

    /// The engine the threads run.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Files in lanes now, over every thread.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// The MD5 and length of the file at `path`. The file joins the thread holding the fewest
    /// files; dropping the future takes it out of its lane before the next round.
    pub async fn md5(&self, path: PathBuf) -> Md5Reply {
        self.md5_watched(path, Arc::new(HashProgress::default())).await
    }

    /// [`Lanes::md5`], setting `progress` to the bytes handed to the hashing thread as it goes
    /// (at most [`ROUNDS_IN_FLIGHT`] rounds ahead of the bytes hashed). To stop it, drop the
    /// future.
    pub async fn md5_watched(&self, path: PathBuf, progress: Arc<HashProgress>) -> Md5Reply {
        let thread = self
            .threads
            .iter()
            .min_by_key(|thread| thread.files.load(Ordering::Relaxed))
            .expect("at least one thread");
        let (reply, answer) = oneshot::channel();
        thread.files.fetch_add(1, Ordering::Relaxed);
        if thread.submit.send(Job { path, reply, progress }).is_err() {
            thread.files.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::other("the MD5 lanes stopped"));
        }
        answer.await.unwrap_or_else(|_| Err(io::Error::other("the MD5 lanes stopped")))
    }
}

/// Ends the process if a lanes thread panics: without its threads the worker could only fail
/// the jobs sent there, while a crashed worker's jobs are taken over by another (the fault
/// model every step of a job is built for).
struct CrashOnPanic;

impl Drop for CrashOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("an MD5 lanes thread panicked; stopping the worker so that others take its jobs");
            std::process::abort();
        }
    }
}

/// One chunk of one file, and what follows it.
struct Piece {
    id: u64,
    bytes: Vec<u8>,
    then: Then,
}

enum Then {
    /// More chunks follow.
    More,
    /// The file ended after these bytes: answer with the digest and this length.
    Finish(oneshot::Sender<Md5Reply>, u64),
    /// Reading failed: answer with the error, forget the state.
    Fail(oneshot::Sender<Md5Reply>, io::Error),
    /// Its job went away (cancelled): forget the state.
    Drop,
}

type Round = Vec<Piece>;

/// A file in a lane, as the reading thread sees it.
struct Reading {
    id: u64,
    file: File,
    read: u64,
    reply: oneshot::Sender<Md5Reply>,
    progress: Arc<HashProgress>,
}

/// The reading side of one hashing thread: takes files into lanes as they free up, reads a chunk
/// of each per round.
struct Reader {
    width: usize,
    jobs: mpsc::Receiver<Job>,
    rounds: mpsc::SyncSender<Round>,
    empty: mpsc::Receiver<Vec<u8>>,
    allocated: usize,
    files: Arc<AtomicUsize>,
    in_use: Arc<AtomicUsize>,
}

impl Reader {
    fn run(mut self) {
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut active: Vec<Reading> = Vec::new();
        let mut next_id = 0u64;
        loop {
            // Idle: sleep until a file comes (or the worker stops).
            if active.is_empty() && waiting.is_empty() {
                match self.jobs.recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(_) => return,
                }
            }
            waiting.extend(self.jobs.try_iter());
            let mut round = Vec::with_capacity(self.width);
            // Cancelled files leave between rounds.
            active.retain(|file| {
                let cancelled = file.reply.is_closed();
                if cancelled {
                    round.push(Piece { id: file.id, bytes: Vec::new(), then: Then::Drop });
                    self.left();
                }
                !cancelled
            });
            waiting.retain(|job| {
                let cancelled = job.reply.is_closed();
                if cancelled {
                    self.files.fetch_sub(1, Ordering::Relaxed);
                }
                !cancelled
            });
            // Free lanes take waiting files, in arrival order.
            while active.len() < self.width {
                let Some(job) = waiting.pop_front() else { break };
                match File::open(&job.path) {
                    Ok(file) => {
                        self.in_use.fetch_add(1, Ordering::Relaxed);
                        metrics::gauge!("md5_lanes_in_use").increment(1.0);
                        active.push(Reading {
                            id: next_id,
                            file,
                            read: 0,
                            reply: job.reply,
                            progress: job.progress,
                        });
                        next_id += 1;
                    }
                    Err(err) => {
                        let _ = job.reply.send(Err(err));
                        self.files.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            // A chunk of each file, or up to [`MAX_CHUNKS_PER_ROUND`] when few files share the
            // lanes (fewer hand-overs between the threads); a read that comes up short ends it.
            let per_file = (self.width / active.len().max(1)).clamp(1, MAX_CHUNKS_PER_ROUND);
            let mut still = Vec::with_capacity(active.len());
            'files: for mut file in active.drain(..) {
                for _ in 0..per_file {
                    let mut buffer = self.buffer();
                    match read_full(&mut file.file, &mut buffer) {
                        Ok(read) if read == CHUNK_BYTES => {
                            file.read += read as u64;
                            file.progress.set(file.read);
                            round.push(Piece { id: file.id, bytes: buffer, then: Then::More });
                        }
                        Ok(read) => {
                            buffer.truncate(read);
                            let total = file.read + read as u64;
                            round.push(Piece {
                                id: file.id,
                                bytes: buffer,
                                then: Then::Finish(file.reply, total),
                            });
                            self.left();
                            continue 'files;
                        }
                        Err(err) => {
                            buffer.clear();
                            round.push(Piece {
                                id: file.id,
                                bytes: buffer,
                                then: Then::Fail(file.reply, err),
                            });
                            self.left();
                            continue 'files;
                        }
                    }
                }
                still.push(file);
            }
            active = still;
            if !round.is_empty() && self.rounds.send(round).is_err() {
                return;
            }
        }
    }

    /// A file left its lane (ended, failed or cancelled).
    fn left(&self) {
        self.files.fetch_sub(1, Ordering::Relaxed);
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("md5_lanes_in_use").decrement(1.0);
    }

    /// A chunk-sized buffer: one the hashing thread gave back, or a new one while fewer than
    /// [`ROUNDS_IN_FLIGHT`] rounds' worth exist, or else the next one given back.
    fn buffer(&mut self) -> Vec<u8> {
        let mut buffer = match self.empty.try_recv() {
            Ok(buffer) => buffer,
            Err(_) if self.allocated < ROUNDS_IN_FLIGHT * self.width => {
                self.allocated += 1;
                Vec::with_capacity(CHUNK_BYTES)
            }
            Err(_) => self.empty.recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK_BYTES)),
        };
        buffer.resize(CHUNK_BYTES, 0);
        buffer
    }
}

/// The hashing side of one thread: advances every file of a round together, answers the files
/// that ended, gives the buffers back to its reader.
fn hash_rounds(engine: Engine, rounds: &mpsc::Receiver<Round>, empty: &mpsc::Sender<Vec<u8>>) {
    let mut states: HashMap<u64, Md5State> = HashMap::new();
    for round in rounds {
        // Layer n holds the n-th piece of each file in the round (a file has one piece per
        // round when many share the lanes, up to `MAX_CHUNKS_PER_ROUND` when few do).
        let mut pieces_of: HashMap<u64, usize> = HashMap::new();
        let layer_of: Vec<usize> = round
            .iter()
            .map(|piece| {
                let seen = pieces_of.entry(piece.id).or_default();
                *seen += 1;
                *seen - 1
            })
            .collect();
        let layers = layer_of.iter().max().map_or(0, |last| last + 1);
        let mut bytes = 0u64;
        for layer in 0..layers {
            let pieces: Vec<&Piece> = round
                .iter()
                .zip(&layer_of)
                .filter(|(piece, of)| **of == layer && !piece.bytes.is_empty())
                .map(|(piece, _)| piece)
                .collect();
            let mut batch: Vec<Md5State> =
                pieces.iter().map(|piece| *states.entry(piece.id).or_default()).collect();
            let inputs: Vec<&[u8]> = pieces.iter().map(|piece| &piece.bytes[..]).collect();
            engine.update(&mut batch, &inputs);
            bytes += inputs.iter().map(|input| input.len() as u64).sum::<u64>();
            for (piece, state) in pieces.iter().zip(batch) {
                states.insert(piece.id, state);
            }
        }
        metrics::counter!("md5_hashed_bytes_total").increment(bytes);
        let mut ending = Vec::new();
        for piece in round {
            match piece.then {
                Then::More => {}
                Then::Finish(reply, total) => {
                    ending.push((states.remove(&piece.id).unwrap_or_default(), reply, total));
                }
                Then::Fail(reply, err) => {
                    states.remove(&piece.id);
                    let _ = reply.send(Err(err));
                }
                Then::Drop => {
                    states.remove(&piece.id);
                }
            }
            // Only the reader's own buffers go back (a cancel's piece has none); if the reader
            // stopped, the buffer is simply freed.
            if piece.bytes.capacity() >= CHUNK_BYTES {
                let _ = empty.send(piece.bytes);
            }
        }
        if !ending.is_empty() {
            let finished: Vec<Md5State> = ending.iter().map(|(state, _, _)| *state).collect();
            for (digest, (_, reply, total)) in engine.finalize(&finished).into_iter().zip(ending) {
                let _ = reply.send(Ok((digest, total)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use md5::Digest as _;
    use proptest::prelude::*;

    use super::*;

    fn reference(bytes: &[u8]) -> [u8; 16] {
        md5::Md5::digest(bytes).into()
    }

    /// Every path this CPU has, named on the test's output so that a run says which ran.
    fn engines() -> Vec<Engine> {
        let engines = Engine::available();
        let names: Vec<&str> = engines.iter().map(|engine| engine.path().name()).collect();
        println!("MD5 paths tested on this CPU: {}", names.join(", "));
        assert_eq!(engines.last().map(Engine::path), Some(SimdPath::Scalar));
        // `MD5_SIMD_EXPECT=avx512,avx2` makes a run on a known CPU fail if a path went missing.
        if let Ok(expected) = std::env::var("MD5_SIMD_EXPECT") {
            for name in expected.split(',').filter(|name| !name.is_empty()) {
                assert!(names.contains(&name), "{name} expected on this CPU, found {names:?}");
            }
        }
        engines
    }

    /// A length at or next to an MD5 padding edge (55/56 bytes into a block, its end), or any.
    fn length() -> impl Strategy<Value = usize> {
        prop_oneof![
            (0usize..64, prop::sample::select(vec![55usize, 56, 63, 64, 65, 0, 1]))
                .prop_map(|(blocks, edge)| blocks * 64 + edge),
            0usize..=4096,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// 1–64 messages of random lengths, fed in random slices so that they start and end in
        /// different updates (lanes idle, partial blocks carried over), equal `md-5` on every path.
        #[test]
        fn every_path_equals_md5_for_messages_fed_in_random_slices(
            lengths in prop::collection::vec(length(), 1..=64),
            seed in any::<u64>(),
            slice in 1usize..=300,
        ) {
            let messages: Vec<Vec<u8>> = lengths
                .iter()
                .enumerate()
                .map(|(i, len)| (0..*len).map(|j| (seed as usize ^ (i * 131 + j * 7)) as u8).collect())
                .collect();
            for engine in Engine::available() {
                let mut states = vec![Md5State::new(); messages.len()];
                let mut offsets = vec![0usize; messages.len()];
                let mut step = 0usize;
                while offsets.iter().zip(&messages).any(|(offset, message)| *offset < message.len()) {
                    // Message i gets a slice of its own length each step; some get none.
                    let inputs: Vec<&[u8]> = messages
                        .iter()
                        .enumerate()
                        .map(|(i, message)| {
                            let take = if (i + step).is_multiple_of(5) { 0 } else { slice * (1 + (i % 3)) * 8 };
                            let start = offsets[i].min(message.len());
                            let end = (start + take).min(message.len());
                            offsets[i] = end;
                            &message[start..end]
                        })
                        .collect();
                    engine.update(&mut states, &inputs);
                    step += 1;
                }
                let digests = engine.finalize(&states);
                for (i, message) in messages.iter().enumerate() {
                    prop_assert_eq!(digests[i], reference(message), "{} message {} of {} bytes", engine.path().name(), i, message.len());
                }
            }
        }
    }

    #[test]
    fn the_paths_this_cpu_has_are_named_and_a_missing_one_is_refused_with_a_reason() {
        let engines = engines();
        for engine in &engines {
            assert_eq!(
                engine.width(),
                if engine.path() == SimdPath::Scalar { 1 } else { 2 * engine.lanes() }
            );
        }
        let level = fearless_simd::Level::new();
        match Engine::select(Md5Simd::Avx512) {
            Ok(engine) => assert_eq!((engine.path(), engine.lanes()), (SimdPath::Avx512, 16)),
            Err(reason) => {
                assert!(level.as_avx512().is_none());
                assert_eq!(reason, "MD5_SIMD=avx512: this CPU has no AVX-512");
            }
        }
        match Engine::select(Md5Simd::Avx2) {
            Ok(engine) => assert_eq!((engine.path(), engine.lanes()), (SimdPath::Avx2, 8)),
            Err(reason) => assert_eq!(reason, "MD5_SIMD=avx2: this CPU has no AVX2"),
        }
        assert_eq!(Engine::select(Md5Simd::Auto).unwrap().path(), engines[0].path());
    }

    fn write_files(dir: &std::path::Path, lengths: &[usize]) -> Vec<(PathBuf, [u8; 16], u64)> {
        std::fs::create_dir_all(dir).unwrap();
        lengths
            .iter()
            .enumerate()
            .map(|(i, len)| {
                let bytes: Vec<u8> = (0..*len).map(|j| (i * 17 + j * 13 + j / 251) as u8).collect();
                let path = dir.join(format!("f{i}"));
                std::fs::write(&path, &bytes).unwrap();
                (path, reference(&bytes), *len as u64)
            })
            .collect()
    }

    /// Sizes at the edges of a chunk and of a block, small and large, mixed.
    fn mixed_lengths(count: usize) -> Vec<usize> {
        let edges = [0, 1, 55, 56, 64, 65, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 3 * CHUNK_BYTES];
        (0..count).map(|i| edges[i % edges.len()] + (i / edges.len()) * 40_000).collect()
    }

    /// More files than lanes, arriving while others run and ending at different rounds: each
    /// file that ends frees a lane the next one takes. Every digest and length is right, and
    /// every lane is free at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_arriving_while_others_hash_refill_the_lanes_and_each_gets_its_md5() {
        for engine in engines() {
            for threads in [1, 2] {
                let dir = std::env::temp_dir().join(format!("md5-lanes-{}", uuid::Uuid::new_v4()));
                let count = 64.min(2 * engine.width() * threads + 5);
                let files = write_files(&dir, &mixed_lengths(count));
                let lanes = Arc::new(Lanes::start(engine, threads).unwrap());
                let mut running = tokio::task::JoinSet::new();
                for (n, (path, md5, size)) in files.iter().cloned().enumerate() {
                    let lanes = lanes.clone();
                    running.spawn(async move { (lanes.md5(path).await.unwrap(), (md5, size)) });
                    // A third arrive once the first ones are hashing.
                    if n == count * 2 / 3 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                while let Some(done) = running.join_next().await {
                    let (got, want) = done.unwrap();
                    assert_eq!(got, want, "{} with {threads} thread(s)", engine.path().name());
                }
                assert_eq!(lanes.in_use(), 0);
                std::fs::remove_dir_all(dir).unwrap();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_alone_a_missing_file_and_a_cancelled_one_leave_nothing_behind() {
        for engine in engines() {
            let dir = std::env::temp_dir().join(format!("md5-lanes-{}", uuid::Uuid::new_v4()));
            let files = write_files(&dir, &[5 * CHUNK_BYTES + 123, 40 << 20]);
            let lanes = Lanes::start(engine, 2).unwrap();
            let (path, md5, size) = files[0].clone();
            assert_eq!(lanes.md5(path).await.unwrap(), (md5, size), "{}", engine.path().name());
            let missing = lanes.md5(dir.join("missing")).await.unwrap_err();
            assert_eq!(missing.kind(), io::ErrorKind::NotFound);
            // A 40 MiB file dropped once it holds a lane leaves it within a round.
            let cancelled =
                tokio::time::timeout(Duration::from_millis(1), lanes.md5(files[1].0.clone())).await;
            assert!(cancelled.is_err(), "40 MiB took less than a millisecond");
            let freed = tokio::time::timeout(Duration::from_secs(10), async {
                while lanes.in_use() > 0 || lanes.threads.iter().any(|t| t.files.load(Ordering::Relaxed) > 0)
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
            assert!(freed.is_ok(), "the cancelled file still holds a lane");
            let (path, md5, size) = files[0].clone();
            assert_eq!(lanes.md5(path).await.unwrap(), (md5, size), "after a cancel");
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
