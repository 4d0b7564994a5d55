//! Keeps environments' code from one another's ports and from denied networks (uid mode).
//!
//! In uid mode each environment's code runs as a uid of its own ([`crate::sandbox`]), so the
//! kernel's packet filter can tell whose a connection is. One nftables table per engine, named
//! for its uid range (`inet slipway_LOW_HIGH`: two engines on a machine never share uids),
//! holds on the output hook, for every packet one of those uids sends but a reply (a
//! connection's packets are checked after its first too: one its port was taken from
//! meanwhile is cut):
//! - to a port of the engine's port range on this host (any of its addresses: `127.0.0.1`,
//!   `::1`, the machine's own, and its broadcast, multicast and anycast ones, which loop back
//!   to its sockets), refused unless the port is allocated to that uid's own environment (the
//!   set `owned`, of `uid . port`): TCP with a reset (`connect` fails with `ECONNREFUSED`,
//!   as if nothing listened); UDP, SCTP and DCCP too (a datagram's send fails with
//!   `EPERM`);
//! - to a denied network (`[local] deny_networks`: the clouds' metadata services by
//!   default, which hand the machine's credentials to whoever asks), refused as
//!   administratively prohibited (`EHOSTUNREACH`).
//!
//! Everything else passes untouched: the engine's own connections (the router, health checks),
//! every other user's, and the code's own to its database, to services outside the port
//! range, to the internet.
//!
//! The uids and ports it covers are the engine's ranges and, should the ranges have changed,
//! every uid and port the store still holds outside them ([`Holdings`]).
//!
//! The table is written whole ([`Fence::install`]) by `slipway serve` at its start, and by a
//! command about to run an environment's code that finds it missing or written for another
//! home or other rules ([`Fence::ensure`]: its marker set `ready_HASH` names both); between
//! two, each port allocated is granted ([`Fence::grant`]) before its resource's code starts,
//! and each port released is revoked ([`Fence::revoke`]). Every writer holds `network.lock`
//! in the home, so that a whole write made from what the store said cannot undo a grant or a
//! revoke made meanwhile. Each change is one `nft -f -` transaction: a packet sees the rules
//! before it or after it, never half of it.

use std::io::{self, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use ipnet::IpNet;

/// A uid and a port allocated to its environment: the code of that uid may connect to it.
pub type Owned = (u32, u16);

/// What the engine's store holds, of which the table is written whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Every environment's uid (those outside the engine's range too: given before it
    /// changed).
    pub uids: Vec<u32>,
    /// Every port allocated, with its environment's uid.
    pub owned: Vec<Owned>,
}

/// Where `nft` is looked for first: the system's own directories, not the engine's `PATH`.
const NFT_PATHS: [&str; 4] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"];

/// Bumped when the rules [`Fence::script`] writes change, so that a table written by an
/// older Slipway is written again.
const RULES_VERSION: u32 = 3;

/// The clouds' metadata services: AWS, GCP, Azure, OpenStack and DigitalOcean
/// (`169.254.169.254`, and the link-local range around it, where ECS's `169.254.170.2` is
/// too), AWS over IPv6, Alibaba Cloud, and Azure's WireServer (which hands out the VM's
/// extension settings).
pub const DEFAULT_DENIED: [&str; 4] = [
    "169.254.0.0/16",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "168.63.129.16/32",
];

/// The packet filter of one engine's environments (see the module's documentation).
#[derive(Debug, Clone)]
pub struct Fence {
    nft: PathBuf,
    table: String,
    uids: RangeInclusive<u32>,
    ports: RangeInclusive<u16>,
    deny: Vec<IpNet>,
    marker: String,
    lock: PathBuf,
}

impl Fence {
    /// The fence of the engine whose home is `home`, its environments given `uids` and their
    /// resources `ports`, their code kept from `deny`; written with `nft`.
    pub fn new(
        nft: PathBuf,
        home: &Path,
        uids: RangeInclusive<u32>,
        ports: RangeInclusive<u16>,
        deny: Vec<IpNet>,
    ) -> Fence {
        let table = format!("slipway_{}_{}", uids.start(), uids.end());
        let marker = marker(home, &uids, &ports, &deny);
        Fence {
            nft,
            table,
            uids,
            ports,
            deny,
            marker,
            lock: home.join("network.lock"),
        }
    }

