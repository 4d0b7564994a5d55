//! A real Kubernetes control plane for a test: `scripts/test-cluster.sh` (etcd,
//! kube-apiserver, kube-controller-manager on 127.0.0.1), driven from Rust, and Debian's
//! `kubectl` against it for what a test checks or does behind Slipway's back.
//!
//! No kubelet runs, so no Pod ever starts by itself: [`Cluster::play_kubelet`] does the
//! kubelet's part for the Pods of one namespace (phase `Running` and `Ready=True`, or
//! `Succeeded` for a Job's), through the status subresource, and leaves the rest to the real
//! controllers (ReplicaSets count the Pods, Deployments roll out, Jobs complete).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

/// One running control plane; stopped when dropped (and by the script's watchdog when the
/// test process dies).
pub struct Cluster {
    dir: PathBuf,
    script: PathBuf,
}

fn script_path() -> PathBuf {
    std::env::var_os("SLIPWAY_TEST_CLUSTER_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-cluster.sh")
        })
}

impl Cluster {
    /// Starts a new cluster with its state in `dir` (emptied first), owned by this process.
    pub fn start(dir: &Path) -> Cluster {
        let cluster = Cluster {
            dir: dir.to_path_buf(),
            script: script_path(),
        };
        let _ = cluster.script("down", &[]);
        let _ = std::fs::remove_dir_all(dir);
        cluster.up();
        cluster
    }

    /// `bash scripts/test-cluster.sh COMMAND DIR ARGS...`.
    fn script(&self, command: &str, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(&self.script)
            .arg(command)
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("bash runs scripts/test-cluster.sh")
    }

    /// The cluster every test of this test binary shares, started on first use under
    /// `target/test-clusters/NAME`.
    pub fn shared(name: &str) -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::start(&Self::dir_for(name)))
    }

    /// `target/test-clusters/NAME` of this workspace.
    pub fn dir_for(name: &str) -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        target.join("test-clusters").join(name)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        let env = std::fs::read_to_string(self.dir.join("env")).unwrap_or_default();
        env.lines()
            .find_map(|l| l.strip_prefix("SLIPWAY_TEST_CLUSTER_SERVER="))
            .map(|s| s.trim_matches('"').trim_matches('\'').to_string())
            .unwrap_or_default()
    }

    /// Stops the control plane (the data stays, so [`Cluster::up`] brings it back).
    pub fn down(&self) {
        let out = self.script("down", &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it (again after [`Cluster::down`]), owned by this process: the script's
    /// watchdog stops it when the test process ends, however it ends.
    pub fn up(&self) {
        let owner = std::process::id().to_string();
        let out = self.script("up", &["--owner", &owner]);
        assert!(
            out.status.success(),
            "scripts/test-cluster.sh up {} failed (it builds the control plane when \
             missing: see docs/kubernetes.md)\n{}{}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl ARGS` against this cluster.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .output()
            .expect("kubectl runs (Debian's `kubectl`; scripts/test.sh installs it)")
    }

    /// `kubectl ARGS`, which must succeed; its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The object `kind/name` in `namespace` (`""` for cluster-scoped) as JSON, or `None`
    /// when it does not exist.
    pub fn get(&self, namespace: &str, kind: &str, name: &str) -> Option<Value> {
        let mut args = vec!["get", kind, name, "-o", "json"];
        if !namespace.is_empty() {
            args.extend(["-n", namespace]);
        }
        let out = self.kubectl(&args);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("NotFound"),
                "kubectl {}: {stderr}",
                args.join(" ")
            );
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("kubectl prints JSON"))
    }

    /// The names of every object of `kind` in `namespace`.
    pub fn names(&self, namespace: &str, kind: &str) -> Vec<String> {
        let out = self.kubectl_ok(&["get", kind, "-n", namespace, "-o", "json"]);
        let list: Value = serde_json::from_str(&out).expect("kubectl prints JSON");
        let mut names: Vec<String> = list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Plays the kubelet for the Pods of `namespace` until the returned guard is dropped:
    /// every Pod not yet started is marked running and ready (or succeeded, for a Job's).
    pub fn play_kubelet(&self, namespace: &str) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let kubeconfig = self.kubeconfig();
            let namespace = namespace.to_string();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    start_pods(&kubeconfig, &namespace);
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        };
        Kubelet {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script("down", &[]);
    }
}

/// See [`Cluster::play_kubelet`].
pub struct Kubelet {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start_pods(kubeconfig: &Path, namespace: &str) {
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .ok()
    };
    let Some(out) = kubectl(&["get", "pods", "-n", namespace, "-o", "json"]) else {
        return;
    };
    let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) else {
        return;
    };
    for pod in list["items"].as_array().into_iter().flatten() {
        let phase = pod["status"]["phase"].as_str().unwrap_or("");
        if phase != "Pending" && !phase.is_empty() {
            continue;
        }
        let Some(name) = pod["metadata"]["name"].as_str() else {
            continue;
        };
        let of_job = pod["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["kind"] == "Job");
        let now = "2026-01-01T00:00:00Z";
        let status = if of_job {
            serde_json::json!({"status": {"phase": "Succeeded", "conditions": [
                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}]}})
        } else {
            serde_json::json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}})
        };
        let patch = status.to_string();
        let _ = kubectl(&[
            "patch",
            "pod",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }
}
