//! `[kubernetes.NAME]`: how to reach one cluster, and the client made from it.
//!
//! The credentials come only from the engine's configuration (a kubeconfig file, by path or
//! by an environment variable naming the path, and a context), never from the repository.
//! No part of them is written to a plan, a log, an error or the API: errors name the
//! cluster and its server URL only.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{ProviderError, Retry};

/// `[kubernetes.NAME]` in the engine configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The environment variable holding the kubeconfig file's path (e.g. `KUBECONFIG`).
    pub kubeconfig_env: Option<String>,
    /// The kubeconfig file's path.
    pub kubeconfig: Option<PathBuf>,
    /// The context to use; default: the file's current context.
    pub context: Option<String>,
    /// Kinds of cluster-scoped objects the manifests may create (each owned by one
    /// environment). Default: `["CustomResourceDefinition"]`. Anything else cluster-wide (a
    /// `ClusterRoleBinding` to `cluster-admin`, another `Namespace`) is refused, whoever wrote
    /// the branch.
    pub cluster_scoped: Option<Vec<String>>,
}

/// Cluster-scoped kinds allowed when the configuration says nothing.
pub const DEFAULT_CLUSTER_SCOPED: &[&str] = &["CustomResourceDefinition"];

/// Kubernetes' own cluster-scoped kinds and the API group each is served from: a kind listed
/// in `cluster_scoped` by its name alone is that group's.
pub const BUILT_IN_CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("CustomResourceDefinition", "apiextensions.k8s.io"),
    ("Namespace", ""),
    ("PersistentVolume", ""),
    ("ClusterRole", "rbac.authorization.k8s.io"),
    ("ClusterRoleBinding", "rbac.authorization.k8s.io"),
    ("StorageClass", "storage.k8s.io"),
    ("CSIDriver", "storage.k8s.io"),
    ("PriorityClass", "scheduling.k8s.io"),
    ("IngressClass", "networking.k8s.io"),
    ("RuntimeClass", "node.k8s.io"),
    (
        "ValidatingWebhookConfiguration",
        "admissionregistration.k8s.io",
    ),
    (
        "MutatingWebhookConfiguration",
        "admissionregistration.k8s.io",
    ),
    ("APIService", "apiregistration.k8s.io"),
];

impl ClusterConfig {
    /// Refuses a section with other than exactly one source for its kubeconfig.
    pub fn check(&self, name: &str) -> Result<(), String> {
        match (&self.kubeconfig_env, &self.kubeconfig) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(format!(
                "[kubernetes.{name}] needs exactly one of `kubeconfig_env` (a variable holding \
                 the file's path, e.g. \"KUBECONFIG\") or `kubeconfig` (the path)"
            )),
        }
    }

    /// The files holding this cluster's credentials: the kubeconfig first, then the client
    /// keys and token files it names (none when it cannot be read or is not set).
    pub fn credential_files(&self, name: &str) -> Vec<PathBuf> {
        let Ok(path) = self.kubeconfig_path(name) else {
            return Vec::new();
        };
        let mut files = Vec::new();
        if let Ok(kubeconfig) = kube::config::Kubeconfig::read_from(&path) {
            for user in kubeconfig.auth_infos {
                let Some(info) = user.auth_info else { continue };
                files.extend(
                    [info.client_key, info.token_file]
                        .into_iter()
                        .flatten()
                        .map(PathBuf::from),
                );
            }
        }
        files.insert(0, path);
        files
    }

    /// The kubeconfig file, read from where the configuration says.
    pub fn kubeconfig_path(&self, name: &str) -> Result<PathBuf, String> {
        self.check(name)?;
        if let Some(var) = &self.kubeconfig_env {
            return match std::env::var_os(var) {
                Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
                _ => Err(format!(
                    "[kubernetes.{name}] reads its kubeconfig's path from ${var}, which is not set"
                )),
            };
        }
        Ok(self.kubeconfig.clone().unwrap_or_default())
    }

    /// Whether objects of `kind` may be created outside the environment's namespace.
    ///
    /// A listed `KIND` is that kind of the API group Kubernetes serves it from when it is one
    /// of Kubernetes' own ([`BUILT_IN_CLUSTER_SCOPED`]: `CustomResourceDefinition` is
    /// `apiextensions.k8s.io`'s, never a branch's own CRD of a cluster-scoped kind of that name
    /// in a group of its own), any group's otherwise; `GROUP/KIND` is that group's only.
    pub fn allows_cluster_scoped(&self, api_version: &str, kind: &str) -> bool {
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        let listed = |entry: &str| match entry.split_once('/') {
            Some((g, k)) => g == group && k == kind,
            None => {
                entry == kind
                    && BUILT_IN_CLUSTER_SCOPED
                        .iter()
                        .find(|(k, _)| *k == kind)
                        .is_none_or(|(_, g)| *g == group)
            }
        };
        match &self.cluster_scoped {
            Some(kinds) => kinds.iter().any(|k| listed(k)),
            None => DEFAULT_CLUSTER_SCOPED.iter().any(|k| listed(k)),
        }
    }
}