    /// The `nft` program of this system, if it has one.
    pub fn find_nft() -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        NFT_PATHS.iter().map(PathBuf::from).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }

    /// The table's name, with its family: `inet slipway_200000_299999`.
    pub fn table(&self) -> String {
        format!("inet {}", self.table)
    }

    /// What the fence keeps environments' code from, for `slipway serve`'s start.
    pub fn describe(&self) -> String {
        let denied = if self.deny.is_empty() {
            String::new()
        } else {
            format!(
                ", nor to {}",
                self.deny
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        format!(
            "nftables table {}: the code of uids {}-{} connects to no port of {}-{} on this \
             host but its own environment's{denied}",
            self.table(),
            self.uids.start(),
            self.uids.end(),
            self.ports.start(),
            self.ports.end(),
        )
    }

    /// The whole table, of what the store `holds`: one `nft -f` transaction that makes it
    /// anew (a table there before, this engine's or one of its former rules, goes with its
    /// elements; made empty first so that the delete never fails).
    pub fn script(&self, holds: &Holdings) -> String {
        let table = self.table();
        let uids = interval(
            &self.uids,
            holds
                .uids
                .iter()
                .copied()
                .chain(holds.owned.iter().map(|&(uid, _)| uid)),
        );
        let ports = interval(&self.ports, holds.owned.iter().map(|&(_, port)| port));
        let mut out = format!(
            "table {table} {{}}\ndelete table {table}\ntable {table} {{\n\tcomment \"slipway: \
             environments' code connects to no other environment's port\";\n\tset ready_{} {{ \
             type uid; }}\n\tset uids {{ type uid; flags interval; auto-merge; elements = {{ \
             {uids} }}; }}\n\tset ports {{ type inet_service; flags interval; auto-merge; \
             elements = {{ {ports} }}; }}\n\tset owned {{ type uid . inet_service;",
            self.marker
        );
        if !holds.owned.is_empty() {
            out.push_str(" elements = { ");
            out.push_str(&elements(&holds.owned));
            out.push_str(" };");
        }
        // Every packet the code sends, not only a connection's first: one whose port was
        // revoked meanwhile is cut. What answers another's connection (a reply from a port
        // of the range) is not the code's to check; a packet conntrack does not follow
        // (`notrack`, invalid) has no direction, and is checked. Before that: the code sends
        // from no port of the range that is not its environment's (one it bound while its
        // owner did not), whatever the packet: a datagram or an answer from it would pass for
        // the owner's, or for a reply.
        out.push_str(
            " }\n\tchain output {\n\t\ttype filter hook output priority filter; policy \
             accept;\n\t\tmeta skuid @uids meta l4proto { tcp, udp, udplite, sctp, dccp } th \
             sport @ports meta skuid . th sport != @owned drop\n\t\tct direction reply \
             accept\n",
        );
        for (family, v6) in [("ip", false), ("ip6", true)] {
            let nets: Vec<String> = self
                .deny
                .iter()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .map(ToString::to_string)
                .collect();
            if !nets.is_empty() {
                out.push_str(&format!(
                    "\t\tmeta skuid @uids {family} daddr {{ {} }} reject with icmpx \
                     admin-prohibited\n",
                    nets.join(", ")
                ));
            }
        }
        // This host: its own addresses, and those that loop back to its sockets.
        let here = "meta skuid @uids fib daddr type { local, broadcast, multicast, anycast }";
        out.push_str(&format!(
            "\t\t{here} meta l4proto tcp th dport @ports meta skuid . th dport != @owned \
             reject with tcp reset\n\t\t{here} meta l4proto {{ udp, udplite, sctp, dccp }} th \
             dport @ports meta skuid . th dport != @owned reject\n\t}}\n}}\n"
        ));
        out
    }

    /// Whether this engine's table is in force, written for this home and these rules.
    ///
    /// # Errors
    /// When `nft` cannot tell (not root, no `nf_tables` in the kernel).
    pub fn installed(&self) -> io::Result<bool> {
        let out = Command::new(&self.nft)
            .args([
                "list",
                "set",
                "inet",
                &self.table,
                &format!("ready_{}", self.marker),
            ])
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            return Ok(true);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(false);
        }
        Err(nft_failed(&stderr))
    }

    /// Writes the whole table, its set `owned()` (read while the home's lock is held).
    ///
    /// # Errors
    /// When `owned` fails, or `nft` does (its message).
    pub fn install(&self, holds: impl FnOnce() -> io::Result<Holdings>) -> io::Result<()> {
        self.locked(|| self.run(&self.script(&holds()?)))
    }

    /// [`Fence::install`] unless the table is in force already; whether it was written.
    ///
    /// # Errors
    /// As [`Fence::install`] and [`Fence::installed`].
    pub fn ensure(&self, holds: impl FnOnce() -> io::Result<Holdings>) -> io::Result<bool> {
        self.locked(|| {
            if self.installed()? {
                return Ok(false);
            }
            self.run(&self.script(&holds()?)).map(|()| true)
        })
    }

    /// Lets each uid of `pairs` connect to its port.
    ///
    /// # Errors
    /// When `nft` fails (the table is gone: [`Fence::ensure`] first).
    pub fn grant(&self, pairs: &[Owned]) -> io::Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let set = format!("inet {} owned", self.table);
        self.locked(|| self.run(&format!("add element {set} {{ {} }}\n", elements(pairs))))
    }

    /// Takes from each uid of `pairs` its port (released: it may be another environment's
    /// next). Nothing to do when the table is gone.
    ///
    /// # Errors
    /// When `nft` fails otherwise.
    pub fn revoke(&self, pairs: &[Owned]) -> io::Result<()> {
        self.revoke_then(pairs, || ()).0
    }

    /// [`Fence::revoke`], then `release` (the store's release of those ports) while the
    /// home's lock is still held: a whole write waiting for it reads the store without them,
    /// rather than before the release, which would give them back.
    pub fn revoke_then<R>(
        &self,
        pairs: &[Owned],
        release: impl FnOnce() -> R,
    ) -> (io::Result<()>, R) {
        if pairs.is_empty() {
            return (Ok(()), release());
        }
        let set = format!("inet {} owned", self.table);
        let listed = elements(pairs);
        // Added first, so that the delete of a pair the set lacks cannot fail the whole.
        let script =
            format!("add element {set} {{ {listed} }}\ndelete element {set} {{ {listed} }}\n");
        let mut release = Some(release);
        let mut released = None;
        let revoked = self.locked(|| {
            let revoked = match self.run(&script) {
                Err(e) if e.to_string().contains("No such file or directory") => Ok(()),
                other => other,
            };
            released = release.take().map(|release| release());
            Ok(revoked)
        });
        // The lock could not be had: released all the same (the caller hears of the revoke).
        let released = match (released, release) {
            (Some(released), _) => released,
            (None, Some(release)) => release(),
            (None, None) => unreachable!("the release runs once"),
        };
        (revoked.and_then(|r| r), released)
    }

    /// Removes the table (nothing to do when there is none).
    ///
    /// # Errors
    /// When `nft` fails.
    pub fn remove(&self) -> io::Result<()> {
        let table = self.table();
        self.locked(|| self.run(&format!("table {table} {{}}\ndelete table {table}\n")))
    }

    fn locked<R>(&self, work: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)?;
        lock.lock()?;
        work()
    }

    fn run(&self, script: &str) -> io::Result<()> {
        let mut child = Command::new(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let written = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(script.as_bytes());
        let out = child.wait_with_output()?;
        if out.status.success() {
            return written;
        }
        Err(nft_failed(&String::from_utf8_lossy(&out.stderr)))
    }
}

