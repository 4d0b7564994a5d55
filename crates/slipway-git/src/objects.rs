//! Trees as [`crate::path::resolve`] walks them, and the one use left of `git cat-file
//! --batch`: streaming blobs too large to hold in memory into an export.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use gix::objs::Kind;

use crate::GitError;
use crate::command::Git;
use crate::path::{MAX_TARGET_LEN, Node, TreeLookup};
use crate::store::{IN_PROCESS_LIMIT, Reader};

const COMMAND: &str = "cat-file --batch";

/// The header git prints before an object's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) oid: String,
    pub(crate) size: u64,
}

/// Starts `git cat-file --batch` with its stdin and stdout piped and its stderr discarded.
fn spawn_batch(git: &Git) -> Result<(Child, ChildStdin, ChildStdout), GitError> {
    let mut child = git
        .command(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| GitError::Spawn { source })?;
    let stdin = child.stdin.take().expect("stdin was piped");
    let stdout = child.stdout.take().expect("stdout was piped");
    Ok((child, stdin, stdout))
}

/// Streams the content of `oids`, in order, each to `sink(index, header, content)`, through
/// one process: a thread writes the requests while this one reads the answers, so neither pipe
/// can fill up and block the other. An object git does not find is `missing(oid)`'s error
/// (the store's [`GitError::MissingObject`], which callers read again later).
pub(crate) fn stream_objects(
    git: &Git,
    oids: &[String],
    missing: impl Fn(&str) -> GitError,
    mut sink: impl FnMut(usize, &Header, &mut dyn Read) -> Result<(), GitError>,
) -> Result<(), GitError> {
    let (mut child, stdin, stdout) = spawn_batch(git)?;
    let result = std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<()> {
            let mut stdin = BufWriter::new(stdin);
            for oid in oids {
                writeln!(stdin, "{oid}")?;
            }
            stdin.flush()
            // Dropping stdin here tells git there is nothing more to read.
        });
        let mut stdout = BufReader::new(stdout);
        let read = (|| {
            for (index, oid) in oids.iter().enumerate() {
                let header = read_header(&mut stdout)?.ok_or_else(|| missing(oid))?;
                if header.oid != *oid {
                    return Err(protocol(format!("asked for {oid}, got {}", header.oid)));
                }
                let mut content = (&mut stdout).take(header.size);
                sink(index, &header, &mut content)?;
                // Whatever the sink left unread, so that the next header lines up.
                std::io::copy(&mut content, &mut std::io::sink())
                    .map_err(|source| broken_pipe(&source))?;
                read_newline(&mut stdout)?;
            }
            Ok(())
        })();
        if read.is_err() {
            // Unblock the writer, which may be waiting for git to read more requests.
            let _ = child.kill();
        }
        let written = writer.join().expect("the request writer does not panic");
        read.and(written.map_err(|source| broken_pipe(&source)))
    });
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn read_header(stdout: &mut impl BufRead) -> Result<Option<Header>, GitError> {
    let mut line = String::new();
    let read = stdout
        .read_line(&mut line)
        .map_err(|source| broken_pipe(&source))?;
    if read == 0 {
        return Err(protocol("git exited before answering".to_owned()));
    }
    let line = line.trim_end_matches('\n');
    let mut words = line.split(' ');
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some(_), Some("missing" | "ambiguous"), None, None) => Ok(None),
        (Some(oid), Some(_kind), Some(size), None) => {
            let size = size
                .parse()
                .map_err(|_| protocol(format!("bad object header `{line}`")))?;
            Ok(Some(Header {
                oid: oid.to_owned(),
                size,
            }))
        }
        _ => Err(protocol(format!("bad object header `{line}`"))),
    }
}

fn read_newline(stdout: &mut impl Read) -> Result<(), GitError> {
    let mut newline = [0u8; 1];
    stdout
        .read_exact(&mut newline)
        .map_err(|source| broken_pipe(&source))?;
    if newline != *b"\n" {
        return Err(protocol(
            "an object is not followed by a newline".to_owned(),
        ));
    }
    Ok(())
}

fn protocol(detail: String) -> GitError {
    GitError::Protocol {
        command: COMMAND.to_owned(),
        detail,
    }
}

fn broken_pipe(source: &std::io::Error) -> GitError {
    protocol(format!("the pipe to git broke: {source}"))
}

