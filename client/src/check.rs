//! `md5-client check SUMFILE…`: what `md5sum -c` does, with the service doing the comparing.
//! Each listed file is uploaded with the digest its line expects (`Repr-Digest`); the service
//! fails the task on a mismatch, and the file is reported `FAILED`.

use std::io::{BufRead as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use crate::algorithms::Algorithm;
use crate::cli::CheckArgs;
use crate::service::{Ask, Service};
use crate::{Job, display, send_all, shown};

/// One line of a sum file: the expected digest of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The algorithm, from the line's tag, `-a`, or the digest's length.
    pub algorithm: Algorithm,
    /// The expected digest, lowercase hex.
    pub hex: String,
    /// The file, as the line names it.
    pub path: PathBuf,
}

/// Reads one line as md5sum, sha1sum, sha256sum or sha512sum write them: `<hex>  <path>`,
/// `<hex> *<path>` (binary mode), or `TAG (<path>) = <hex>` (`--tag`); a leading `\` means the
/// path has `\\`, `\n` and `\r` escaped. `None` for a line in none of these forms.
pub fn parse_line(line: &[u8], forced: Option<Algorithm>) -> Option<Entry> {
    let (escaped, line) = match line.strip_prefix(b"\\") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (tag, hex, path) = if let Some(open) = find(line, b" (") {
        let close = rfind(line, b") = ")?;
        let tag = std::str::from_utf8(&line[..open]).ok()?;
        (Some(tag), &line[close + 4..], &line[open + 2..close])
    } else {
        let space = line.iter().position(|&b| b == b' ')?;
        let rest = &line[space + 1..];
        let path = rest.strip_prefix(b" ").or_else(|| rest.strip_prefix(b"*"))?;
        (None, &line[..space], path)
    };
    let hex = std::str::from_utf8(hex).ok()?.to_ascii_lowercase();
    let algorithm = match tag {
        Some(tag) => Algorithm::from_tag(tag)?,
        None => forced.or_else(|| crate::algorithms::guess(hex.len()))?,
    };
    if !algorithm.is_digest(&hex) || path.is_empty() {
        return None;
    }
    let path = if escaped { unescape(path)? } else { path.to_vec() };
    Some(Entry { algorithm, hex, path: PathBuf::from(std::ffi::OsStr::from_bytes(&path)) })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|window| window == needle)
}

/// `\\`, `\n` and `\r` back to the bytes they stand for; any other escape is malformed.
fn unescape(path: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(path.len());
    let mut bytes = path.iter();
    while let Some(&byte) = bytes.next() {
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        out.push(match bytes.next()? {
            b'\\' => b'\\',
            b'n' => b'\n',
            b'r' => b'\r',
            _ => return None,
        });
    }
    Some(out)
}

/// What one file's check came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// The service computed another digest.
    Mismatch,
    /// The file could not be opened or read here.
    Unreadable,
    /// The service could not check it (the reason goes to stderr).
    Unchecked,
}

