//! Resource log files with a size cap: `<logs>/<resource>.log`, rotated to `.log.1` (one old
//! generation kept) before a write would take it past the cap, so a chatty or crash-looping
//! process uses at most twice the cap on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::{EnvDirs, ProviderError};

/// The log path of `resource`.
pub(crate) fn log_path(dirs: &EnvDirs, resource: &str) -> PathBuf {
    dirs.logs.join(format!("{resource}.log"))
}

/// The path of the rotated generation of `path`.
fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// An append-only log file that never grows past `max_bytes`.
#[derive(Debug)]
pub(crate) struct CappedLog {
    path: PathBuf,
    max_bytes: u64,
    /// `None` until the first write of a log opened lazily ([`CappedLog::open_lazy`]).
    file: Option<File>,
    len: u64,
    /// Notes held back until something else is written ([`CappedLog::note_deferred`]).
    deferred: Vec<u8>,
    /// Values replaced by `<redacted>` before they reach the file.
    hidden: Hidden,
    /// With redaction on, output is written by whole lines (so that a value split across two
    /// reads is still found): the start of a line not yet ended.
    pending: Vec<u8>,
}

/// A line longer than this is written without waiting for its end.
const MAX_PENDING: usize = 64 * 1024;

/// The values a log replaces by `<redacted>`, and how they are found: the output is scanned
/// from its start, the longest value found at a place is replaced, and the scan goes on after
/// it (aho-corasick's leftmost-longest). Each value is 4 characters or longer; a secret of
/// several lines adds each of its lines ([`slipway_core::redact::hidden_texts`]).
#[derive(Debug, Default)]
struct Hidden {
    /// Longest first.
    values: Vec<Vec<u8>>,
    /// `None` when there is no value.
    finder: Option<aho_corasick::AhoCorasick>,
    /// The length of the longest value with no line end in it: as much of one as a line can
    /// hold.
    longest_in_line: usize,
}

impl Hidden {
    fn new(values: &[String]) -> Hidden {
        let mut values: Vec<Vec<u8>> = values
            .iter()
            .flat_map(|v| slipway_core::redact::hidden_texts(v))
            .map(|v| v.as_bytes().to_vec())
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        // Values this many (and bytes so few) always build.
        let finder = (!values.is_empty()).then(|| {
            aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&values)
                .expect("an automaton of the secrets' values")
        });
        let longest_in_line = values
            .iter()
            .filter(|v| !v.contains(&b'\n'))
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        Hidden {
            values,
            finder,
            longest_in_line,
        }
    }

    /// `bytes` with the values in them replaced by `<redacted>`.
    fn redact(&self, bytes: &[u8]) -> Vec<u8> {
        let Some(finder) = &self.finder else {
            return bytes.to_vec();
        };
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        for found in finder.find_iter(bytes) {
            out.extend_from_slice(&bytes[at..found.start()]);
            out.extend_from_slice(b"<redacted>");
            at = found.end();
        }
        out.extend_from_slice(&bytes[at..]);
        out
    }

    /// Where `pending`, the start of a line longer than [`MAX_PENDING`] whose end has not
    /// come, is cut to write that much now: at the first place the scan reaches from which a
    /// value could go on past what has come (the line's next bytes may finish it, or make a
    /// longer one of a value found there), so that the scan of what is written now and of
    /// what waits finds what the scan of the whole line would, and no value is split between
    /// the two. What waits is shorter than the longest value.
    fn line_cut(&self, pending: &[u8]) -> usize {
        let Some(finder) = &self.finder else {
            return pending.len();
        };
        // Every value that starts before this fits in what has come: the scan's choices
        // there are final.
        let settled = pending
            .len()
            .saturating_sub(self.longest_in_line.saturating_sub(1));
        let mut at = 0;
        for found in finder.find_iter(pending) {
            if found.start() >= settled {
                break;
            }
            at = found.end();
        }
        let mut at = at.max(settled);
        while at < pending.len() {
            let rest = &pending[at..];
            if self
                .values
                .iter()
                .any(|v| v.len() > rest.len() && v.starts_with(rest))
            {
                return at;
            }
            // Past the longest value found here (values are longest first), or one byte.
            at += self
                .values
                .iter()
                .find(|v| rest.starts_with(v))
                .map_or(1, Vec::len);
        }
        pending.len()
    }
}

