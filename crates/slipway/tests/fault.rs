//! The controller killed with SIGKILL at many points during applies, then restarted: each
//! time it converges, with nothing duplicated, orphaned or forgotten.

mod util;

use std::time::Duration;

use serde_json::Value;
use util::*;

const T: Duration = Duration::from_secs(40);

fn stack(round: usize) -> String {
    dev_stack(
        "fault",
        &format!(
            r#"  conf: {{ type: file, path: conf.txt, content: "round {round}" }}
  a: {{ type: process, command: ["sleep", "5151000"], env: {{ ROUND: "{round}" }} }}
  b: {{ type: process, command: ["sleep", "5151001"], env: {{ CONF: "${{resources.conf.path}}" }} }}
  migrate: {{ type: job, command: ["sh", "-c", "sleep 0.2; echo round {round}"], depends_on: [a] }}
  c: {{ type: process, command: ["sleep", "5151002"], env: {{ ROUND: "{round}" }}, depends_on: [migrate, b] }}
"#
        ),
    )
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
        let mut doomed = start_serve(&s);
        std::thread::sleep(delay);
        doomed.child.kill().expect("SIGKILL the controller");
        let _ = doomed.child.wait();

        let server = start_serve(&s);
        let addr = server.addr.clone();
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
        assert_one_of_each(
            &s,
            &[("a", "5151000"), ("b", "5151001"), ("c", "5151002")],
            &format!("round {round}"),
        );
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
        drop(server);
    }
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    assert!(s.processes().is_empty(), "destroy leaves nothing running");
}