/// `md5-client check`: true when every listed file matched.
pub async fn run(service: &Service, args: CheckArgs) -> bool {
    let mut entries = Vec::new();
    let mut malformed = 0usize;
    let mut ok = true;
    for sum_file in &args.sum_files {
        let reader: Box<dyn std::io::BufRead> = if sum_file.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            match std::fs::File::open(sum_file) {
                Ok(file) => Box::new(std::io::BufReader::new(file)),
                Err(err) => {
                    eprintln!("md5-client: {}: {err}", shown(&sum_file.to_string_lossy()));
                    ok = false;
                    continue;
                }
            }
        };
        for line in reader.split(b'\n') {
            let line = match line {
                Ok(line) => line,
                Err(err) => {
                    eprintln!("md5-client: {}: {err}", shown(&sum_file.to_string_lossy()));
                    ok = false;
                    break;
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_line(&line, args.algorithm) {
                Some(entry) => entries.push(entry),
                None => malformed += 1,
            }
        }
    }
    if malformed > 0 {
        eprintln!(
            "md5-client: WARNING: {malformed} {} improperly formatted",
            plural(malformed, "line is", "lines are")
        );
    }
    if entries.is_empty() {
        eprintln!("md5-client: no properly formatted checksum lines found");
        return false;
    }

    let mut counts = [0usize; 4];
    let mut jobs = Vec::new();
    // The sum file's line of each job, and the lines whose file cannot be read: every line is
    // reported in the sum file's order, as `sha256sum -c` does.
    let mut line_of_job = Vec::new();
    // What each job's line expects: the answer must carry that digest, equal (a service that
    // ignores the expected digest still answers `done`).
    let mut expected_of_job = Vec::new();
    let mut unreadable = std::collections::VecDeque::new();
    for (line, entry) in entries.into_iter().enumerate() {
        match std::fs::metadata(&entry.path) {
            Ok(meta) if meta.is_file() => {
                expected_of_job.push((entry.algorithm, entry.hex.clone()));
                let ask =
                    Ask { algorithms: vec![entry.algorithm], expected: Some((entry.algorithm, entry.hex)) };
                jobs.push(Job { index: jobs.len(), path: entry.path, size: meta.len(), ask });
                line_of_job.push(line);
            }
            Ok(_) => unreadable.push_back((line, entry.path, "is not a regular file".to_owned())),
            Err(err) => unreadable.push_back((line, entry.path, err.to_string())),
        }
    }
    // Reports the unreadable lines before `line`.
    let mut report_unreadable = |before: usize, counts: &mut [usize; 4], print: &dyn Fn(&dyn Fn())| {
        while unreadable.front().is_some_and(|(line, _, _)| *line < before) {
            let (_, path, reason) = unreadable.pop_front().expect("a front");
            print(&|| {
                eprintln!("md5-client: {}: {reason}", shown(&path.to_string_lossy()));
                report(&path, Verdict::Unreadable, args.quiet);
            });
            counts[Verdict::Unreadable as usize] += 1;
        }
    };
    let display = display(args.sending.progress, true);
    let mut next_job = 0;
    send_all(service, &args.sending, display, (jobs, 0), |progress, outcome| {
        report_unreadable(line_of_job[next_job], &mut counts, &|print| progress.print(print));
        let (algorithm, expected) = &expected_of_job[next_job];
        next_job += 1;
        let verdict = match &outcome.result {
            Ok(task) if task.status == "done" => match task.digest(*algorithm) {
                Some(computed) if computed.eq_ignore_ascii_case(expected) => Verdict::Ok,
                Some(_) => Verdict::Mismatch,
                None => {
                    progress.print(|| {
                        eprintln!(
                            "md5-client: {}: could not be checked: the service's answer carries no {} digest",
                            shown(&outcome.path.to_string_lossy()),
                            algorithm.name()
                        )
                    });
                    Verdict::Unchecked
                }
            },
            Ok(task) if task.error.as_deref().is_some_and(|error| error.contains(" mismatch: expected ")) => {
                Verdict::Mismatch
            }
            Ok(task) => {
                let reason = task.error.as_deref().unwrap_or("no reason given");
                progress.print(|| {
                    eprintln!(
                        "md5-client: {}: the service could not check it: {reason}",
                        shown(&outcome.path.to_string_lossy())
                    )
                });
                Verdict::Unchecked
            }
            Err(reason) => {
                progress
                    .print(|| eprintln!("md5-client: {}: {reason}", shown(&outcome.path.to_string_lossy())));
                Verdict::Unchecked
            }
        };
        counts[verdict as usize] += 1;
        progress.print(|| report(&outcome.path, verdict, args.quiet));
    })
    .await;
    report_unreadable(usize::MAX, &mut counts, &|print| print());

    let [_, mismatched, unreadable, unchecked] = counts;
    if unreadable > 0 {
        eprintln!(
            "md5-client: WARNING: {unreadable} listed {} could not be read",
            plural(unreadable, "file", "files")
        );
    }
    if mismatched > 0 {
        eprintln!(
            "md5-client: WARNING: {mismatched} computed {} did NOT match",
            plural(mismatched, "checksum", "checksums")
        );
    }
    if unchecked > 0 {
        eprintln!(
            "md5-client: WARNING: {unchecked} {} could not be checked",
            plural(unchecked, "file", "files")
        );
    }
    ok && mismatched + unreadable + unchecked == 0
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// `path: OK` (unless `quiet`), `path: FAILED` or `path: FAILED open or read`, as `md5sum -c`
/// prints them: a path with a newline or carriage return is escaped (its backslashes too), the
/// line then starting with `\`; any other path is printed as it is.
fn report(path: &Path, verdict: Verdict, quiet: bool) {
    let said = match verdict {
        Verdict::Ok if quiet => return,
        Verdict::Ok => "OK",
        Verdict::Mismatch | Verdict::Unchecked => "FAILED",
        Verdict::Unreadable => "FAILED open or read",
    };
    let raw = path.as_os_str().as_bytes();
    let mut line = Vec::with_capacity(raw.len() + 24);
    if raw.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        line.push(b'\\');
        for &byte in raw {
            match byte {
                b'\\' => line.extend_from_slice(b"\\\\"),
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                other => line.push(other),
            }
        }
    } else {
        line.extend_from_slice(raw);
    }
    line.extend_from_slice(b": ");
    line.extend_from_slice(said.as_bytes());
    line.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_all(&line).and_then(|()| stdout.flush());
    if let Err(err) = written
        && err.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("md5-client: cannot write the output: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms;

    #[test]
    fn lines_of_every_coreutils_form_parse() {
        let md5 = "d41d8cd98f00b204e9800998ecf8427e";
        let sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let entry = parse_line(format!("{md5}  a b.txt").as_bytes(), None).unwrap();
        assert_eq!((entry.algorithm, entry.path.to_str().unwrap()), (algorithms::MD5, "a b.txt"));
        let entry = parse_line(format!("{}  f", sha256.to_uppercase()).as_bytes(), None).unwrap();
        assert_eq!((entry.algorithm.name(), entry.hex.as_str()), ("sha-256", sha256));
        assert_eq!(parse_line(format!("{md5} *bin").as_bytes(), None).unwrap().path, Path::new("bin"));
        let entry = parse_line(format!("\\{md5}  c\\nd\\\\e").as_bytes(), None).unwrap();
        assert_eq!(entry.path, Path::new("c\nd\\e"));
        let entry = parse_line(format!("SHA256 (x (1).txt) = {sha256}").as_bytes(), None).unwrap();
        assert_eq!((entry.algorithm.name(), entry.path.to_str().unwrap()), ("sha-256", "x (1).txt"));
        let forced = parse_line(format!("{sha256}  f").as_bytes(), algorithms::parse("b3").ok()).unwrap();
        assert_eq!(forced.algorithm.name(), "blake3");
        for bad in [
            format!("{md5} f"),
            md5.to_owned(),
            "nothex0000000000000000000000000000  f".to_owned(),
            format!("{md5}0  f"),
            format!("SHA3 (f) = {sha256}"),
            format!("\\{md5}  bad\\escape"),
        ] {
            assert_eq!(parse_line(bad.as_bytes(), None), None, "{bad}");
        }
    }

    #[test]
    fn what_tag_and_md5sum_lines_write_reads_back() {
        let path = Path::new("dir/we\nird\\name.txt");
        let sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let algorithm = algorithms::parse("sha256").unwrap();
        for line in [crate::md5sum_line(sha256, path), crate::tag_line(algorithm, sha256, path)] {
            let entry = parse_line(line.strip_suffix(b"\n").unwrap(), None).unwrap();
            assert_eq!(
                (entry.algorithm, entry.hex.as_str(), entry.path.as_path()),
                (algorithm, sha256, path)
            );
        }
    }
}