/// A log shared by the threads copying a child's output.
pub(crate) type SharedLog = Arc<Mutex<CappedLog>>;

impl CappedLog {
    /// Opens (creating it and its directory) the log at `path` for appending.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<CappedLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(CappedLog {
            path: path.to_owned(),
            // A cap of zero would rotate forever without writing anything.
            max_bytes: max_bytes.max(1),
            file: Some(file),
            len,
            deferred: Vec::new(),
            hidden: Hidden::default(),
            pending: Vec::new(),
        })
    }

    /// Opens the log at `path` for appending if it exists; if not, it is created by the first
    /// write (a process that never writes anything costs no file). Its directory must exist
    /// and be writable now: what would make the first write fail is said here.
    pub fn open_lazy(path: &Path, max_bytes: u64) -> io::Result<CappedLog> {
        let (file, len) = match OpenOptions::new().append(true).open(path) {
            Ok(file) => {
                let len = file.metadata()?.len();
                (Some(file), len)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = path.parent().unwrap_or(Path::new("."));
                nix::unistd::access(
                    dir,
                    nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
                )
                .map_err(io::Error::from)?;
                (None, 0)
            }
            Err(e) => return Err(e),
        };
        Ok(CappedLog {
            path: path.to_owned(),
            max_bytes: max_bytes.max(1),
            file,
            len,
            deferred: Vec::new(),
            hidden: Hidden::default(),
            pending: Vec::new(),
        })
    }

    /// The open file, created now if it was not yet (with the notes held back first).
    fn file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.len = file.metadata()?.len();
            self.file = Some(file);
            let deferred = std::mem::take(&mut self.deferred);
            self.write_raw(&deferred)?;
        }
        Ok(self.file.as_mut().expect("opened just above"))
    }

    /// Replaces each of `values` (4 characters or longer; each line of one of several lines
    /// too: [`slipway_core::redact::hidden_texts`]) with `<redacted>` in what is written from
    /// now on.
    pub fn redacting(mut self, values: &[String]) -> CappedLog {
        self.hidden = Hidden::new(values);
        self
    }

    /// Writes what is held back waiting for the end of its line (at the end of the output).
    pub fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            let _ = self.write_raw(&self.hidden.redact(&pending));
        }
    }

    /// Opens the log of `resource`, mapping failure to a provider error.
    pub fn open_shared(
        dirs: &EnvDirs,
        resource: &str,
        max_bytes: u64,
        redact: &[String],
    ) -> Result<SharedLog, ProviderError> {
        let path = log_path(dirs, resource);
        CappedLog::open(&path, max_bytes)
            .map(|log| Arc::new(Mutex::new(log.redacting(redact))))
            .map_err(|source| ProviderError::Io {
                context: format!("failed to open log {}", path.display()),
                source,
            })
    }

    /// Appends `buf` (redacted, by whole lines, when redaction is on), rotating as often as
    /// needed so that no generation exceeds the cap.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.hidden.values.is_empty() {
            return self.write_raw(buf);
        }
        self.pending.extend_from_slice(buf);
        let cut = match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if self.pending.len() > MAX_PENDING => self.hidden.line_cut(&self.pending),
            None => return Ok(()),
        };
        let rest = self.pending.split_off(cut);
        let lines = std::mem::replace(&mut self.pending, rest);
        self.write_raw(&self.hidden.redact(&lines))
    }

    fn write_raw(&mut self, mut buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        // Opened (and its held-back notes written) before its length is looked at.
        self.file()?;
        while !buf.is_empty() {
            if self.len >= self.max_bytes {
                self.rotate()?;
            }
            let room = usize::try_from(self.max_bytes - self.len).unwrap_or(usize::MAX);
            let (now, later) = buf.split_at(room.min(buf.len()));
            self.file()?.write_all(now)?;
            self.len += now.len() as u64;
            buf = later;
        }
        Ok(())
    }

    /// Appends one line of Slipway's own (`==> ...`), so that a reader of the log can tell
    /// the supervisor's notes from the program's output.
    pub fn note(&mut self, message: &str) {
        // Losing a note because the disk is full must not stop a supervisor.
        let _ = self.write_all(format!("==> slipway: {message}\n").as_bytes());
    }

    /// A note written with whatever is written next, if anything is: one that alone would not
    /// be worth creating the file for (a process started that prints nothing).
    pub fn note_deferred(&mut self, message: &str) {
        let line = format!("==> slipway: {message}\n");
        if self.file.is_some() {
            let _ = self.write_all(line.as_bytes());
        } else {
            self.deferred
                .extend_from_slice(&self.hidden.redact(line.as_bytes()));
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, rotated_path(&self.path))?;
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        self.len = 0;
        Ok(())
    }
}