/// A connected cluster: its client and what errors may say about it.
#[derive(Clone)]
pub(crate) struct Cluster {
    pub(crate) name: String,
    pub(crate) server: String,
    pub(crate) client: kube::Client,
    pub(crate) config: ClusterConfig,
}

/// How long connecting and each request may take before the cluster counts as not answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Cluster {
    /// Reads the kubeconfig and makes a client (no request is sent yet).
    pub(crate) async fn connect(
        name: &str,
        config: &ClusterConfig,
    ) -> Result<Cluster, ProviderError> {
        let refused = |why: String| ProviderError::Failed {
            message: why,
            log_tail: None,
            retry: Retry::Terminal,
        };
        let path = config.kubeconfig_path(name).map_err(refused)?;
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).map_err(|e| {
            refused(format!(
                "[kubernetes.{name}] cannot read the kubeconfig {}: {e}",
                path.display()
            ))
        })?;
        let options = kube::config::KubeConfigOptions {
            context: config.context.clone(),
            ..Default::default()
        };
        let mut client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| {
                refused(format!(
                    "[kubernetes.{name}] kubeconfig {}: {e}",
                    path.display()
                ))
            })?;
        client_config.connect_timeout = Some(CONNECT_TIMEOUT);
        client_config.read_timeout = Some(REQUEST_TIMEOUT);
        client_config.write_timeout = Some(REQUEST_TIMEOUT);
        let server = client_config.cluster_url.to_string();
        let client = kube::Client::try_from(client_config).map_err(|e| {
            refused(format!(
                "[kubernetes.{name}] cannot make a client for {server}: {e}"
            ))
        })?;
        Ok(Cluster {
            name: name.to_string(),
            server,
            client,
            config: config.clone(),
        })
    }

    /// A provider error for `error` met while doing `what`: a cluster that does not answer
    /// (or answers 5xx, 429, a timeout) is retryable and named; a refusal is terminal with
    /// the API server's own message.
    pub(crate) fn error(&self, what: &str, error: &kube::Error) -> ProviderError {
        let (message, retry) = match error {
            kube::Error::Api(status) => (
                format!("{what}: {} ({})", status.message, status.code),
                retry_of(status.code, &status.message),
            ),
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => (
                format!(
                    "{what}: the cluster `{}` at {} does not answer: {error}",
                    self.name, self.server
                ),
                Retry::Retryable,
            ),
            kube::Error::Auth(_) => (
                format!(
                    "{what}: the cluster `{}` at {} refused the kubeconfig's credentials",
                    self.name, self.server
                ),
                Retry::Terminal,
            ),
            other => (
                format!("{what} on `{}` at {}: {other}", self.name, self.server),
                Retry::Retryable,
            ),
        };
        ProviderError::Failed {
            message,
            log_tail: None,
            retry,
        }
    }
}

