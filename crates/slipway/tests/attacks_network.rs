//! Attacks over the network from environments' code, run against the real binary as root (uid
//! mode, with the packet filter of `slipway_providers::network`): a branch's code connecting
//! to another environment's process by each of the host's addresses, over TCP and UDP and by
//! broadcast, to a
//! port of the range nobody was given, to a port its environment released and another was
//! given next, and to a denied network (the clouds' metadata services by default).

mod util;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use util::*;

const T: Duration = Duration::from_secs(30);

/// The process serves an echo on its port (TCP and UDP); the job tries its own process's port
/// and each line of `targets.txt` (`LABEL tcp|udp|bcast ADDRESS PORT`; `bcast`: UDP to a
/// broadcast address, which loops back to the host's sockets), and reports what each gave
/// (`ok`, or the error's name) in `probe.json` of its data directory, with its uid.
const NET: &str = r#"import encodings.idna, errno, json, os, socket, sys, threading

def serve(port):
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    def echo():
        while True:
            data, peer = udp.recvfrom(64)
            udp.sendto(data, peer)
    threading.Thread(target=echo, daemon=True).start()
    while True:
        conn, _ = tcp.accept()
        try:
            conn.sendall(conn.recv(1))
        except OSError:
            pass
        conn.close()

def attempt(proto, addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(3)
    if proto == "bcast":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    try:
        s.connect((addr, port))
        s.send(b"x")
        return "ok" if s.recv(1) == b"x" else "no echo"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()

if sys.argv[1] == "serve":
    serve(int(sys.argv[2]))
else:
    own = int(sys.argv[2])
    report = {"uid": os.getuid(), "port": own}
    if own:
        report["own"] = attempt("tcp", "127.0.0.1", own)
        report["own_udp"] = attempt("udp", "127.0.0.1", own)
    here = os.path.dirname(os.path.abspath(__file__))
    for line in open(os.path.join(here, "targets.txt")):
        if line.split():
            label, proto, addr, port = line.split()
            report[label] = attempt(proto, addr, int(port))
    with open(os.path.join(os.environ["SLIPWAY_DATA_DIR"], "probe.json"), "w") as f:
        json.dump(report, f)
"#;

/// The stack: three environments on `main`; `api` (left out with `api: false`) and the probe,
/// whose `round` makes it run again.
fn stack(api: bool, round: u32) -> String {
    let (api, own) = if api {
        (
            "  api:\n    type: process\n    command: [\"python3\", \"net.py\", \"serve\", \
             \"${ports.http}\"]\n    ports: [http]\n    health: { tcp: http }\n",
            "${resources.api.ports.http}",
        )
    } else {
        ("", "0")
    };
    stack_file(
        "net",
        "{ prod: { track: main }, qa: { track: main }, stage: { track: main } }",
        &format!(
            "{api}  probe:\n    type: job\n    command: [\"python3\", \"net.py\", \"probe\", \
             \"{own}\", \"round-{round}\"]\n"
        ),
    )
}

/// Commits `stack` with `targets`; its commit.
fn commit(s: &Sandbox, stack: &str, targets: &[String], message: &str) -> String {
    s.write("slipway.yaml", stack);
    s.write("net.py", NET);
    s.write("targets.txt", &format!("{}\n", targets.join("\n")));
    s.commit(message)
}

fn probe(s: &Sandbox, env: &str) -> Value {
    let path = s.home.join(format!("envs/{env}/data/probe.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the probe's report {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the report is JSON")
}

/// A listener of the engine's machine (root's: no environment's) that echoes one byte.
fn echo(address: &str) -> u16 {
    let listener = TcpListener::bind(address).expect("a listener");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).is_ok() {
                let _ = stream.write_all(&byte);
            }
        }
    });
    port
}

/// The last port of the sandbox's range (`[local] ports`).
fn last_port(s: &Sandbox) -> u16 {
    let config = std::fs::read_to_string(&s.config).expect("the engine's configuration");
    config
        .lines()
        .find_map(|l| l.strip_prefix("ports = \""))
        .and_then(|r| r.trim_end_matches('"').split('-').nth(1)?.parse().ok())
        .expect("a port range")
}

fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("nft runs");
    assert!(out.status.success(), "nft {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_branch_s_code_reaches_no_other_environment_s_port_nor_a_denied_network() {
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: needs root (uid mode)");
        return;
    }
    assert!(
        Command::new("nft").arg("--version").output().is_ok(),
        "`nft` is missing: install Debian's nftables (scripts/test.sh does)"
    );
    let s = Sandbox::new();
    s.with_local("deny_networks = [\"169.254.0.0/16\", \"127.0.0.9\"]");
    // Services of the engine's machine: one the code may reach (its database, say), one on a
    // denied address, one on a port of the range that no environment was given.
    let outside = echo("127.0.0.1:0");
    let denied = echo("127.0.0.9:0");
    let unallocated = last_port(&s);
    let held = TcpListener::bind(("127.0.0.1", unallocated)).expect("the range's last port");
    drop(held);
    let unallocated = echo(&format!("127.0.0.1:{unallocated}"));

    let first = commit(&s, &stack(true, 1), &[], "an api and a probe");
    s.ok(&["apply", "--env", "prod", "--ref", &first, "--yes"]);
    let prod = probe(&s, "prod");
    assert_eq!(
        prod["own"], "ok",
        "prod's code reaches its own process: {prod}"
    );
    assert_eq!(prod["own_udp"], "ok", "over UDP too: {prod}");
    let prod_port = prod["port"].as_u64().expect("prod's port");
    s.ok(&["apply", "--env", "qa", "--ref", &first, "--yes"]);
    let qa = probe(&s, "qa");
    assert_eq!(qa["own"], "ok", "qa's code reaches its own process: {qa}");
    let qa_port = qa["port"].as_u64().expect("qa's port");

    // qa's code tries prod's process every way the host offers, and the machine's services.
    let targets = vec![
        format!("prod tcp 127.0.0.1 {prod_port}"),
        format!("prod_alias tcp 127.0.0.2 {prod_port}"),
        format!("prod_mapped tcp ::ffff:127.0.0.1 {prod_port}"),
        format!("prod_udp udp 127.0.0.1 {prod_port}"),
        format!("prod_broadcast bcast 127.255.255.255 {prod_port}"),
        format!("unallocated tcp 127.0.0.1 {unallocated}"),
        format!("denied tcp 127.0.0.9 {denied}"),
        format!("outside tcp 127.0.0.1 {outside}"),
    ];
    let second = commit(&s, &stack(true, 2), &targets, "qa tries prod");
    s.ok(&["apply", "--env", "qa", "--ref", &second, "--yes"]);
    let qa = probe(&s, "qa");
    assert_eq!(qa["own"], "ok", "qa still reaches its own process: {qa}");
    for label in ["prod", "prod_alias", "prod_mapped", "unallocated"] {
        assert_eq!(qa[label], "ECONNREFUSED", "{label}: refused: {qa}");
    }
    assert_eq!(qa["prod_udp"], "EPERM", "prod over UDP: refused: {qa}");
    assert_eq!(
        qa["prod_broadcast"], "EPERM",
        "prod by broadcast: refused: {qa}"
    );
    assert_eq!(
        qa["denied"], "EHOSTUNREACH",
        "a denied network: refused: {qa}"
    );
    assert_eq!(
        qa["outside"], "ok",
        "a service outside the range: reached: {qa}"
    );
    // The engine (root) reaches prod's process all the same: its router and health checks.
    let mut direct = std::net::TcpStream::connect(("127.0.0.1", prod_port as u16))
        .expect("the engine reaches prod's process");
    direct.write_all(b"y").expect("a byte sent");
    let mut byte = [0u8; 1];
    direct.read_exact(&mut byte).expect("echoed");

    // qa's process goes, and with it its port, which `stage`, made next, is given: qa's code
    // must not reach it.
    let third = commit(&s, &stack(false, 3), &[], "qa without its api");
    s.ok(&["apply", "--env", "qa", "--ref", &third, "--yes"]);
    s.ok(&["apply", "--env", "stage", "--ref", &first, "--yes"]);
    let stage = probe(&s, "stage");
    assert_eq!(
        stage["port"].as_u64(),
        Some(qa_port),
        "stage was given the port qa released (else this proves nothing): {stage}"
    );
    assert_eq!(stage["own"], "ok", "stage reaches its own process: {stage}");
    let fourth = commit(
        &s,
        &stack(false, 4),
        &[format!("stage tcp 127.0.0.1 {qa_port}")],
        "qa tries the port it had",
    );
    s.ok(&["apply", "--env", "qa", "--ref", &fourth, "--yes"]);
    let qa = probe(&s, "qa");
    assert_eq!(
        qa["stage"], "ECONNREFUSED",
        "the port it released: refused: {qa}"
    );

    // The rules gone (a reboot, an operator's `nft flush ruleset`): the next apply that runs
    // code writes them again before it does.
    let listed = nft(&["list", "tables"]);
    let table = listed
        .lines()
        .filter_map(|l| l.strip_prefix("table inet "))
        .find(|name| {
            let uid = qa["uid"].as_u64().expect("qa's uid");
            let mut ends = name
                .strip_prefix("slipway_")
                .into_iter()
                .flat_map(|r| r.split('_'))
                .filter_map(|n| n.parse::<u64>().ok());
            matches!((ends.next(), ends.next()), (Some(lo), Some(hi)) if (lo..=hi).contains(&uid))
        })
        .expect("the sandbox's table")
        .to_owned();
    nft(&["delete", "table", "inet", &table]);
    let fifth = commit(
        &s,
        &stack(false, 5),
        &[format!("prod tcp 127.0.0.1 {prod_port}")],
        "qa tries prod again",
    );
    s.ok(&["apply", "--env", "qa", "--ref", &fifth, "--yes"]);
    let qa = probe(&s, "qa");
    assert_eq!(qa["prod"], "ECONNREFUSED", "written again: {qa}");

    // A destroy takes every port of the environment from its code before the store may give
    // them to another.
    let stage_pair = format!(
        "{} . {qa_port}",
        stage["uid"].as_u64().expect("stage's uid")
    );
    assert!(nft(&["list", "set", "inet", &table, "owned"]).contains(&stage_pair));
    s.ok(&["destroy", "--env", "stage", "--yes"]);
    assert!(
        !nft(&["list", "set", "inet", &table, "owned"]).contains(&stage_pair),
        "stage's port is taken from its uid at its destroy"
    );

    // `slipway serve` writes the table whole at its start: a pair the store does not hold
    // (left by a revoke that failed) goes.
    let stale = format!("{} . {prod_port}", qa["uid"].as_u64().expect("qa's uid"));
    nft(&[
        "add",
        "element",
        "inet",
        &table,
        "owned",
        &format!("{{ {stale} }}"),
    ]);
    assert!(nft(&["list", "set", "inet", &table, "owned"]).contains(&stale));
    let url = format!("file://{}", s.repo.display());
    let (_server, said) = serve_from(
        s.cmd(&["serve", "--repo", &url, "--listen", "127.0.0.1:0"]),
        T,
    );
    let said = said.lock().expect("lines").join("\n");
    assert!(
        said.contains(&format!(
            "environments' connections are filtered (nftables table inet {table}"
        )),
        "serve says the packet filter is in force: {said}"
    );
    assert!(
        !nft(&["list", "set", "inet", &table, "owned"]).contains(&stale),
        "serve's start dropped the stale pair"
    );
    drop(_server);

    // Turned off: serve's start removes the table and says what that leaves open, and qa's
    // code then reaches prod's process (what refused it above was the filter).
    s.with_local("network = \"off\"");
    let (server, said) = serve_from(
        s.cmd(&["serve", "--repo", &url, "--listen", "127.0.0.1:0"]),
        T,
    );
    let said = said.lock().expect("lines").join("\n");
    assert!(
        said.contains("warning: environments' code can connect to other environments' ports")
            && said.contains("[local] network = \"off\""),
        "serve says the filter is off: {said}"
    );
    assert!(
        !nft(&["list", "tables"]).contains(&table),
        "the table is removed"
    );
    drop(server);
    let sixth = commit(
        &s,
        &stack(false, 6),
        &[format!("prod tcp 127.0.0.1 {prod_port}")],
        "qa tries prod with the filter off",
    );
    s.ok(&["apply", "--env", "qa", "--ref", &sixth, "--yes"]);
    let qa = probe(&s, "qa");
    assert_eq!(qa["prod"], "ok", "no filter, no refusal: {qa}");
}
