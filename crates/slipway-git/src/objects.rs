//! Reading git objects through `git cat-file --batch`: one process per operation, answering
//! object after object on a pipe.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use crate::GitError;
use crate::command::Git;
use crate::path::{MAX_TARGET_LEN, Node, TreeLookup};

const COMMAND: &str = "cat-file --batch";

/// The header git prints before an object's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) oid: String,
    pub(crate) kind: String,
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

/// One `git cat-file --batch` process, asked one object at a time.
///
/// Dropping it kills the process: that is how a caller abandons an object it does not want to
/// read (one over a size limit) without draining it.
pub(crate) struct ObjectReader {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl ObjectReader {
    pub(crate) fn start(git: &Git) -> Result<ObjectReader, GitError> {
        let (child, stdin, stdout) = spawn_batch(git)?;
        Ok(ObjectReader {
            child,
            stdin: BufWriter::new(stdin),
            stdout: BufReader::new(stdout),
        })
    }

    /// Asks for an object (an id, or `<id>^{tree}`) and reads its header; `None` when it is
    /// missing. The content must then be consumed with [`ObjectReader::body`] before the next
    /// request.
    pub(crate) fn request(&mut self, name: &str) -> Result<Option<Header>, GitError> {
        debug_assert!(!name.contains('\n'), "object names are checked hex ids");
        writeln!(self.stdin, "{name}")
            .and_then(|()| self.stdin.flush())
            .map_err(|source| broken_pipe(&source))?;
        read_header(&mut self.stdout)
    }

    /// Reads the content announced by `header`.
    pub(crate) fn body(&mut self, header: &Header) -> Result<Vec<u8>, GitError> {
        let mut data = Vec::with_capacity(usize::try_from(header.size).unwrap_or(0));
        copy_body(&mut self.stdout, header, &mut data)?;
        Ok(data)
    }

    /// Reads the first `max` bytes of the content announced by `header`, discarding the rest.
    pub(crate) fn body_prefix(&mut self, header: &Header, max: usize) -> Result<Vec<u8>, GitError> {
        let mut data = Vec::new();
        copy_body(
            &mut self.stdout,
            header,
            &mut Prefix {
                data: &mut data,
                max,
            },
        )?;
        Ok(data)
    }

    /// Reads and discards the content announced by `header`.
    pub(crate) fn skip(&mut self, header: &Header) -> Result<(), GitError> {
        copy_body(&mut self.stdout, header, &mut std::io::sink())
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        // Nothing to report: the process only ever read objects.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Streams the content of `oids`, in order, each to `sink(index, header, content)`, through
/// one process: a thread writes the requests while this one reads the answers, so neither pipe
/// can fill up and block the other.
pub(crate) fn stream_objects(
    git: &Git,
    oids: &[String],
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
                let header = read_header(&mut stdout)?.ok_or_else(|| {
                    protocol(format!("object {oid} is missing from the repository"))
                })?;
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

/// A writer keeping only the first `max` bytes.
struct Prefix<'a> {
    data: &'a mut Vec<u8>,
    max: usize,
}

impl Write for Prefix<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.max.saturating_sub(self.data.len());
        self.data.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
        (Some(oid), Some(kind), Some(size), None) => {
            let size = size
                .parse()
                .map_err(|_| protocol(format!("bad object header `{line}`")))?;
            Ok(Some(Header {
                oid: oid.to_owned(),
                kind: kind.to_owned(),
                size,
            }))
        }
        _ => Err(protocol(format!("bad object header `{line}`"))),
    }
}

fn copy_body(
    stdout: &mut BufReader<ChildStdout>,
    header: &Header,
    out: &mut impl Write,
) -> Result<(), GitError> {
    let copied =
        std::io::copy(&mut stdout.take(header.size), out).map_err(|source| broken_pipe(&source))?;
    if copied != header.size {
        return Err(protocol(format!(
            "object {} ended after {copied} of {} bytes",
            header.oid, header.size
        )));
    }
    read_newline(stdout)
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
        let oid = rest[..oid_len].iter().map(|b| format!("{b:02x}")).collect();
        rest = &rest[oid_len..];
        entries.push((mode, name, oid));
    }
    Ok(entries)
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
pub(crate) struct ObjectTree<'a> {
    pub(crate) reader: &'a mut ObjectReader,
    pub(crate) commit: &'a str,
    pub(crate) repository: &'a str,
    pub(crate) trees: HashMap<String, Vec<(u32, Vec<u8>, String)>>,
}

impl ObjectTree<'_> {
    fn header(&mut self, oid: &str, kind: &str) -> Result<Header, GitError> {
        let header = self
            .reader
            .request(oid)?
            .ok_or_else(|| protocol(format!("object {oid} is missing from the repository")))?;
        if header.kind != kind {
            // Read it anyway, so that the next request lines up.
            self.reader.skip(&header)?;
            return Err(protocol(format!(
                "{oid} is a {}, not a {kind}",
                header.kind
            )));
        }
        Ok(header)
    }

    fn oid_len(&self) -> usize {
        self.commit.len() / 2
    }
}

impl TreeLookup for ObjectTree<'_> {
    type Dir = String;

    fn root(&mut self) -> Result<String, GitError> {
        let name = format!("{}^{{tree}}", self.commit);
        let header = self
            .reader
            .request(&name)?
            .ok_or_else(|| GitError::CommitNotFound {
                commit: self.commit.to_owned(),
                repository: self.repository.to_owned(),
            })?;
        let data = self.reader.body(&header)?;
        let entries = parse_tree(&data, self.oid_len())?;
        self.trees.insert(header.oid.clone(), entries);
        Ok(header.oid)
    }

    fn entry(&mut self, dir: &String, name: &str) -> Result<Option<Node<String>>, GitError> {
        if !self.trees.contains_key(dir) {
            let header = self.header(dir, "tree")?;
            let data = self.reader.body(&header)?;
            let entries = parse_tree(&data, self.oid_len())?;
            self.trees.insert(dir.clone(), entries);
        }
        let entries = &self.trees[dir];
        Ok(entries
            .iter()
            .find(|(_, entry_name, _)| entry_name.as_slice() == name.as_bytes())
            .map(|(mode, _, oid)| node_for_mode(*mode, oid.clone())))
    }

    /// At most [`MAX_TARGET_LEN`]` + 1` bytes, so that a huge "symlink" costs no memory and
    /// is still refused as too long.
    fn symlink_target(&mut self, oid: &str) -> Result<Vec<u8>, GitError> {
        let header = self.header(oid, "blob")?;
        self.reader.body_prefix(&header, MAX_TARGET_LEN + 1)
    }
}
