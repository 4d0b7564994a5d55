//! `kubernetes.manifests`: the objects of a commit's manifests, applied by server-side apply
//! into one namespace per environment, recorded in an inventory and pruned when they leave
//! the set.
//!
//! # Who triggers it, what it can reach
//! Whoever can push a branch writes the manifests a generated environment applies, with the
//! credentials of the engine's `[kubernetes.NAME]`. So the provider, not the manifests,
//! decides where objects go: every namespaced object goes into the environment's own
//! namespace (an object naming another one is refused), the namespace must be this
//! environment's (labelled by this home, environment and resource; an existing namespace of
//! anyone else is refused, `kube-system` included), cluster-scoped objects are refused unless
//! the cluster's configuration lists their kind (default: CRDs only), and an existing
//! cluster-scoped object that another environment owns is never taken over (one absent is
//! created by a POST, which fails if another environment made it meanwhile). What the
//! credentials can do beyond that is for the cluster's RBAC to bound (docs/kubernetes.md has
//! the ClusterRole the controller needs).
//!
//! # Order and inventory
//! The namespace, then CRDs (waited for until `Established`, after which discovery is asked
//! again), then the rest in the order Helm installs kinds (service accounts, secrets and
//! config before services, workloads after), custom resources last. The inventory (the live
//! handle the engine records in the state store) lists every object applied; the owner labels
//! are a second record, so that objects applied by an apply that was killed before it
//! returned are found and pruned too. Pruning deletes in the reverse order.

mod cluster;
pub mod health;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use cluster::{Cluster, api_code, is_immutable};
pub use cluster::{ClusterConfig, DEFAULT_CLUSTER_SCOPED};
use health::Health;

use slipway_core::plan::{Action, FieldChange, ObjectChange};

use crate::{Applied, Observation, Provider, ProviderError, ResourceContext, Retry};

/// The `type:` this module implements.
pub const TYPE: &str = "kubernetes.manifests";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "slipway";

/// Owner labels on every object Slipway applies.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// See [`LABEL_MANAGED_BY`].
pub const LABEL_INSTANCE: &str = "slipway.dev/instance";
/// See [`LABEL_MANAGED_BY`].
pub const LABEL_STACK: &str = "slipway.dev/stack";
/// See [`LABEL_MANAGED_BY`].
pub const LABEL_ENVIRONMENT: &str = "slipway.dev/environment";
/// See [`LABEL_MANAGED_BY`].
pub const LABEL_RESOURCE: &str = "slipway.dev/resource";

/// How long a namespace or a replaced object may take to go.
const DELETE_WAIT: Duration = Duration::from_secs(120);
/// How long a CRD may take to be established.
const ESTABLISH_WAIT: Duration = Duration::from_secs(60);
/// The longest `wait` a resource may ask for; more is cut to it.
pub const MAX_WAIT: Duration = Duration::from_secs(30 * 60);

/// When a wait for the objects to be healthy gives up: `wait` from `now` when the resource
/// says (at most [`MAX_WAIT`]: the repository's `wait` holds a controller's worker as long as
/// it says, and a branch could ask for a century on an object that never becomes healthy),
/// else the apply's `deadline`.
fn ready_deadline(wait: Option<&str>, deadline: Instant, now: Instant) -> Instant {
    match wait.and_then(slipway_core::duration::parse) {
        Some(wait) => now + wait.min(MAX_WAIT),
        None => deadline,
    }
}
const POLL: Duration = Duration::from_millis(200);

/// The order in which kinds are applied (as Helm installs them); kinds not listed (custom
/// resources) come last. Pruning and destroying go the other way.
const KIND_ORDER: &[&str] = &[
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
];

fn rank(kind: &str) -> usize {
    KIND_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KIND_ORDER.len())
}

/// A `kubernetes.manifests` resource's resolved configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[kubernetes.NAME]` of the engine configuration.
    pub cluster: String,
    /// The objects, as the loader read them from the commit's manifest files.
    pub manifests: Vec<Manifest>,
    /// The environment's namespace; default `STACK-ENV`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// How long the objects may take to become healthy.
    #[serde(default)]
    pub wait: Option<String>,
}

/// One object of the manifests, with where it was written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `FILE:LINE:COL` of the YAML document.
    pub source: String,
    /// The object, references substituted.
    pub object: Value,
}

/// One applied object, as the inventory records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// The namespace of a namespaced object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectRef {
    fn gvk(&self) -> GroupVersionKind {
        let (group, version) = match self.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", self.api_version.as_str()),
        };
        GroupVersionKind::gvk(group, version, &self.kind)
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// The live handle: what was applied where. The engine records it in the state store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inventory {
    /// `[kubernetes.NAME]`.
    pub cluster: String,
    /// The environment's namespace.
    pub namespace: String,
    /// Every object applied, the namespace excepted.
    pub objects: Vec<ObjectRef>,
}

/// How many requests one apply, plan or health check keeps in flight to the API server.
const IN_FLIGHT: usize = 16;

/// What a server-side dry run of one manifest object found.
enum DryRun {
    /// Its kind is not served (its CRD is not applied yet, or was deleted).
    NotServed(ObjectRef),
    /// It does not exist.
    Missing(Prepared),
    /// The server refuses the change in place.
    Immutable {
        prepared: Prepared,
        /// The field, when the server's message names it.
        field: Option<String>,
    },
    /// The live object and what applying would make of it, without the server's own fields.
    Compared {
        prepared: Prepared,
        live: Value,
        would: Value,
    },
}

/// Whether a cluster-scoped object is there (see [`Run::check_owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Absent,
    Ours,
}

/// How many times the hand-over of a created object's fields to the apply is tried (each
/// failure is a change to the object meanwhile).
const HAND_OVER_TRIES: usize = 5;

/// How many times a cluster-scoped object found absent is created before giving up (each
/// failure is another environment making it meanwhile, then it going).
const CLAIM_TRIES: usize = 3;