/// Copies everything `reader` produces into `log` until end of file; meant to run on its own
/// thread. `also` receives a copy of each chunk (e.g. to keep this run's tail in memory).
pub(crate) fn copy_to_log(mut reader: impl Read, log: &SharedLog, mut also: impl FnMut(&[u8])) {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => {
                log.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .flush_pending();
                return;
            }
            Ok(n) => {
                also(&buf[..n]);
                let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // A full disk loses output but must not block the child on a full pipe, so
                // keep reading.
                let _ = log.write_all(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn last_lines(text: &str, lines: usize) -> String {
    let trimmed = text.trim_end_matches('\n');
    let start = trimmed
        .rmatch_indices('\n')
        .nth(lines.saturating_sub(1))
        .map(|(i, _)| i + 1)
        .unwrap_or(0);
    trimmed[start..].to_owned()
}

/// The last `lines` lines of the log at `path` (looking into the rotated generation when the
/// current one is short), or `None` if there is no log or it is empty.
pub(crate) fn tail(path: &Path, lines: usize) -> Option<String> {
    const WINDOW: u64 = 64 * 1024;
    let mut bytes = read_end(path, WINDOW).unwrap_or_default();
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
    if newlines < lines && (bytes.len() as u64) < WINDOW {
        let mut older =
            read_end(&rotated_path(path), WINDOW - bytes.len() as u64).unwrap_or_default();
        older.extend_from_slice(&bytes);
        bytes = older;
    }
    let text = String::from_utf8_lossy(&bytes);
    let tail = last_lines(&text, lines);
    (!tail.trim().is_empty()).then_some(tail)
}

/// The last `max` bytes of the file at `path`.
fn read_end(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Keeps the last `max` bytes written to it: this run's output, for error messages.
#[derive(Debug, Default)]
pub(crate) struct TailBuffer {
    bytes: std::collections::VecDeque<u8>,
    max: usize,
    /// Whether bytes were dropped, so that the first line kept may be a partial one.
    truncated: bool,
}

impl TailBuffer {
    /// A buffer keeping the last `max` bytes.
    pub fn new(max: usize) -> TailBuffer {
        TailBuffer {
            bytes: Default::default(),
            max,
            truncated: false,
        }
    }

    /// Appends `chunk`, dropping the oldest bytes beyond the cap.
    pub fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
        let excess = self.bytes.len().saturating_sub(self.max);
        self.bytes.drain(..excess);
        self.truncated |= excess > 0;
    }

    /// The last `lines` lines kept, or `None` if nothing was written.
    pub fn last_lines(&self, lines: usize) -> Option<String> {
        let bytes: Vec<u8> = self.bytes.iter().copied().collect();
        let mut text = &bytes[..];
        if self.truncated
            && let Some(newline) = text.iter().position(|&b| b == b'\n')
        {
            // The first line lost its beginning; a cut line misleads more than it helps.
            text = &text[newline + 1..];
        }
        let tail = last_lines(&String::from_utf8_lossy(text), lines);
        (!tail.trim().is_empty()).then_some(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lazy_log_is_made_by_its_first_write_with_the_notes_held_back_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.log");
        let mut log = CappedLog::open_lazy(&path, 1000)
            .expect("open log")
            .redacting(&["hunter22".to_owned()]);
        log.note_deferred("process started (pid 7) with hunter22");
        log.flush_pending();
        assert!(
            !path.exists(),
            "a process that printed nothing costs no file"
        );
        log.write_all(b"hello\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("the log"),
            "==> slipway: process started (pid 7) with <redacted>\nhello\n",
            "the note held back comes first, redacted"
        );
        log.note_deferred("process started (pid 8)");
        assert!(
            std::fs::read_to_string(&path)
                .expect("the log")
                .ends_with("(pid 8)\n"),
            "once the file exists, a deferred note is written at once"
        );
        let again = CappedLog::open_lazy(&path, 1000).expect("reopen");
        assert_eq!(again.len, std::fs::metadata(&path).expect("meta").len());
        let err = CappedLog::open_lazy(&dir.path().join("missing/r.log"), 1000)
            .expect_err("a log whose directory is missing");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "said at once: {err}");
    }

    #[test]
    fn writes_never_take_a_generation_past_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.log");
        let mut log = CappedLog::open(&path, 100).expect("open log");
        for i in 0..50 {
            log.write_all(format!("line {i:03} of output\n").as_bytes())
                .expect("write");
        }
        log.write_all(&[b'x'; 250])
            .expect("a write larger than the cap");
        let current = std::fs::metadata(&path).expect("current log").len();
        let old = std::fs::metadata(rotated_path(&path))
            .expect("rotated log")
            .len();
        assert!(
            current <= 100,
            "the current log stays under the cap: {current}"
        );
        assert!(old <= 100, "the rotated log stays under the cap: {old}");
    }

    #[test]
    fn tail_reads_into_the_rotated_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.log");
        let mut log = CappedLog::open(&path, 40).expect("open log");
        for i in 0..6 {
            log.write_all(format!("line {i}\n").as_bytes())
                .expect("write");
        }
        assert_eq!(
            tail(&path, 3).as_deref(),
            Some("line 3\nline 4\nline 5"),
            "the tail is the last lines across both generations"
        );
        assert_eq!(
            tail(&dir.path().join("none.log"), 3),
            None,
            "no log, no tail"
        );
    }

    #[test]
    fn secrets_are_redacted_even_when_split_across_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.log");
        let mut log = CappedLog::open(&path, 1 << 20)
            .expect("open log")
            .redacting(&["hunter2-long".into(), "ab".into()]);
        log.write_all(b"password=hunt").expect("write");
        log.write_all(b"er2-long ok\nab stays: too short to redact\nlast hunter2-")
            .expect("write");
        log.write_all(b"long").expect("write");
        log.flush_pending();
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            "password=<redacted> ok\nab stays: too short to redact\nlast <redacted>"
        );
    }

    /// A line longer than the most held back is written in parts as it comes, and a secret
    /// across the point where it is cut, or begun just before it, is still redacted whole.
    #[test]
    fn a_secret_is_redacted_across_the_cut_of_a_long_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("long.log");
        let secret = "s3cr3t-value-1234";
        let mut log = CappedLog::open(&path, 1 << 20)
            .expect("open log")
            .redacting(&[secret.into()]);
        // The file as how many `x` it starts with and what follows them.
        let written = || {
            let text = std::fs::read_to_string(&path).expect("read");
            let rest = text.trim_start_matches('x').to_owned();
            (text.len() - rest.len(), rest)
        };
        let long = "x".repeat(MAX_PENDING);

        // Begun at the end of one write, ended by the next.
        log.write_all(format!("{long}s3cr3").as_bytes())
            .expect("write");
        assert_eq!(
            written(),
            (MAX_PENDING, String::new()),
            "the line's start is written; what could begin the secret waits"
        );
        log.write_all(b"t-value-1234 and more\n").expect("write");
        assert_eq!(written(), (MAX_PENDING, "<redacted> and more\n".into()));

        // Whole in one write, then the start of another copy: the first is written redacted,
        // and what could begin the second waits.
        std::fs::write(&path, "").expect("truncate");
        let mut log = CappedLog::open(&path, 1 << 20)
            .expect("open log")
            .redacting(&[secret.into()]);
        log.write_all(format!("{long}{secret}yys3cr3t-v").as_bytes())
            .expect("write");
        assert_eq!(written(), (MAX_PENDING, "<redacted>yy".into()));
        log.write_all(b"alue-1234").expect("write");
        log.flush_pending();
        assert_eq!(written(), (MAX_PENDING, "<redacted>yy<redacted>".into()));
    }

    use proptest::strategy::Strategy as _;

    /// Values that overlap themselves and one another, or begin one another.
    const OVERLAPPING: [&str; 6] = [
        "s3cr3t-value-1234",
        "s3cr3t-v",
        "value-12",
        "1234s3",
        "aaaa",
        "abab",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        /// However the output is cut into writes, and however long its lines, the log holds
        /// what redacting the whole output at once gives, with values that overlap.
        #[test]
        fn a_log_is_redacted_as_the_whole_output_would_be(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    3 => (0usize..70_000).prop_map(|n| "x".repeat(n)),
                    1 => (1usize..7).prop_map(|n| "ab".repeat(n)),
                    1 => (1usize..9).prop_map(|n| "a".repeat(n)),
                    1 => (0usize..6, 1usize..17).prop_map(|(v, n)| {
                        let value = OVERLAPPING[v];
                        value[..n.min(value.len())].to_owned()
                    }),
                    2 => (0usize..6).prop_map(|v| OVERLAPPING[v].to_owned()),
                    1 => proptest::strategy::Just("\n".to_owned()),
                ],
                0..16,
            ),
            // Where a write ends: in which piece, and where in it.
            cuts in proptest::collection::vec((0usize..16, 0usize..70_000), 0..20),
        ) {
            let values: Vec<String> = OVERLAPPING.iter().map(|v| (*v).to_owned()).collect();
            let output = pieces.concat();
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("p.log");
            let mut log = CappedLog::open(&path, 1 << 30)
                .expect("open log")
                .redacting(&values);
            let starts: Vec<usize> = pieces
                .iter()
                .scan(0, |at, piece| {
                    *at += piece.len();
                    Some(*at - piece.len())
                })
                .collect();
            let mut cuts: Vec<usize> = cuts
                .into_iter()
                .filter(|&(piece, _)| piece < pieces.len())
                .map(|(piece, at)| starts[piece] + at % (pieces[piece].len() + 1))
                .collect();
            cuts.push(output.len());
            cuts.sort_unstable();
            let mut from = 0;
            for cut in cuts {
                log.write_all(&output.as_bytes()[from..cut]).expect("write");
                from = cut;
            }
            log.flush_pending();
            let text = std::fs::read_to_string(&path).expect("read");
            let whole = String::from_utf8(Hidden::new(&values).redact(output.as_bytes()))
                .expect("text");
            let first = text
                .bytes()
                .zip(whole.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(text.len().min(whole.len()));
            proptest::prop_assert!(
                text == whole,
                "the log differs from the whole output redacted at byte {first}: {:?} against {:?}",
                &text[first.saturating_sub(20)..(first + 30).min(text.len())],
                &whole[first.saturating_sub(20)..(first + 30).min(whole.len())]
            );
        }
    }

    /// A value that overlaps itself, found across the cut of a long line, is redacted as the
    /// whole line would be, and nothing of a second copy overlapping it goes out in clear.
    #[test]
    fn a_value_overlapping_itself_across_the_cut_of_a_long_line_is_redacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("self.log");
        let mut log = CappedLog::open(&path, 1 << 20)
            .expect("open log")
            .redacting(&["aaaa".into()]);
        let long = "x".repeat(MAX_PENDING);
        log.write_all(format!("{long}aaaaaa").as_bytes())
            .expect("write");
        log.write_all(b"aa\n").expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text.trim_start_matches('x'),
            "<redacted><redacted>\n",
            "as the whole line redacted at once"
        );
    }

    /// A secret of several lines that the process prints a line at a time (each written
    /// before the next is printed) never reaches the file.
    #[test]
    fn a_secret_of_several_lines_printed_line_by_line_is_redacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pem.log");
        let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0BAQEF\n-----END PRIVATE KEY-----";
        let mut log = CappedLog::open(&path, 1 << 20)
            .expect("open log")
            .redacting(&[key.into()]);
        for line in key.lines() {
            log.write_all(format!("{line}\n").as_bytes())
                .expect("write");
        }
        log.flush_pending();
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "<redacted>\n".repeat(4), "{text}");
    }

    #[test]
    fn last_lines_of_short_text_is_all_of_it() {
        assert_eq!(last_lines("a\nb\n", 20), "a\nb", "fewer lines than asked");
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc", "the last two lines");
    }

    #[test]
    fn tail_buffer_keeps_only_the_end() {
        let mut buf = TailBuffer::new(8);
        buf.push(b"0123456789\nab\ncd\n");
        assert_eq!(
            buf.last_lines(5).as_deref(),
            Some("ab\ncd"),
            "the oldest bytes and the line they cut are dropped"
        );
    }
}