/// `LOW-HIGH, …` for an interval set's `elements`: `range`, and each of `also` outside it.
fn interval<T>(range: &RangeInclusive<T>, also: impl Iterator<Item = T>) -> String
where
    T: Copy + Ord + std::fmt::Display,
{
    let outside: std::collections::BTreeSet<T> = also.filter(|v| !range.contains(v)).collect();
    std::iter::once(format!("{}-{}", range.start(), range.end()))
        .chain(outside.iter().map(ToString::to_string))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `uid . port, …` for a set's `elements`.
fn elements(pairs: &[Owned]) -> String {
    pairs
        .iter()
        .map(|(uid, port)| format!("{uid} . {port}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// nft's complaint, in one line: its first (the error; the rest points into the script).
fn nft_failed(stderr: &str) -> io::Error {
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    io::Error::other(format!("nft: {}", first.trim()))
}

/// Names this home (its path, and its directory's inode and birth, so that a home made again
/// at the same path is another) and the rules: a table written for another, or by an older
/// Slipway, is written again.
fn marker(
    home: &Path,
    uids: &RangeInclusive<u32>,
    ports: &RangeInclusive<u16>,
    deny: &[IpNet],
) -> String {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(home).ok();
    let born = meta
        .as_ref()
        .and_then(|m| m.created().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let identity = format!(
        "{RULES_VERSION} {} {} {born} {uids:?} {ports:?} {deny:?}",
        home.display(),
        meta.map_or(0, |m| m.ino()),
    );
    let digest = sha2::Sha256::digest(identity.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};

    /// Environments' uids of these tests: far above any test sandbox's.
    const UIDS: RangeInclusive<u32> = 3_900_000..=3_900_009;
    const OWNER: u32 = 3_900_001;
    const OTHER: u32 = 3_900_002;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("a network")).collect()
    }

    #[test]
    fn the_script_makes_the_table_anew_and_denies_each_network_in_its_family() {
        let home = tempfile::tempdir().expect("a home");
        let fence = Fence::new(
            PathBuf::from("/usr/sbin/nft"),
            home.path(),
            UIDS,
            40_000..=40_099,
            nets(&DEFAULT_DENIED),
        );
        let script = fence.script(&Holdings {
            uids: vec![OWNER, OTHER],
            owned: vec![(OWNER, 40_001), (OWNER, 40_002)],
        });
        let table = "inet slipway_3900000_3900009";
        assert!(
            script.starts_with(&format!(
                "table {table} {{}}\ndelete table {table}\ntable {table} {{"
            )),
            "{script}"
        );
        assert!(
            script.contains("elements = { 3900001 . 40001, 3900001 . 40002 }"),
            "{script}"
        );
        assert!(
            script.contains(
                "ip daddr { 169.254.0.0/16, 100.100.100.200/32, 168.63.129.16/32 } reject"
            ),
            "{script}"
        );
        assert!(
            script.contains("ip6 daddr { fd00:ec2::254/128 } reject"),
            "{script}"
        );
        assert!(
            script.contains("th dport @ports meta skuid . th dport != @owned"),
            "{script}"
        );
        assert!(
            script.contains(
                "set uids { type uid; flags interval; auto-merge; elements = { 3900000-3900009 }; }"
            ) && script.contains("elements = { 40000-40099 }; }"),
            "only the ranges when the store holds nothing outside them: {script}"
        );
        // Given before the ranges changed: a uid and a port outside them are still covered.
        let script = fence.script(&Holdings {
            uids: vec![OWNER, 17],
            owned: vec![(OWNER, 40_001), (12, 2_000), (17, 2_000), (17, 39_999)],
        });
        assert!(
            script.contains("elements = { 3900000-3900009, 12, 17 }")
                && script.contains("elements = { 40000-40099, 2000, 39999 }"),
            "{script}"
        );
        // Nothing denied, nothing owned: no rule of a family with no network, no elements.
        let bare = Fence::new(
            PathBuf::from("nft"),
            home.path(),
            UIDS,
            40_000..=40_099,
            vec![],
        );
        let script = bare.script(&Holdings::default());
        assert!(!script.contains("daddr {"), "{script}");
        assert!(
            script.contains("set owned { type uid . inet_service; }"),
            "{script}"
        );
        // Another home, or other rules, is another marker: the table is written again.
        let other = tempfile::tempdir().expect("another home");
        let marker = |home: &Path, deny| {
            Fence::new(PathBuf::new(), home, UIDS, 40_000..=40_099, deny).marker
        };
        assert_eq!(marker(home.path(), vec![]), marker(home.path(), vec![]));
        assert_ne!(marker(home.path(), vec![]), marker(other.path(), vec![]));
        assert_ne!(
            marker(home.path(), vec![]),
            marker(home.path(), nets(&["10.0.0.0/8"]))
        );
    }

    /// `python3 -c program`, run as `uid` (gid the same; root when `None`) from `/`.
    fn python_as(uid: Option<u32>, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new("python3");
        command.arg("-c").arg(program).current_dir("/");
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        command
    }

    /// What `uid` gets trying each target (`tcp|udp|bcast ADDRESS PORT`; `bcast`: UDP to a
    /// broadcast address): `ok`, or the error's name (`ECONNREFUSED`, `EHOSTUNREACH`...),
    /// one line each.
    fn tries(uid: Option<u32>, targets: &[(&str, &str, u16)]) -> Vec<String> {
        let program = r#"
import encodings.idna, errno, socket, sys
for proto, addr, port in (t.split() for t in sys.argv[1:]):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(3)
    if proto == "bcast":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    try:
        s.connect((addr, int(port)))
        if proto == "tcp":
            s.sendall(b"x")
            assert s.recv(1) == b"x", "no echo"
        else:
            s.send(b"x")
            s.send(b"x")
        print("ok")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e)))
"#;
        let mut command = python_as(uid, program);
        for (proto, addr, port) in targets {
            command.arg(format!("{proto} {addr} {port}"));
        }
        let out = command.output().expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// What `uid` gets sending a datagram from 127.0.0.1:`from` to 127.0.0.1:`to`: `ok`, or
    /// the error's name.
    fn sends_from(uid: u32, from: u16, to: u16) -> String {
        let program = r#"
import encodings.idna, errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.sendto(b"x", ("127.0.0.1", int(sys.argv[2])))
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)))
"#;
        let out = python_as(Some(uid), program)
            .args([from.to_string(), to.to_string()])
            .output()
            .expect("python3 runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Echoes what each connection to `listener` sends, byte by byte, until it ends.
    fn echo(listener: TcpListener) {
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut byte = [0u8; 1];
                    while std::io::Read::read_exact(&mut stream, &mut byte).is_ok() {
                        if stream.write_all(&byte).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }

    /// A connection of `uid`'s to 127.0.0.1:`port`, kept open: each line written to the
    /// child's stdin has it send a byte and read its echo, and say what that gave.
    fn held(uid: u32, port: u16) -> (std::process::Child, Lines) {
        use std::io::BufRead;
        let program = r#"
import encodings.idna, errno, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
for line in iter(sys.stdin.readline, ""):
    try:
        s.sendall(b"x")
        print("ok" if s.recv(1) == b"x" else "closed", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e)), flush=True)
"#;
        let mut child = python_as(Some(uid), program)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        (child, lines)
    }

    type Lines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

    /// What a [`held`] connection gives now.
    fn ask(child: &mut std::process::Child, said: &mut Lines) -> String {
        writeln!(child.stdin.as_mut().expect("stdin")).expect("asked");
        said.next().expect("an answer").expect("a line")
    }

    /// A port of `range` free on 127.0.0.1 for TCP and UDP both, with its listener and socket.
    fn listen_in(range: RangeInclusive<u16>) -> (u16, TcpListener, UdpSocket) {
        range
            .into_iter()
            .find_map(|port| {
                let tcp = TcpListener::bind(("0.0.0.0", port)).ok()?;
                let udp = UdpSocket::bind(("0.0.0.0", port)).ok()?;
                Some((port, tcp, udp))
            })
            .expect("a free port")
    }

    #[test]
    fn only_the_owner_s_code_reaches_a_port_and_no_code_a_denied_network() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root (packet filter rules)");
            return;
        }
        let Some(nft) = Fence::find_nft() else {
            eprintln!("skipped: no `nft` (Debian's nftables; scripts/test.sh installs it)");
            return;
        };
        let home = tempfile::tempdir().expect("a home");
        let ports = 39_100..=39_199;
        let (port, tcp, udp) = listen_in(ports.clone());
        echo(tcp);
        // A service outside the range on an address the fence denies.
        let denied = TcpListener::bind("127.0.0.3:0").expect("a listener on 127.0.0.3");
        let denied_port = denied.local_addr().expect("its address").port();
        echo(denied);
        let fence = Fence::new(nft, home.path(), UIDS, ports, nets(&["127.0.0.3/32"]));
        let cleanup = Removal(&fence);
        // What a run that crashed left goes first.
        fence.remove().expect("no table");
        assert!(!fence.installed().expect("nft answers"));
        let holds = |owned: Vec<Owned>| Holdings {
            uids: vec![OWNER, OTHER],
            owned,
        };
        assert!(
            fence
                .ensure(|| Ok(holds(vec![(OWNER, port)])))
                .expect("installed")
        );
        assert!(fence.installed().expect("nft answers"));
        assert!(!fence.ensure(|| panic!("not read again")).expect("in force"));

        let targets = [
            ("tcp", "127.0.0.1", port),
            ("tcp", "127.0.0.2", port),
            ("tcp", "::ffff:127.0.0.1", port),
            ("tcp", "127.0.0.3", denied_port),
        ];
        assert_eq!(
            tries(Some(OWNER), &targets),
            ["ok", "ok", "ok", "EHOSTUNREACH"]
        );
        assert_eq!(
            tries(Some(OTHER), &targets),
            [
                "ECONNREFUSED",
                "ECONNREFUSED",
                "ECONNREFUSED",
                "EHOSTUNREACH"
            ]
        );
        // The engine's own connections (root: no environment's uid) pass.
        assert_eq!(tries(None, &targets), ["ok", "ok", "ok", "ok"]);
        // UDP: the owner's datagrams arrive, the other's do not (refused as it sends).
        udp.set_read_timeout(Some(std::time::Duration::from_millis(500)))
            .expect("a timeout");
        assert_eq!(tries(Some(OTHER), &[("udp", "127.0.0.1", port)]), ["EPERM"]);
        let mut buf = [0u8; 8];
        assert!(
            udp.recv_from(&mut buf).is_err(),
            "the other uid's datagram arrived"
        );
        assert_eq!(tries(Some(OWNER), &[("udp", "127.0.0.1", port)]), ["ok"]);
        assert!(
            udp.recv_from(&mut buf).is_ok(),
            "the owner's datagram did not arrive"
        );
        while udp.recv_from(&mut buf).is_ok() {}
        // Broadcast loops back to the host's sockets: the same.
        assert_eq!(
            tries(Some(OTHER), &[("bcast", "127.255.255.255", port)]),
            ["EPERM"]
        );
        assert!(
            udp.recv_from(&mut buf).is_err(),
            "the other uid's broadcast arrived"
        );
        assert_eq!(
            tries(Some(OWNER), &[("bcast", "127.255.255.255", port)]),
            ["ok"]
        );
        assert!(
            udp.recv_from(&mut buf).is_ok(),
            "the owner's broadcast did not arrive"
        );

        // A port of the owner's that nothing listens on: another uid that binds it sends
        // nothing from it (its datagrams would pass for the owner's), the owner does.
        let (spare, spare_tcp, spare_udp) = listen_in(port + 1..=39_199);
        drop((spare_tcp, spare_udp));
        fence.grant(&[(OWNER, spare)]).expect("granted");
        let outside = UdpSocket::bind("127.0.0.1:0").expect("a socket outside the range");
        outside
            .set_read_timeout(Some(std::time::Duration::from_millis(500)))
            .expect("a timeout");
        let outside_port = outside.local_addr().expect("its address").port();
        assert_eq!(sends_from(OTHER, spare, outside_port), "EPERM");
        assert!(
            outside.recv_from(&mut buf).is_err(),
            "a datagram from a port the other uid took arrived"
        );
        assert_eq!(sends_from(OWNER, spare, outside_port), "ok");
        assert!(
            outside.recv_from(&mut buf).is_ok(),
            "the owner's datagram from its port did not arrive"
        );
        fence.revoke(&[(OWNER, spare)]).expect("revoked");

        // Released: the port is nobody's, and a connection open to it is cut; granted
        // again, it is the owner's again.
        let (mut open, mut said) = held(OWNER, port);
        assert_eq!(ask(&mut open, &mut said), "ok");
        fence.revoke(&[(OWNER, port)]).expect("revoked");
        let cut = ask(&mut open, &mut said);
        assert_ne!(cut, "ok", "the connection open before the revoke is cut");
        let _ = open.kill();
        let _ = open.wait();
        fence
            .revoke(&[(OWNER, port)])
            .expect("revoking twice is no error");
        assert_eq!(tries(Some(OWNER), &targets[..1]), ["ECONNREFUSED"]);
        fence.grant(&[(OTHER, port)]).expect("granted");
        assert_eq!(tries(Some(OTHER), &targets[..1]), ["ok"]);
        assert_eq!(tries(Some(OWNER), &targets[..1]), ["ECONNREFUSED"]);
        // Written whole again: what the store says now, nothing of before.
        fence
            .install(|| Ok(holds(vec![(OWNER, port)])))
            .expect("installed again");
        assert_eq!(tries(Some(OTHER), &targets[..1]), ["ECONNREFUSED"]);
        assert_eq!(tries(Some(OWNER), &targets[..1]), ["ok"]);
        drop(cleanup);
        assert!(!fence.installed().expect("nft answers"));
        assert_eq!(tries(Some(OTHER), &targets), ["ok", "ok", "ok", "ok"]);
        fence
            .revoke(&[(OWNER, port)])
            .expect("nothing to revoke without the table");
    }

    /// Removes the fence's table, even when the test fails.
    struct Removal<'a>(&'a Fence);

    impl Drop for Removal<'_> {
        fn drop(&mut self) {
            self.0.remove().expect("the table removed");
        }
    }
}