/// The merge patch that hands what `created`'s POST set to [`FIELD_MANAGER`]'s server-side
/// apply (its `Update` entry of `managedFields` made an `Apply` one), on the version the POST
/// made; `None` when it has no such entry.
fn managed_by_apply(created: &Value) -> Option<Value> {
    let version = created.pointer("/metadata/resourceVersion")?.clone();
    let mut entries = created
        .pointer("/metadata/managedFields")?
        .as_array()?
        .clone();
    let mut handed = false;
    for entry in &mut entries {
        if entry["manager"] == FIELD_MANAGER && entry["operation"] == "Update" {
            entry["operation"] = json!("Apply");
            handed = true;
        }
    }
    handed.then(|| json!({"metadata": {"resourceVersion": version, "managedFields": entries}}))
}

/// An object ready to send: resolved against discovery, labelled, placed.
struct Prepared {
    reference: ObjectRef,
    source: String,
    resource: ApiResource,
    object: Value,
}

impl Prepared {
    /// Server-side applies the object through `api` with `params` (a dry run or not).
    async fn apply_with(
        &self,
        api: &Api<DynamicObject>,
        params: &PatchParams,
    ) -> Result<DynamicObject, kube::Error> {
        api.patch(&self.reference.name, params, &Patch::Apply(&self.object))
            .await
    }
}

/// The `kubernetes.manifests` provider over the clusters of the engine configuration.
pub struct KubernetesProvider {
    clusters: BTreeMap<String, ClusterConfig>,
    instance_id: String,
    /// Made on first use (an engine without a Kubernetes resource starts no thread); taken
    /// when dropped: see the `Drop` impl.
    runtime: std::sync::OnceLock<tokio::runtime::Runtime>,
    connected: Mutex<HashMap<String, Cluster>>,
}

impl Drop for KubernetesProvider {
    /// Dropping a runtime blocks on its workers, which panics inside an asynchronous context,
    /// and the engine (with its registry) may be dropped inside one (`slipway env create` on
    /// the home, `slipway serve`): shut it down in the background instead.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("clusters", &self.clusters.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn failed(message: String, retry: Retry) -> ProviderError {
    ProviderError::Failed {
        message,
        log_tail: None,
        retry,
    }
}

impl KubernetesProvider {
    /// Runs `work` to completion on the provider's runtime. The provider's calls are
    /// blocking (the engine calls providers from plain threads); one made from inside an
    /// asynchronous context moves that worker aside for the wait instead of panicking.
    fn block_on<F: std::future::Future>(&self, work: F) -> F::Output {
        let runtime = self.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("slipway-kube")
                .enable_all()
                .build()
                .expect("a tokio runtime with one worker thread can be built")
        });
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| runtime.block_on(work)),
            Err(_) => runtime.block_on(work),
        }
    }

    /// A provider for `clusters`, labelling what it makes with this home's `instance_id`.
    pub fn new(clusters: BTreeMap<String, ClusterConfig>, instance_id: &str) -> Arc<Self> {
        Arc::new(KubernetesProvider {
            clusters,
            instance_id: instance_id.to_string(),
            runtime: std::sync::OnceLock::new(),
            connected: Mutex::new(HashMap::new()),
        })
    }

    fn cluster(&self, name: &str) -> Result<Cluster, ProviderError> {
        if let Some(cluster) = self.connected.lock().expect("not poisoned").get(name) {
            return Ok(cluster.clone());
        }
        let Some(config) = self.clusters.get(name) else {
            let known: Vec<&str> = self.clusters.keys().map(String::as_str).collect();
            return Err(failed(
                format!(
                    "cluster `{name}` is not configured: add [kubernetes.{name}] to the engine \
                     configuration{}",
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!(" (configured: {})", known.join(", "))
                    }
                ),
                Retry::Terminal,
            ));
        };
        let cluster = self.block_on(Cluster::connect(name, config))?;
        self.connected
            .lock()
            .expect("not poisoned")
            .insert(name.to_string(), cluster.clone());
        Ok(cluster)
    }

    fn labels(&self, ctx: &ResourceContext<'_>) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            (LABEL_MANAGED_BY, "slipway".to_string()),
            (LABEL_INSTANCE, self.instance_id.clone()),
            (LABEL_STACK, ctx.stack.to_string()),
            (LABEL_ENVIRONMENT, ctx.environment.to_string()),
            (LABEL_RESOURCE, ctx.resource.to_string()),
        ])
    }

    /// The label selector naming what this resource of this environment owns.
    fn selector(&self, ctx: &ResourceContext<'_>) -> String {
        format!(
            "{LABEL_INSTANCE}={},{LABEL_ENVIRONMENT}={},{LABEL_RESOURCE}={}",
            self.instance_id, ctx.environment, ctx.resource
        )
    }

    /// Whether `object`'s labels say this resource of this environment owns it.
    fn owns(&self, ctx: &ResourceContext<'_>, object: &Value) -> bool {
        let label = |k: &str| {
            object
                .pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        label(LABEL_INSTANCE) == Some(self.instance_id.as_str())
            && label(LABEL_ENVIRONMENT) == Some(ctx.environment)
            && label(LABEL_RESOURCE) == Some(ctx.resource)
    }

    fn apply(
        &self,
        ctx: ResourceContext<'_>,
        config: &Config,
        previous: Option<&Inventory>,
    ) -> Result<Applied, ProviderError> {
        let cluster = self.cluster(&config.cluster)?;
        let namespace = namespace_of(&ctx, config)?;
        let run = Run::new(self, &cluster, ctx, &namespace);
        let applied = self.block_on(run.apply_all(config, previous))?;
        let inventory = Inventory {
            cluster: config.cluster.clone(),
            namespace: namespace.clone(),
            objects: applied,
        };
        Ok(Applied {
            outputs: BTreeMap::from([
                ("namespace".to_string(), json!(namespace)),
                ("objects".to_string(), json!(inventory.objects.len())),
            ]),
            secret_outputs: Vec::new(),
            live: crate::to_json(&inventory, "the inventory")?,
            ready: false,
        })
    }
}

/// The environment's namespace: the configured one, or `STACK-ENV`.
fn namespace_of(ctx: &ResourceContext<'_>, config: &Config) -> Result<String, ProviderError> {
    let namespace = match &config.namespace {
        Some(ns) => ns.clone(),
        None => format!("{}-{}", ctx.stack, ctx.environment),
    };
    if !slipway_core::stack::is_dns_label(&namespace) {
        return Err(failed(
            format!(
                "namespace `{namespace}` is not a DNS label (lowercase letters, digits and `-`, \
                 at most 63 characters); set `namespace:` to one"
            ),
            Retry::Terminal,
        ));
    }
    Ok(namespace)
}

