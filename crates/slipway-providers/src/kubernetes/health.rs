//! Whether a live object is healthy, read from its status in the manner of kstatus (the
//! library behind `kubectl wait` and Flux's health checks): a workload is current once its
//! controller has observed the latest generation and rolled it out, a Job once complete, any
//! object with a `Ready` condition once it is `True`, and anything else once it exists.

use serde_json::Value;

/// What an object's status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Rolled out, complete or ready.
    Current,
    /// Not yet; why, for the message shown when the wait runs out.
    InProgress(String),
    /// Failed for good (a Job that failed, a Deployment past its progress deadline); why.
    Failed(String),
}

fn int(object: &Value, pointer: &str) -> Option<i64> {
    object.pointer(pointer).and_then(Value::as_i64)
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn is_true(condition: Option<&Value>) -> Option<bool> {
    condition
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        .map(|s| s == "True")
}

fn why(condition: &Value) -> String {
    let field = |k: &str| condition.get(k).and_then(Value::as_str).unwrap_or("");
    match (field("reason"), field("message")) {
        ("", "") => format!("{}={}", field("type"), field("status")),
        (reason, "") => format!("{}={} ({reason})", field("type"), field("status")),
        (reason, message) => format!(
            "{}={} ({reason}: {message})",
            field("type"),
            field("status")
        ),
    }
}

/// The health of `object` (as the API server returned it) of `kind`.
pub fn of(kind: &str, object: &Value) -> Health {
    let generation = int(object, "/metadata/generation");
    let observed = int(object, "/status/observedGeneration");
    if let (Some(generation), Some(observed)) = (generation, observed)
        && observed < generation
    {
        return Health::InProgress(format!(
            "its controller has seen generation {observed} of {generation}"
        ));
    }
    match kind {
        "Deployment" => deployment(object, observed),
        "StatefulSet" => replicas(object, observed, "/status/readyReplicas", "ready"),
        "ReplicaSet" => replicas(object, observed, "/status/availableReplicas", "available"),
        "DaemonSet" => {
            if observed.is_none() {
                return Health::InProgress("not yet observed by its controller".into());
            }
            let desired = int(object, "/status/desiredNumberScheduled").unwrap_or(0);
            let ready = int(object, "/status/numberReady").unwrap_or(0);
            let updated = int(object, "/status/updatedNumberScheduled").unwrap_or(0);
            if ready >= desired && updated >= desired {
                Health::Current
            } else {
                Health::InProgress(format!(
                    "{ready} of {desired} pods ready, {updated} updated"
                ))
            }
        }
        "Job" => {
            if is_true(condition(object, "Complete")) == Some(true) {
                Health::Current
            } else if let Some(failed) =
                condition(object, "Failed").filter(|c| is_true(Some(c)) == Some(true))
            {
                Health::Failed(why(failed))
            } else {
                let succeeded = int(object, "/status/succeeded").unwrap_or(0);
                Health::InProgress(format!("not complete ({succeeded} succeeded)"))
            }
        }
        "Pod" => match object.pointer("/status/phase").and_then(Value::as_str) {
            Some("Succeeded") => Health::Current,
            Some("Failed") => Health::Failed("the pod failed".into()),
            _ => {
                ready_condition(object).unwrap_or_else(|| Health::InProgress("not running".into()))
            }
        },
        "PersistentVolumeClaim" => match object.pointer("/status/phase").and_then(Value::as_str) {
            Some("Bound") => Health::Current,
            phase => Health::InProgress(format!("phase {}", phase.unwrap_or("unknown"))),
        },
        _ => ready_condition(object).unwrap_or(Health::Current),
    }
}

/// The `Ready` condition's verdict, if the object has one.
fn ready_condition(object: &Value) -> Option<Health> {
    let ready = condition(object, "Ready")?;
    Some(match is_true(Some(ready)) {
        Some(true) => Health::Current,
        _ => Health::InProgress(why(ready)),
    })
}

fn deployment(object: &Value, observed: Option<i64>) -> Health {
    if observed.is_none() {
        return Health::InProgress("not yet observed by its controller".into());
    }
    if let Some(progressing) = condition(object, "Progressing")
        && progressing.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
    {
        return Health::Failed(why(progressing));
    }
    let wanted = int(object, "/spec/replicas").unwrap_or(1);
    let updated = int(object, "/status/updatedReplicas").unwrap_or(0);
    let available = int(object, "/status/availableReplicas").unwrap_or(0);
    let total = int(object, "/status/replicas").unwrap_or(0);
    if updated < wanted {
        Health::InProgress(format!("{updated} of {wanted} replicas updated"))
    } else if total > updated {
        Health::InProgress(format!(
            "{} old replicas pending termination",
            total - updated
        ))
    } else if available < wanted {
        Health::InProgress(format!("{available} of {wanted} replicas available"))
    } else {
        Health::Current
    }
}

fn replicas(object: &Value, observed: Option<i64>, pointer: &str, word: &str) -> Health {
    if observed.is_none() {
        return Health::InProgress("not yet observed by its controller".into());
    }
    let wanted = int(object, "/spec/replicas").unwrap_or(1);
    let have = int(object, pointer).unwrap_or(0);
    if have >= wanted {
        Health::Current
    } else {
        Health::InProgress(format!("{have} of {wanted} replicas {word}"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_deployment_is_current_once_rolled_out_at_its_generation() {
        let rolling = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert!(matches!(of("Deployment", &rolling), Health::InProgress(_)));
        let waiting = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}});
        assert_eq!(
            of("Deployment", &waiting),
            Health::InProgress("1 of 2 replicas available".into())
        );
        let done = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert_eq!(of("Deployment", &done), Health::Current);
        let stuck = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}});
        assert!(matches!(of("Deployment", &stuck), Health::Failed(m) if m.contains("too slow")));
    }

    #[test]
    fn jobs_and_ready_conditions() {
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}});
        assert!(
            matches!(of("Job", &failed), Health::Failed(m) if m.contains("BackoffLimitExceeded"))
        );
        let complete = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(of("Job", &complete), Health::Current);
        let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "NoBackend", "message": "no backend"}]}});
        assert_eq!(
            of("Widget", &not_ready),
            Health::InProgress("Ready=False (NoBackend: no backend)".into())
        );
        assert_eq!(of("ConfigMap", &json!({"data": {}})), Health::Current);
    }
}
