//! The controller killed with SIGKILL at many points during applies, then restarted: each
//! time it converges, with nothing duplicated, orphaned or forgotten.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use util::*;

const T: Duration = Duration::from_secs(40);

fn stack(round: usize) -> String {
    format!(
        r#"version: 1
stack: fault
environments: {{ dev: {{ track: main }} }}
resources:
  conf: {{ type: file, path: conf.txt, content: "round {round}" }}
  a: {{ type: process, command: ["sleep", "5151000"], env: {{ ROUND: "{round}" }} }}
  b: {{ type: process, command: ["sleep", "5151001"], env: {{ CONF: "${{resources.conf.path}}" }} }}
  migrate: {{ type: job, command: ["sh", "-c", "sleep 0.2; echo round {round}"], depends_on: [a] }}
  c: {{ type: process, command: ["sleep", "5151002"], env: {{ ROUND: "{round}" }}, depends_on: [migrate, b] }}
"#
    )
}

fn start(s: &Sandbox) -> (Child, String) {
    let url = format!("file://{}", s.repo.display());
    let mut child = s
        .cmd(&["serve", "--repo", &url, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("API http://").nth(1) {
                let _ = tx.send(rest.split('/').next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx.recv_timeout(T).expect("serve prints its address");
    (child, addr)
}

fn status(s: &Sandbox, addr: &str, token: &str) -> Value {
    s.json(&[
        "--server",
        &format!("http://{addr}"),
        "--token",
        token,
        "status",
        "--output",
        "json",
    ])
}

#[test]
fn the_controller_killed_at_twenty_points_converges_every_time() {
    let s = Sandbox::new();
    s.write("slipway.yaml", &stack(0));
    s.commit("round 0");
    let config = std::fs::read_to_string(&s.config).expect("config")
        + "[repo]\npoll_interval = \"200ms\"\n[controller]\ndrift_interval = \"1s\"\n";
    std::fs::write(&s.config, config).expect("config");
    let token = String::from_utf8(s.ok(&["token", "create", "--role", "admin"]).stdout)
        .expect("utf-8")
        .trim()
        .to_string();

    for round in 1..=20usize {
        let head = {
            s.write("slipway.yaml", &stack(round));
            s.commit(&format!("round {round}"))
        };
        // Kill points spread over the apply: from before the first fetch to after the job.
        let delay = Duration::from_millis(((round * 37) % 700) as u64);
        let (mut doomed, _) = start(&s);
        std::thread::sleep(delay);
        doomed.kill().expect("SIGKILL the controller");
        let _ = doomed.wait();

        let (mut server, addr) = start(&s);
        let converged = wait_for(
            &format!("round {round} (killed after {delay:?}) converges"),
            T,
            || {
                let v = status(&s, &addr, &token);
                let dev = v["environments"]
                    .as_array()?
                    .iter()
                    .find(|e| e["name"] == "dev")?
                    .clone();
                (dev["commit"] == head.as_str()
                    && dev["sync"] == "synced"
                    && dev["resources"]
                        .as_array()?
                        .iter()
                        .all(|r| r["status"] == "ready"))
                .then_some(dev)
            },
        );
        assert_eq!(converged["health"], "healthy");
        for (name, arg) in [("a", "5151000"), ("b", "5151001"), ("c", "5151002")] {
            let supervisors: Vec<_> = s
                .processes()
                .into_iter()
                .filter(|(_, c)| {
                    c.contains("__supervise") && c.contains(&format!("/run/{name}.spec.json"))
                })
                .collect();
            assert_eq!(
                supervisors.len(),
                1,
                "round {round}: one supervisor for `{name}`: {supervisors:?}"
            );
            let children: Vec<_> = processes_mentioning(&format!("sleep {arg}"))
                .into_iter()
                .filter(|(_, c)| !c.contains("slipway"))
                .collect();
            assert_eq!(
                children.len(),
                1,
                "round {round}: one `{name}` process, nothing duplicated or orphaned: {children:?}"
            );
        }
        let history = s.json(&["history", "--env", "dev", "--output", "json"]);
        let deployments = history["deployments"].as_array().expect("deployments");
        assert!(
            deployments.iter().all(|d| d["status"] != "running"),
            "round {round}: no deployment is left running: {history}"
        );
        assert!(
            deployments
                .iter()
                .any(|d| d["commit"] == head.as_str() && d["status"] == "succeeded"),
            "round {round}: the history records the converged deployment"
        );
        let _ = server.kill();
        let _ = server.wait();
    }
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    assert!(s.processes().is_empty(), "destroy leaves nothing running");
}