fn parse_inventory(live: &Value) -> Result<Inventory, ProviderError> {
    serde_json::from_value(live.clone())
        .map_err(|e| ProviderError::Config(format!("the recorded inventory cannot be read: {e}")))
}

/// One apply, delete or observation against one cluster.
struct Run<'a> {
    provider: &'a KubernetesProvider,
    cluster: &'a Cluster,
    ctx: ResourceContext<'a>,
    namespace: &'a str,
    discovered: Mutex<HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>>,
    /// The API groups of the CRDs this run established, and until when discovery may still
    /// say it does not serve them (see [`Run::discover`]).
    establishing: Mutex<(BTreeSet<String>, Option<Instant>)>,
}

impl<'a> Run<'a> {
    fn new(
        provider: &'a KubernetesProvider,
        cluster: &'a Cluster,
        ctx: ResourceContext<'a>,
        namespace: &'a str,
    ) -> Run<'a> {
        Run {
            provider,
            cluster,
            ctx,
            namespace,
            discovered: Mutex::new(HashMap::new()),
            establishing: Mutex::new((BTreeSet::new(), None)),
        }
    }

    /// Whether a kind of `group` that discovery says is not served may yet be: a CRD of
    /// that group was established by this run less than [`ESTABLISH_WAIT`] ago.
    fn served_soon(&self, group: &str) -> bool {
        let establishing = self.establishing.lock().expect("not poisoned");
        establishing.0.contains(group) && establishing.1.is_some_and(|until| Instant::now() < until)
    }

    fn client(&self) -> kube::Client {
        self.cluster.client.clone()
    }

    async fn discover(
        &self,
        reference: &ObjectRef,
        source: &str,
    ) -> Result<(ApiResource, ApiCapabilities), ProviderError> {
        let gvk = reference.gvk();
        if let Some(found) = self.discovered.lock().expect("not poisoned").get(&gvk) {
            return Ok(found.clone());
        }
        let found = loop {
            let found = kube::discovery::pinned_kind(&self.client(), &gvk).await;
            // A CRD `Established` a moment ago may not be served by discovery yet (the API
            // server's handler for it comes up a little later): asked again, as kubectl does.
            let not_served_yet = matches!(&found, Err(kube::Error::Discovery(_)))
                || matches!(&found, Err(kube::Error::Api(status)) if status.code == 404);
            if not_served_yet && self.served_soon(&gvk.group) {
                tokio::time::sleep(POLL).await;
                continue;
            }
            break found;
        };
        let found = found.map_err(|e| match &e {
            kube::Error::Discovery(_) => failed(
                format!(
                    "{source}: the cluster `{}` has no kind {} in {} (is its CRD applied?)",
                    self.cluster.name, reference.kind, reference.api_version
                ),
                Retry::Retryable,
            ),
            kube::Error::Api(status) if status.code == 404 => failed(
                format!(
                    "{source}: the cluster `{}` does not serve {} (is its CRD applied?)",
                    self.cluster.name, reference.api_version
                ),
                Retry::Retryable,
            ),
            _ => self
                .cluster
                .error(&format!("{source}: discovering {}", reference.kind), &e),
        })?;
        self.discovered
            .lock()
            .expect("not poisoned")
            .insert(gvk, found.clone());
        Ok(found)
    }

    fn api(&self, resource: &ApiResource, namespaced: bool) -> Api<DynamicObject> {
        if namespaced {
            Api::namespaced_with(self.client(), self.namespace, resource)
        } else {
            Api::all_with(self.client(), resource)
        }
    }

    fn api_for(&self, reference: &ObjectRef, resource: &ApiResource) -> Api<DynamicObject> {
        match &reference.namespace {
            Some(ns) => Api::namespaced_with(self.client(), ns, resource),
            None => Api::all_with(self.client(), resource),
        }
    }

    /// Checks and places one manifest object.
    async fn prepare(&self, manifest: &Manifest) -> Result<Prepared, ProviderError> {
        let source = manifest.source.as_str();
        let mut object = manifest.object.clone();
        let text = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let (Some(api_version), Some(kind), Some(name)) =
            (text("/apiVersion"), text("/kind"), text("/metadata/name"))
        else {
            return Err(ProviderError::Config(format!(
                "{source}: an object needs apiVersion, kind and metadata.name"
            )));
        };
        let written_namespace = text("/metadata/namespace");
        let mut reference = ObjectRef {
            api_version,
            kind,
            namespace: None,
            name,
        };
        let (resource, caps) = self.discover(&reference, source).await?;
        match caps.scope {
            Scope::Namespaced => {
                if let Some(ns) = written_namespace.filter(|ns| ns != self.namespace) {
                    return Err(failed(
                        format!(
                            "{source}: {reference} names namespace `{ns}`; an environment's \
                             objects go in its own namespace `{}` (remove `metadata.namespace`)",
                            self.namespace
                        ),
                        Retry::Terminal,
                    ));
                }
                reference.namespace = Some(self.namespace.to_string());
                object["metadata"]["namespace"] = json!(self.namespace);
            }
            Scope::Cluster => {
                if !self
                    .cluster
                    .config
                    .allows_cluster_scoped(&reference.api_version, &reference.kind)
                {
                    return Err(failed(
                        format!(
                            "{source}: {reference} is cluster-scoped, and the cluster `{}` does \
                             not allow manifests to create a {} (its `cluster_scoped` setting \
                             in [kubernetes.{}] lists the kinds that may)",
                            self.cluster.name, reference.kind, self.cluster.name
                        ),
                        Retry::Terminal,
                    ));
                }
                if let Some(map) = object["metadata"].as_object_mut() {
                    map.remove("namespace");
                }
            }
        }
        let labels = &mut object["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        for (key, value) in self.provider.labels(&self.ctx) {
            labels[key] = json!(value);
        }
        Ok(Prepared {
            reference,
            source: source.to_string(),
            resource,
            object,
        })
    }

    /// Refuses to touch an existing object that this resource does not own; says whether
    /// there is one.
    async fn check_owner(&self, prepared: &Prepared) -> Result<Found, ProviderError> {
        let api = self.api_for(&prepared.reference, &prepared.resource);
        let existing = api.get_opt(&prepared.reference.name).await.map_err(|e| {
            self.cluster.error(
                &format!("{}: reading {}", prepared.source, prepared.reference),
                &e,
            )
        })?;
        if let Some(existing) = existing {
            let existing = serde_json::to_value(existing).unwrap_or(Value::Null);
            if !self.provider.owns(&self.ctx, &existing) {
                let owner = existing
                    .pointer(&format!(
                        "/metadata/labels/{}",
                        LABEL_ENVIRONMENT.replace('/', "~1")
                    ))
                    .and_then(Value::as_str)
                    .map(|env| format!("environment `{env}`"))
                    .unwrap_or_else(|| "something other than Slipway".into());
                return Err(failed(
                    format!(
                        "{}: the cluster-scoped {} already exists and belongs to {owner}; a \
                         cluster-scoped object belongs to one environment",
                        prepared.source, prepared.reference
                    ),
                    Retry::Terminal,
                ));
            }
            return Ok(Found::Ours);
        }
        Ok(Found::Absent)
    }

    /// Applies a cluster-scoped object: one nobody has is created, one this resource owns
    /// is applied. Two environments naming the same object at once both find it absent;
    /// a server-side apply would then let the second relabel the first's object as its own
    /// (and have its objects, or a namespace, handed over), so it is created by a POST,
    /// which the server refuses when the name was taken meanwhile, and whose it is is read
    /// again.
    async fn send_cluster_scoped(&self, prepared: &Prepared) -> Result<Value, ProviderError> {
        let api = self.api_for(&prepared.reference, &prepared.resource);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let what = format!("{}: creating {}", prepared.source, prepared.reference);
        for _ in 0..CLAIM_TRIES {
            match self.check_owner(prepared).await? {
                Found::Ours => match prepared.apply_with(&api, &params).await {
                    Ok(applied) => return Ok(serde_json::to_value(applied).unwrap_or(Value::Null)),
                    // Replaced: deleted here, and created again by the next turn (never
                    // applied to a name left free meanwhile, as `send` would).
                    Err(e) if is_immutable(&e) => {
                        tracing::info!(object = %prepared.reference, "an immutable field changed: replacing");
                        self.delete_and_wait(&prepared.reference, &prepared.resource)
                            .await?;
                    }
                    Err(e) => {
                        let applying =
                            format!("{}: applying {}", prepared.source, prepared.reference);
                        return Err(self.cluster.error(&applying, &e));
                    }
                },
                Found::Absent => {
                    if let Some(created) = self.create(&api, &prepared.object, &what).await? {
                        return Ok(created);
                    }
                }
            }
        }
        Err(failed(
            format!("{what}: the object came and went while it was being created"),
            Retry::Retryable,
        ))
    }

    /// Creates `object` through `api` (a POST), or `None` when the server says it exists.
    /// What the POST set is then handed to this field manager's server-side apply: a POST
    /// records it as owned by an update, which the next apply does not take back, so a
    /// field later removed from the manifests would stay.
    async fn create(
        &self,
        api: &Api<DynamicObject>,
        object: &Value,
        what: &str,
    ) -> Result<Option<Value>, ProviderError> {
        let typed: DynamicObject = serde_json::from_value(object.clone())
            .map_err(|e| ProviderError::Config(format!("{what}: {e}")))?;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let created = match api.create(&params, &typed).await {
            Ok(created) => serde_json::to_value(created).unwrap_or(Value::Null),
            Err(e) if api_code(&e) == Some(409) => return Ok(None),
            Err(e) => return Err(self.cluster.error(what, &e)),
        };
        let name = typed.metadata.name.as_deref().unwrap_or_default();
        // On the version read only (a merge patch naming it): a change since (a CRD's status,
        // which its controller writes at once) is read, and the hand-over made again.
        let mut current = created;
        for _ in 0..HAND_OVER_TRIES {
            let Some(handed) = managed_by_apply(&current) else {
                return Ok(Some(current));
            };
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&handed))
                .await
            {
                Ok(patched) => {
                    return Ok(Some(serde_json::to_value(patched).unwrap_or(Value::Null)));
                }
                Err(e) if api_code(&e) == Some(409) => match api.get_opt(name).await {
                    Ok(Some(fresh)) => current = serde_json::to_value(fresh).unwrap_or(Value::Null),
                    _ => break,
                },
                Err(e) => {
                    tracing::warn!(object = what, error = %e, "created, its fields left owned by an update");
                    break;
                }
            }
        }
        Ok(Some(current))
    }

    async fn ensure_namespace(&self) -> Result<(), ProviderError> {
        let resource = ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&());
        let api: Api<DynamicObject> = Api::all_with(self.client(), &resource);
        let what = format!("namespace `{}`", self.namespace);
        let mut object = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.namespace, "labels": {}},
        });
        for (key, value) in self.provider.labels(&self.ctx) {
            object["metadata"]["labels"][key] = json!(value);
        }
        let deadline = Instant::now() + DELETE_WAIT;
        let mut created = 0;
        loop {
            let existing = api
                .get_opt(self.namespace)
                .await
                .map_err(|e| self.cluster.error(&format!("reading {what}"), &e))?;
            // Made by a POST, refused when another environment made it meanwhile (see
            // `send_cluster_scoped`): then read again, to say whose it is.
            let Some(existing) = existing else {
                created += 1;
                let creating = format!("creating {what}");
                if self.create(&api, &object, &creating).await?.is_some() {
                    return Ok(());
                }
                if created == CLAIM_TRIES {
                    return Err(failed(
                        format!("{creating}: it came and went while it was being created"),
                        Retry::Retryable,
                    ));
                }
                continue;
            };
            let existing = serde_json::to_value(existing).unwrap_or(Value::Null);
            if !self.provider.owns(&self.ctx, &existing) {
                return Err(failed(
                    format!(
                        "{what} already exists and is not this environment's (it lacks the \
                         labels {LABEL_INSTANCE}, {LABEL_ENVIRONMENT}={}, {LABEL_RESOURCE}={}); \
                         choose another `namespace:`",
                        self.ctx.environment, self.ctx.resource
                    ),
                    Retry::Terminal,
                ));
            }
            if existing.pointer("/metadata/deletionTimestamp").is_none() {
                break;
            }
            if Instant::now() > deadline {
                return Err(failed(
                    format!("{what} is still being deleted after {DELETE_WAIT:?}"),
                    Retry::Retryable,
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        api.patch(
            self.namespace,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|e| self.cluster.error(&format!("applying {what}"), &e))?;
        Ok(())
    }

    /// Server-side applies one object; one the API server refuses to change in place
    /// (an immutable field) is deleted and applied again.
    async fn send(&self, prepared: &Prepared) -> Result<Value, ProviderError> {
        let api = self.api_for(&prepared.reference, &prepared.resource);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let what = format!("{}: applying {}", prepared.source, prepared.reference);
        match prepared.apply_with(&api, &params).await {
            Ok(applied) => Ok(serde_json::to_value(applied).unwrap_or(Value::Null)),
            Err(e) if is_immutable(&e) => {
                tracing::info!(object = %prepared.reference, "an immutable field changed: replacing");
                self.delete_and_wait(&prepared.reference, &prepared.resource)
                    .await?;
                let applied = prepared
                    .apply_with(&api, &params)
                    .await
                    .map_err(|e| self.cluster.error(&what, &e))?;
                Ok(serde_json::to_value(applied).unwrap_or(Value::Null))
            }
            Err(e) => Err(self.cluster.error(&what, &e)),
        }
    }

    async fn delete_and_wait(
        &self,
        reference: &ObjectRef,
        resource: &ApiResource,
    ) -> Result<(), ProviderError> {
        let api = self.api_for(reference, resource);
        let what = format!("deleting {reference}");
        match api
            .delete(&reference.name, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(e) if api_code(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(self.cluster.error(&what, &e)),
        }
        let deadline = Instant::now() + DELETE_WAIT;
        loop {
            match api.get_opt(&reference.name).await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) if Instant::now() > deadline => {
                    return Err(failed(
                        format!("{reference} is still being deleted after {DELETE_WAIT:?}"),
                        Retry::Retryable,
                    ));
                }
                Ok(Some(_)) => tokio::time::sleep(POLL).await,
                Err(e) => return Err(self.cluster.error(&what, &e)),
            }
        }
    }

    async fn wait_established(&self, prepared: &Prepared) -> Result<(), ProviderError> {
        let api = self.api_for(&prepared.reference, &prepared.resource);
        let deadline = Instant::now() + ESTABLISH_WAIT;
        loop {
            let crd = api.get(&prepared.reference.name).await.map_err(|e| {
                self.cluster.error(
                    &format!("{}: reading {}", prepared.source, prepared.reference),
                    &e,
                )
            })?;
            let crd = serde_json::to_value(crd).unwrap_or(Value::Null);
            let established = crd
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|conditions| {
                    conditions.iter().any(|c| {
                        c.get("type").and_then(Value::as_str) == Some("Established")
                            && c.get("status").and_then(Value::as_str) == Some("True")
                    })
                });
            if established {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(failed(
                    format!(
                        "{}: {} is not established after {ESTABLISH_WAIT:?}",
                        prepared.source, prepared.reference
                    ),
                    Retry::Retryable,
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Applies the whole set in order, then prunes what left it. Returns the inventory.
    async fn apply_all(
        &self,
        config: &Config,
        previous: Option<&Inventory>,
    ) -> Result<Vec<ObjectRef>, ProviderError> {
        self.ensure_namespace().await?;
        let (crds, rest): (Vec<&Manifest>, Vec<&Manifest>) =
            config.manifests.iter().partition(|m| is_crd(&m.object));
        let mut applied = Vec::new();
        for manifest in crds {
            let prepared = self.prepare(manifest).await?;
            self.send_cluster_scoped(&prepared).await?;
            self.wait_established(&prepared).await?;
            if let Some(group) = manifest
                .object
                .pointer("/spec/group")
                .and_then(Value::as_str)
            {
                let mut establishing = self.establishing.lock().expect("not poisoned");
                establishing.0.insert(group.to_owned());
                establishing.1 = Some(Instant::now() + ESTABLISH_WAIT);
            }
            applied.push(prepared);
        }
        // New kinds are served now: ask discovery again.
        self.discovered.lock().expect("not poisoned").clear();
        let mut prepared = Vec::new();
        for manifest in rest {
            prepared.push(self.prepare(manifest).await?);
        }
        prepared.sort_by_key(|p| rank(&p.reference.kind));
        // One kind's objects (one rank) at a time, in order; within it, several requests in
        // flight, as nothing of one rank waits for another of the same.
        let mut rest = prepared.into_iter().peekable();
        while let Some(first) = rest.next() {
            let level = rank(&first.reference.kind);
            let mut group = vec![first];
            while let Some(next) = rest.next_if(|p| rank(&p.reference.kind) == level) {
                group.push(next);
            }
            stream::iter(group.iter().map(|object| async move {
                if object.reference.namespace.is_none() {
                    self.send_cluster_scoped(object).await
                } else {
                    self.send(object).await
                }
            }))
            .buffered(IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?;
            applied.extend(group);
        }
        let mut seen = BTreeSet::new();
        for object in &applied {
            if !seen.insert(object.reference.clone()) {
                return Err(ProviderError::Config(format!(
                    "{}: {} is written twice in the manifests",
                    object.source, object.reference
                )));
            }
        }
        self.prune(&applied, previous).await?;
        Ok(applied.into_iter().map(|p| p.reference).collect())
    }

    /// Deletes what this resource owns that is not in `keep`: the previous inventory's
    /// objects, and objects carrying its labels (of the kinds either set holds) that an
    /// interrupted apply left. Dependents go before what they depend on.
    async fn prune(
        &self,
        keep: &[Prepared],
        previous: Option<&Inventory>,
    ) -> Result<(), ProviderError> {
        let kept: BTreeSet<&ObjectRef> = keep.iter().map(|p| &p.reference).collect();
        let mut candidates: BTreeSet<ObjectRef> = previous
            .map(|inv| inv.objects.iter().cloned().collect())
            .unwrap_or_default();
        // The second record: objects labelled as this resource's, of every kind in play.
        let mut kinds: BTreeMap<(String, String), ObjectRef> = BTreeMap::new();
        for reference in candidates.iter().chain(kept.iter().copied()) {
            kinds
                .entry((reference.api_version.clone(), reference.kind.clone()))
                .or_insert_with(|| reference.clone());
        }
        let selector = self.provider.selector(&self.ctx);
        for sample in kinds.values() {
            let Ok((resource, caps)) = self.discover(sample, "prune").await else {
                continue; // A kind no longer served has nothing left to list.
            };
            let namespaced = caps.scope == Scope::Namespaced;
            let list = self
                .api(&resource, namespaced)
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| self.cluster.error(&format!("listing {}", sample.kind), &e))?;
            for item in list.items {
                let Some(name) = item.metadata.name.clone() else {
                    continue;
                };
                candidates.insert(ObjectRef {
                    api_version: sample.api_version.clone(),
                    kind: sample.kind.clone(),
                    namespace: namespaced.then(|| self.namespace.to_string()),
                    name,
                });
            }
        }
        let mut gone: Vec<ObjectRef> = candidates
            .into_iter()
            .filter(|c| !kept.contains(c))
            .collect();
        gone.sort_by_key(|r| std::cmp::Reverse(rank(&r.kind)));
        for reference in gone {
            let Ok((resource, _)) = self.discover(&reference, "prune").await else {
                continue;
            };
            let api = self.api_for(&reference, &resource);
            match api.get_opt(&reference.name).await {
                Ok(Some(live)) => {
                    let live = serde_json::to_value(live).unwrap_or(Value::Null);
                    if !self.provider.owns(&self.ctx, &live) {
                        continue; // Someone else's now: forgotten, not deleted.
                    }
                }
                Ok(None) => continue,
                Err(e) => {
                    return Err(self.cluster.error(&format!("reading {reference}"), &e));
                }
            }
            match api
                .delete(&reference.name, &DeleteParams::background())
                .await
            {
                Ok(_) => tracing::info!(object = %reference, "pruned"),
                Err(e) if api_code(&e) == Some(404) => {}
                Err(e) => {
                    return Err(self.cluster.error(&format!("pruning {reference}"), &e));
                }
            }
        }
        Ok(())
    }

    /// The health of every object of `inventory`: the first not yet current, if any.
    async fn unhealthy(
        &self,
        inventory: &Inventory,
    ) -> Result<Option<(ObjectRef, Health)>, ProviderError> {
        let healths: Vec<(ObjectRef, Health)> =
            stream::iter(inventory.objects.iter().map(|reference| async move {
                let (resource, _) = self.discover(reference, "health").await?;
                let live = self
                    .api_for(reference, &resource)
                    .get_opt(&reference.name)
                    .await
                    .map_err(|e| self.cluster.error(&format!("reading {reference}"), &e))?;
                let health = match live {
                    None => Health::InProgress("it does not exist".into()),
                    Some(live) => health::of(
                        &reference.kind,
                        &serde_json::to_value(live).unwrap_or(Value::Null),
                    ),
                };
                Ok::<_, ProviderError>((reference.clone(), health))
            }))
            .buffered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(healths
            .into_iter()
            .find(|(_, health)| *health != Health::Current))
    }

    /// A server-side dry run of one manifest object against its live object.
    async fn dry_run(&self, manifest: &Manifest) -> Result<DryRun, ProviderError> {
        let object = &manifest.object;
        let text = |p: &str| {
            object
                .pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let probe = ObjectRef {
            api_version: text("/apiVersion"),
            kind: text("/kind"),
            namespace: None,
            name: text("/metadata/name"),
        };
        if self.discover(&probe, &manifest.source).await.is_err() {
            return Ok(DryRun::NotServed(probe));
        }
        let prepared = self.prepare(manifest).await?;
        let api = self.api_for(&prepared.reference, &prepared.resource);
        let what = format!("{}: dry-running {}", prepared.source, prepared.reference);
        let Some(live) = api
            .get_opt(&prepared.reference.name)
            .await
            .map_err(|e| self.cluster.error(&what, &e))?
        else {
            return Ok(DryRun::Missing(prepared));
        };
        let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
        match prepared.apply_with(&api, &params).await {
            Ok(would) => Ok(DryRun::Compared {
                live: comparable(serde_json::to_value(live).unwrap_or(Value::Null)),
                would: comparable(serde_json::to_value(would).unwrap_or(Value::Null)),
                prepared,
            }),
            Err(e) if is_immutable(&e) => {
                let field = match &e {
                    kube::Error::Api(status) => {
                        immutable_field(&status.message).map(str::to_string)
                    }
                    _ => None,
                };
                Ok(DryRun::Immutable { prepared, field })
            }
            Err(e) => Err(self.cluster.error(&what, &e)),
        }
    }

    /// [`Run::dry_run`] of every object of `config`, several in flight, in their order.
    async fn dry_run_all(&self, config: &Config) -> Result<Vec<DryRun>, ProviderError> {
        stream::iter(config.manifests.iter().map(|m| self.dry_run(m)))
            .buffered(IN_FLIGHT)
            .try_collect()
            .await
    }

    /// What differs between the live objects and what applying `config` again would make
    /// of them (a server-side dry run), object by object.
    async fn drift(&self, config: &Config) -> Result<Observation, ProviderError> {
        let namespaces = Api::<DynamicObject>::all_with(
            self.client(),
            &ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
        );
        if namespaces
            .get_opt(self.namespace)
            .await
            .map_err(|e| self.cluster.error("reading the namespace", &e))?
            .is_none()
        {
            return Ok(Observation::Missing {
                reason: format!("namespace `{}` is gone", self.namespace),
            });
        }
        let mut reasons = Vec::new();
        for result in self.dry_run_all(config).await? {
            match result {
                DryRun::NotServed(probe) => {
                    return Ok(Observation::Missing {
                        reason: format!("{} is no longer served by the cluster", probe.kind),
                    });
                }
                DryRun::Missing(prepared) => {
                    return Ok(Observation::Missing {
                        reason: format!("{} is gone", prepared.reference),
                    });
                }
                DryRun::Immutable { prepared, .. } => {
                    reasons.push(format!(
                        "{}: an immutable field differs",
                        prepared.reference
                    ));
                }
                DryRun::Compared {
                    prepared,
                    live,
                    would,
                } => {
                    if let Some(path) = first_difference(&live, &would) {
                        reasons.push(format!(
                            "{}: {path} changed outside Slipway",
                            prepared.reference
                        ));
                    }
                }
            }
        }
        Ok(if reasons.is_empty() {
            Observation::InSync
        } else {
            Observation::Drifted {
                reason: reasons.join("; "),
            }
        })
    }

    /// What updating to `config` would do to each object: a server-side dry run of each
    /// against its live object (so defaults and other managers' fields are no change), the
    /// objects that would be pruned, and those an immutable field makes replace.
    async fn preview(
        &self,
        config: &Config,
        previous: &Inventory,
    ) -> Result<Vec<ObjectChange>, ProviderError> {
        let mut out = Vec::new();
        let mut desired = BTreeSet::new();
        for (manifest, result) in config.manifests.iter().zip(self.dry_run_all(config).await?) {
            let object =
                |reference: &ObjectRef, action, diff, reason: Option<String>| ObjectChange {
                    object: reference.to_string(),
                    source: Some(manifest.source.clone()),
                    action,
                    diff,
                    reason,
                };
            match result {
                DryRun::NotServed(probe) => out.push(object(
                    &probe,
                    Action::Create,
                    Vec::new(),
                    Some("its kind is served once its CRD is applied".into()),
                )),
                DryRun::Missing(prepared) => {
                    out.push(object(
                        &prepared.reference,
                        Action::Create,
                        Vec::new(),
                        None,
                    ));
                    desired.insert(prepared.reference);
                }
                DryRun::Immutable { prepared, field } => {
                    let why = match field {
                        Some(field) => format!("`{field}` cannot change in place: replaced"),
                        None => "an immutable field changes: replaced".into(),
                    };
                    out.push(object(
                        &prepared.reference,
                        Action::Replace,
                        Vec::new(),
                        Some(why),
                    ));
                    desired.insert(prepared.reference);
                }
                DryRun::Compared {
                    prepared,
                    live,
                    would,
                } => {
                    let mut diff = Vec::new();
                    differences(&live, &would, String::new(), &mut diff);
                    if prepared.reference.kind == "Secret" {
                        for field in &mut diff {
                            for value in [&mut field.before, &mut field.after].into_iter().flatten()
                            {
                                *value = json!("<redacted>");
                            }
                        }
                    }
                    if !diff.is_empty() {
                        out.push(object(&prepared.reference, Action::Update, diff, None));
                    }
                    desired.insert(prepared.reference);
                }
            }
        }
        for reference in previous.objects.iter().filter(|r| !desired.contains(*r)) {
            out.push(ObjectChange {
                object: reference.to_string(),
                source: None,
                action: Action::Delete,
                diff: Vec::new(),
                reason: None,
            });
        }
        Ok(out)
    }

    /// Deletes the inventory's cluster-scoped objects, then the namespace, and waits for it.
    async fn destroy(&self, inventory: Option<&Inventory>) -> Result<(), ProviderError> {
        let mut cluster_scoped: Vec<ObjectRef> = inventory
            .map(|inv| {
                inv.objects
                    .iter()
                    .filter(|o| o.namespace.is_none())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if inventory.is_none() {
            // Nothing recorded: what an interrupted create left carries this resource's
            // labels (CRDs, the only cluster-scoped kind Slipway knows the group of).
            let crd = ObjectRef {
                api_version: "apiextensions.k8s.io/v1".into(),
                kind: "CustomResourceDefinition".into(),
                namespace: None,
                name: String::new(),
            };
            if let Ok((resource, _)) = self.discover(&crd, "destroy").await {
                let list = self
                    .api(&resource, false)
                    .list(&ListParams::default().labels(&self.provider.selector(&self.ctx)))
                    .await
                    .map_err(|e| self.cluster.error("listing CRDs", &e))?;
                for item in list.items {
                    if let Some(name) = item.metadata.name {
                        cluster_scoped.push(ObjectRef {
                            name,
                            ..crd.clone()
                        });
                    }
                }
            }
        }
        cluster_scoped.sort_by_key(|r| std::cmp::Reverse(rank(&r.kind)));
        for reference in &cluster_scoped {
            let Ok((resource, _)) = self.discover(reference, "destroy").await else {
                continue;
            };
            let api = self.api_for(reference, &resource);
            if let Some(live) = api
                .get_opt(&reference.name)
                .await
                .map_err(|e| self.cluster.error(&format!("reading {reference}"), &e))?
                && self.provider.owns(
                    &self.ctx,
                    &serde_json::to_value(live).unwrap_or(Value::Null),
                )
            {
                self.delete_and_wait(reference, &resource).await?;
            }
        }
        if self.namespace.is_empty() {
            return Ok(()); // An interrupted create that had not made its namespace yet.
        }
        let namespace = ObjectRef {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: None,
            name: self.namespace.to_string(),
        };
        let resource = ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&());
        let api: Api<DynamicObject> = Api::all_with(self.client(), &resource);
        match api
            .get_opt(self.namespace)
            .await
            .map_err(|e| self.cluster.error("reading the namespace", &e))?
        {
            Some(live)
                if self.provider.owns(
                    &self.ctx,
                    &serde_json::to_value(&live).unwrap_or(Value::Null),
                ) =>
            {
                self.delete_and_wait(&namespace, &resource).await
            }
            _ => Ok(()),
        }
    }
}

fn is_crd(object: &Value) -> bool {
    object.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition")
        && object
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| v.starts_with("apiextensions.k8s.io/"))
}

/// An object without what the server changes on every write: comparing two of these shows
/// only what someone changed.
fn comparable(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "managedFields",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "uid",
        ] {
            meta.remove(key);
        }
    }
    object
}

/// The field an API server's "field is immutable" message names: `spec.template` of
/// `Job.batch "x" is invalid: spec.template: Invalid value: {...}: field is immutable`.
fn immutable_field(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once(" is invalid: ")?;
    let field = rest.split(':').next()?.trim();
    (!field.is_empty() && !field.contains(' ')).then_some(field)
}

/// Every difference between `a` and `b`, by path (`spec.replicas`, `spec.containers[0].image`):
/// what a plan shows per object, and the first of which names drift.
fn differences(a: &Value, b: &Value, path: String, out: &mut Vec<FieldChange>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => differences(p, q, join(k), out),
                    (p, q) => out.push(FieldChange {
                        path: join(k),
                        before: p.cloned(),
                        after: q.cloned(),
                        forces_replace: false,
                    }),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, format!("{path}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => out.push(FieldChange {
            path: if path.is_empty() { ".".into() } else { path },
            before: Some(a.clone()),
            after: Some(b.clone()),
            forces_replace: false,
        }),
    }
}

/// The path of the first difference between `a` and `b`, if any.
fn first_difference(a: &Value, b: &Value) -> Option<String> {
    let mut all = Vec::new();
    differences(a, b, String::new(), &mut all);
    all.into_iter().next().map(|change| change.path)
}

impl Provider for Arc<KubernetesProvider> {
    type Config = Config;
    const TYPE: &'static str = TYPE;

    fn create(&self, ctx: ResourceContext<'_>, config: &Config) -> Result<Applied, ProviderError> {
        self.apply(ctx, config, None)
    }

    fn update(
        &self,
        ctx: ResourceContext<'_>,
        config: &Config,
        live: &Value,
    ) -> Result<Applied, ProviderError> {
        let previous = parse_inventory(live)?;
        if previous.cluster != config.cluster {
            // Another cluster is a new set; the catalogue replaces for it, but an update
            // asked all the same gets the same result.
            Provider::delete(self, ctx, Some(live))?;
            return self.apply(ctx, config, None);
        }
        self.apply(ctx, config, Some(&previous))
    }

    fn delete(&self, ctx: ResourceContext<'_>, live: Option<&Value>) -> Result<(), ProviderError> {
        match live {
            Some(live) => {
                let inventory = parse_inventory(live)?;
                let cluster = self.cluster(&inventory.cluster)?;
                let run = Run::new(self, &cluster, ctx, &inventory.namespace);
                self.block_on(run.destroy(Some(&inventory)))
            }
            None => {
                // An interrupted create: find what it left by its labels, on every cluster.
                for name in self.clusters.keys() {
                    let cluster = self.cluster(name)?;
                    let resource = ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&());
                    let api: Api<DynamicObject> = Api::all_with(cluster.client.clone(), &resource);
                    let namespaces = self
                        .block_on(api.list(&ListParams::default().labels(&self.selector(&ctx))))
                        .map_err(|e| cluster.error("listing namespaces", &e))?;
                    let mut names: Vec<String> = namespaces
                        .items
                        .into_iter()
                        .filter_map(|n| n.metadata.name)
                        .collect();
                    if names.is_empty() {
                        names.push(String::new());
                    }
                    for namespace in names {
                        let run = Run::new(self, &cluster, ctx, &namespace);
                        self.block_on(run.destroy(None))?;
                    }
                }
                Ok(())
            }
        }
    }

    fn observe(
        &self,
        ctx: ResourceContext<'_>,
        config: &Config,
        live: &Value,
    ) -> Result<Observation, ProviderError> {
        let inventory = parse_inventory(live)?;
        let cluster = self.cluster(&inventory.cluster)?;
        let run = Run::new(self, &cluster, ctx, &inventory.namespace);
        self.block_on(run.drift(config))
    }

    fn preview(
        &self,
        ctx: ResourceContext<'_>,
        config: &Config,
        live: &Value,
    ) -> Result<Option<Vec<ObjectChange>>, ProviderError> {
        let inventory = parse_inventory(live)?;
        if inventory.cluster != config.cluster {
            return Ok(None); // Another cluster: the whole set is replaced.
        }
        let cluster = self.cluster(&inventory.cluster)?;
        let namespace = namespace_of(&ctx, config)?;
        if namespace != inventory.namespace {
            return Ok(None);
        }
        let run = Run::new(self, &cluster, ctx, &inventory.namespace);
        self.block_on(run.preview(config, &inventory)).map(Some)
    }

    fn wait_ready(
        &self,
        ctx: ResourceContext<'_>,
        config: &Config,
        applied: &Applied,
        deadline: Instant,
    ) -> Result<(), ProviderError> {
        let inventory = parse_inventory(&applied.live)?;
        let deadline = ready_deadline(config.wait.as_deref(), deadline, Instant::now());
        let cluster = self.cluster(&inventory.cluster)?;
        let run = Run::new(self, &cluster, ctx, &inventory.namespace);
        self.block_on(async {
            loop {
                let Some((reference, health)) = run.unhealthy(&inventory).await? else {
                    return Ok(());
                };
                match health {
                    Health::Failed(why) => {
                        return Err(failed(
                            format!("degraded: {reference}: {why}"),
                            Retry::Terminal,
                        ));
                    }
                    Health::InProgress(why) if Instant::now() >= deadline => {
                        return Err(failed(
                            format!("degraded: {reference} is not healthy in time: {why}"),
                            Retry::Retryable,
                        ));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_wait_the_repository_asks_for_is_cut_to_the_most_there_is() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(60);
        assert_eq!(ready_deadline(None, deadline, now), deadline);
        assert_eq!(
            ready_deadline(Some("2m"), deadline, now),
            now + Duration::from_secs(120),
            "longer than the apply's deadline, as asked"
        );
        assert_eq!(
            ready_deadline(Some("36500d"), deadline, now),
            now + MAX_WAIT
        );
    }

    #[test]
    fn an_immutable_field_is_named_from_the_servers_message() {
        let message = r#"Job.batch "once" is invalid: spec.template: Invalid value: {"labels":{"a":"b"}}: field is immutable"#;
        assert_eq!(immutable_field(message), Some("spec.template"));
        assert_eq!(immutable_field("something else"), None);
    }

    #[test]
    fn kinds_go_in_helm_order_with_custom_resources_last() {
        let mut kinds = vec!["Widget", "Deployment", "Service", "ConfigMap", "Namespace"];
        kinds.sort_by_key(|k| rank(k));
        assert_eq!(
            kinds,
            ["Namespace", "ConfigMap", "Service", "Deployment", "Widget"]
        );
    }

    #[test]
    fn a_difference_is_named_by_its_path_ignoring_server_fields() {
        let live = comparable(json!({"metadata": {"name": "a", "resourceVersion": "1"},
            "spec": {"replicas": 3, "template": {"x": [1, 2]}}, "status": {"ready": 1}}));
        let would = comparable(json!({"metadata": {"name": "a", "resourceVersion": "2"},
            "spec": {"replicas": 1, "template": {"x": [1, 2]}}}));
        assert_eq!(
            first_difference(&live, &would).as_deref(),
            Some("spec.replicas")
        );
        assert_eq!(first_difference(&live, &live), None);
    }
}