/// Whether an API server's refusal may go away: its 5xx, 429 (throttled) and 409 (a
/// conflict with a concurrent write) may; its 4xx do not, and neither does the 500 with which
/// server-side apply answers a manifest its schema refuses (an unknown field, a string where
/// a number goes).
fn retry_of(code: u16, message: &str) -> Retry {
    let refused = message.contains("failed to create typed patch object");
    if !refused && (code >= 500 || code == 429 || code == 409) {
        Retry::Retryable
    } else {
        Retry::Terminal
    }
}

/// `Status.code` of an API error, if `error` is one.
pub(crate) fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Whether the API server refused a change because a field cannot change once set (a Job's
/// template, a Service's `clusterIP`, a Deployment's selector, a binding's `roleRef`): the
/// object is then replaced.
pub(crate) fn is_immutable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            status.code == 422
                && ["immutable", "may not change", "cannot change"]
                    .iter()
                    .any(|said| status.message.contains(said))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_needs_exactly_one_kubeconfig_source() {
        assert!(ClusterConfig::default().check("main").is_err());
        let both = ClusterConfig {
            kubeconfig_env: Some("KUBECONFIG".into()),
            kubeconfig: Some("/k".into()),
            ..Default::default()
        };
        assert!(both.check("main").unwrap_err().contains("exactly one"));
        let unset = ClusterConfig {
            kubeconfig_env: Some("SLIPWAY_TEST_SURELY_UNSET_VARIABLE".into()),
            ..Default::default()
        };
        assert!(
            unset
                .kubeconfig_path("main")
                .unwrap_err()
                .contains("not set")
        );
    }

    #[test]
    fn a_manifest_the_schema_refuses_is_not_retried() {
        let schema = "failed to create typed patch object (/v1, Kind=ConfigMap): .data.x: \
                      expected string, got &value.valueUnstructured{Value:1}";
        assert_eq!(retry_of(500, schema), Retry::Terminal);
        assert_eq!(
            retry_of(500, "etcdserver: request timed out"),
            Retry::Retryable
        );
        assert_eq!(
            retry_of(503, "the server is shutting down"),
            Retry::Retryable
        );
        assert_eq!(retry_of(429, "too many requests"), Retry::Retryable);
        assert_eq!(retry_of(422, "field is immutable"), Retry::Terminal);
        assert_eq!(retry_of(403, "forbidden"), Retry::Terminal);
    }

    #[test]
    fn only_listed_kinds_may_be_cluster_scoped() {
        let crd = "apiextensions.k8s.io/v1";
        let default = ClusterConfig::default();
        assert!(default.allows_cluster_scoped(crd, "CustomResourceDefinition"));
        assert!(
            !default.allows_cluster_scoped("rbac.authorization.k8s.io/v1", "ClusterRoleBinding")
        );
        assert!(!default.allows_cluster_scoped("v1", "Namespace"));
        // A branch's own CRD of a cluster-scoped kind named like Kubernetes' own.
        assert!(!default.allows_cluster_scoped("evil.example.com/v1", "CustomResourceDefinition"));
        let none = ClusterConfig {
            cluster_scoped: Some(vec![]),
            ..Default::default()
        };
        assert!(!none.allows_cluster_scoped(crd, "CustomResourceDefinition"));
        let listed = ClusterConfig {
            cluster_scoped: Some(vec!["Widget".into(), "acme.example/Gadget".into()]),
            ..Default::default()
        };
        assert!(listed.allows_cluster_scoped("acme.example/v1", "Widget"));
        assert!(listed.allows_cluster_scoped("acme.example/v2", "Gadget"));
        assert!(!listed.allows_cluster_scoped("evil.example/v1", "Gadget"));
    }
}