/// A raw tree object's entries: `(mode, name, oid)`. Ids are binary in trees, `oid_len` bytes
/// (20 for SHA-1, 32 for SHA-256), returned here in hex.
pub(crate) fn parse_tree(
    data: &[u8],
    oid_len: usize,
) -> Result<Vec<(u32, Vec<u8>, String)>, GitError> {
    let mut entries = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let bad = || protocol("a tree object is malformed".to_owned());
        let space = rest.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let mode = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|mode| u32::from_str_radix(mode, 8).ok())
            .ok_or_else(bad)?;
        rest = &rest[space + 1..];
        let nul = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
        let name = rest[..nul].to_vec();
        rest = &rest[nul + 1..];
        if rest.len() < oid_len {
            return Err(bad());
        }
        let oid = hex(&rest[..oid_len]);
        rest = &rest[oid_len..];
        entries.push((mode, name, oid));
    }
    Ok(entries)
}

/// Bytes in lowercase hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// The node a tree mode stands for.
pub(crate) fn node_for_mode(mode: u32, oid: String) -> Node<String> {
    match mode & 0o170_000 {
        0o040_000 => Node::Tree(oid),
        0o120_000 => Node::Symlink { oid },
        0o160_000 => Node::Submodule,
        _ => Node::Blob {
            oid,
            executable: mode & 0o111 != 0,
        },
    }
}

/// A commit's tree read object by object, as [`crate::path::resolve`] walks it; directories
/// are identified by tree id.
pub(crate) struct ObjectTree<'r, 's> {
    pub(crate) reader: &'r mut Reader<'s>,
    /// For a symlink too large to read in process.
    pub(crate) git: &'r Git,
    pub(crate) commit: &'r str,
    pub(crate) repository: &'r str,
    pub(crate) trees: HashMap<String, Vec<(u32, Vec<u8>, String)>>,
}

impl ObjectTree<'_, '_> {
    fn load(&mut self, oid: &str) -> Result<(), GitError> {
        if !self.trees.contains_key(oid) {
            let oid_len = self.reader.oid_len();
            let entries = parse_tree(self.reader.expect(oid, Kind::Tree)?, oid_len)?;
            self.trees.insert(oid.to_owned(), entries);
        }
        Ok(())
    }
}

impl TreeLookup for ObjectTree<'_, '_> {
    type Dir = String;

    fn root(&mut self) -> Result<String, GitError> {
        let commit = self
            .reader
            .commit(self.commit)?
            .ok_or_else(|| GitError::CommitNotFound {
                commit: self.commit.to_owned(),
                repository: self.repository.to_owned(),
            })?;
        self.load(&commit.tree)?;
        Ok(commit.tree)
    }

    fn entry(&mut self, dir: &String, name: &str) -> Result<Option<Node<String>>, GitError> {
        self.load(dir)?;
        let entries = &self.trees[dir];
        Ok(entries
            .iter()
            .find(|(_, entry_name, _)| entry_name.as_slice() == name.as_bytes())
            .map(|(mode, _, oid)| node_for_mode(*mode, oid.clone())))
    }

    fn symlink_target(&mut self, oid: &str) -> Result<Vec<u8>, GitError> {
        symlink_target(self.reader, self.git, oid)
    }
}

/// At most [`MAX_TARGET_LEN`]` + 1` bytes of the symlink `oid`'s target, so that a huge
/// "symlink" costs no memory and is still refused as too long.
pub(crate) fn symlink_target(
    reader: &mut Reader<'_>,
    git: &Git,
    oid: &str,
) -> Result<Vec<u8>, GitError> {
    let size = match reader.header(oid)? {
        Some((Kind::Blob, size)) => size,
        Some((kind, _)) => return Err(protocol(format!("{oid} is a {kind}, not a blob"))),
        None => return Err(reader.missing(format!("object {oid}"))),
    };
    if size > IN_PROCESS_LIMIT {
        // Absurd for a symlink, and too large to read here: the first bytes are enough to
        // refuse it, read through git.
        let mut prefix = Vec::new();
        let missing = |oid: &str| reader.missing(format!("object {oid}"));
        stream_objects(git, &[oid.to_owned()], missing, |_, _, content| {
            content
                .take(MAX_TARGET_LEN as u64 + 1)
                .read_to_end(&mut prefix)
                .map(drop)
                .map_err(|source| broken_pipe(&source))
        })?;
        return Ok(prefix);
    }
    let mut data = reader.expect(oid, Kind::Blob)?.to_vec();
    data.truncate(MAX_TARGET_LEN + 1);
    Ok(data)
}
