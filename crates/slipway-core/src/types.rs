//! The resource type catalogue: for each `type:`, its fields, which changes force a
//! replacement, and which outputs other resources may reference.
//!
//! The parser, the reference checker, the planner and `slipway schema` all read this one
//! table, so they cannot disagree. Each type also declares its [`Capabilities`]: the engine,
//! the server and the CLI ask those (does it hold data, expose a port, write logs?) and never
//! compare type names. Adding a resource type is one entry here plus its provider (see
//! "Adding a resource type" in ARCHITECTURE.md).

use serde_json::Value as Json;

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A string; may contain references.
    Str,
    /// `true` or `false`.
    Bool,
    /// A duration string: `30s`, `5m`, `72h`, `1h30m`.
    Duration,
    /// A list of strings (numbers are accepted and written as strings).
    StrList,
    /// A mapping of names to strings (numbers and booleans are written as strings).
    StrMap,
    /// A list of port names, each a DNS-label-like identifier.
    PortNames,
    /// The name of one of the resource's own ports.
    PortName,
    /// A health check: exactly one of `http: PATH`, `tcp: PORT`, `command: [..]`, with
    /// optional `port`, `interval`, `timeout`.
    Health,
    /// A path relative to the environment's directory (no `..`, not absolute).
    RelPath,
    /// A file mode in octal, as a string (`"0644"`).
    Mode,
    /// Any YAML value (passed through to an exec provider).
    Any,
    /// A list of SQL extension or identifier names.
    NameList,
    /// Kubernetes manifests: written as a list of files, folders or globs relative to the
    /// stack's folder; the loader replaces them with the objects those files hold (see
    /// `stack::manifests`).
    Manifests,
}

/// One field of a resource type.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The key in `slipway.yaml`.
    pub name: &'static str,
    /// What it holds.
    pub kind: FieldKind,
    /// Whether it must be present.
    pub required: bool,
    /// Whether changing it replaces the live object instead of updating it in place.
    pub replaces: bool,
    /// One line for the schema and `--help`.
    pub doc: &'static str,
}

/// What a resource makes available to others through `${resources.NAME.OUTPUT}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    /// Exactly these names.
    Fixed(&'static [&'static str]),
    /// `url` and `ports.P` for each declared port.
    Process,
    /// Whatever the program returns: not checked before apply.
    Any,
}

/// What a resource type can do beyond its fields. Code outside the catalogue and the type's
/// own provider asks these instead of comparing type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// This build has a provider for the type. A type without one is described here (for the
    /// schema and the docs) but refused at validation, rather than failing at apply.
    pub provided: bool,
    /// The live object holds data that a replacement destroys (a database): after a failure it
    /// is retried in place, and replacing or deleting it in a protected environment needs a
    /// person's confirmation.
    pub holds_data: bool,
    /// Where the resource's source is: when the files there change, the resource is replaced.
    pub source: SourceDir,
    /// The field naming the port served at the environment's preview URL. A resource that
    /// sets it runs in one of two instance slots, so that a new version can start beside the
    /// old one and take over once healthy (a blue/green replacement).
    pub expose: Option<&'static str>,
    /// Its provider writes the program's output to log files that `slipway logs` reads.
    pub logs: bool,
    /// A failed last run leaves stale output (a half-run migration) that running it again
    /// repairs: the plan calls the re-run drift rather than a failed apply.
    pub reruns_after_failure: bool,
    /// The live object lives on the machine that applied it (a process, a file), not on a
    /// server every node reaches (a database).
    pub node_bound: bool,
    /// It runs a program that stops while its environment sleeps (`sleep_after`) and starts
    /// again when it wakes; what it keeps (data, files, ports) stays.
    pub sleeps: bool,
}

/// Where in the repository a resource's source files are, for change detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDir {
    /// It runs no code from the repository.
    None,
    /// Everything under the stack's folder.
    Folder,
    /// Everything under the directory this field names, relative to the stack's folder (the
    /// folder itself when the field is absent).
    Field(&'static str),
}

impl Capabilities {
    /// None at all: what a type without a provider, or a name the catalogue does not know,
    /// can do.
    pub const NONE: Capabilities = Capabilities {
        provided: false,
        holds_data: false,
        source: SourceDir::None,
        expose: None,
        logs: false,
        reruns_after_failure: false,
        node_bound: false,
        sleeps: false,
    };

    /// A type with a provider and none of the optional capabilities; entries below start
    /// from it.
    const PROVIDED: Capabilities = Capabilities {
        provided: true,
        ..Capabilities::NONE
    };
}

/// One resource type.
#[derive(Debug, Clone, Copy)]
pub struct ResourceType {
    /// The `type:` value.
    pub name: &'static str,
    /// One line for the schema.
    pub doc: &'static str,
    /// Fields besides `type`, `depends_on` and `description`.
    pub fields: &'static [Field],
    /// Outputs.
    pub outputs: Outputs,
    /// Outputs that are secret and redacted wherever shown.
    pub secret_outputs: &'static [&'static str],
    /// What it can do.
    pub capabilities: Capabilities,
}

impl ResourceType {
    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Whether any change at all replaces the object (a process restarts, a job re-runs).
    pub fn always_replaces(&self) -> bool {
        self.fields.iter().all(|f| f.replaces)
    }

    /// Whether the live object holds data that a replacement destroys (a database): such
    /// objects are retried in place after a failure, and replacing or deleting them in a
    /// protected environment needs a person's confirmation.
    pub fn holds_data(&self) -> bool {
        self.capabilities.holds_data
    }

    /// The name of the port a resource of this type configured as `config` serves at the
    /// environment's preview URL, if it exposes one.
    pub fn exposed_port<'a>(&self, config: &'a Json) -> Option<&'a str> {
        config.get(self.capabilities.expose?)?.as_str()
    }

    /// Whether resources of this type may run in either of two instance slots (they may
    /// expose a port, and are then replaced side by side): deleting one removes both slots.
    pub fn has_instance_slots(&self) -> bool {
        self.capabilities.expose.is_some()
    }
}

/// Keys every resource may have, whatever its type.
pub const COMMON_FIELDS: &[&str] = &["type", "depends_on", "description"];

const fn f(
    name: &'static str,
    kind: FieldKind,
    required: bool,
    replaces: bool,
    doc: &'static str,
) -> Field {
    Field {
        name,
        kind,
        required,
        replaces,
        doc,
    }
}

use FieldKind::*;

const PROCESS: &[Field] = &[
    f(
        "command",
        StrList,
        true,
        true,
        "the command and its arguments, run in the environment's checkout",
    ),
    f("env", StrMap, false, true, "environment variables"),
    f(
        "ports",
        PortNames,
        false,
        true,
        "names of ports to allocate; `${ports.NAME}` gives the number",
    ),
    f(
        "health",
        Health,
        false,
        true,
        "how to tell the process is ready: http, tcp or command",
    ),
    f(
        "expose",
        PortName,
        false,
        true,
        "the port served at the environment's preview URL",
    ),
    f(
        "cwd",
        RelPath,
        false,
        true,
        "working directory, relative to the checkout",
    ),
    f(
        "stop_grace",
        Duration,
        false,
        true,
        "time between SIGTERM and SIGKILL when stopping (default 10s)",
    ),
    f(
        "ready_timeout",
        Duration,
        false,
        true,
        "how long the process may take to become healthy (default 60s)",
    ),
    f(
        "restart",
        Str,
        false,
        true,
        "always (default), on-failure or never",
    ),
];

const JOB: &[Field] = &[
    f(
        "command",
        StrList,
        true,
        true,
        "the command and its arguments, run in the environment's checkout",
    ),
    f("env", StrMap, false, true, "environment variables"),
    f(
        "cwd",
        RelPath,
        false,
        true,
        "working directory, relative to the checkout",
    ),
    f(
        "timeout",
        Duration,
        false,
        true,
        "how long the job may run (default 60s)",
    ),
];

const FILE: &[Field] = &[
    f(
        "path",
        RelPath,
        true,
        true,
        "where to write, relative to the environment's data directory",
    ),
    f("content", Str, true, false, "the file's content"),
    f(
        "mode",
        Mode,
        false,
        false,
        "permissions in octal, e.g. \"0644\" (the default)",
    ),
];

const EXEC: &[Field] = &[
    f(
        "program",
        StrList,
        true,
        true,
        "the provider program and its arguments (see docs/exec-protocol.md)",
    ),
    f(
        "config",
        Any,
        false,
        false,
        "passed to the program as `config`",
    ),
    f(
        "env",
        StrMap,
        false,
        false,
        "environment variables for the program",
    ),
    f(
        "timeout",
        Duration,
        false,
        false,
        "how long one operation may take (default 60s)",
    ),
];

const PG_DATABASE: &[Field] = &[
    f(
        "server",
        Str,
        false,
        true,
        "the [postgres.NAME] server of the engine configuration",
    ),
    f("template", Str, false, true, "a database to clone"),
    f(
        "strategy",
        Str,
        false,
        true,
        "how a template is cloned: `file_copy` (default; fastest for large templates) or `wal_log`",
    ),
    f("extensions", NameList, false, false, "extensions to create"),
];

const PG_ROLE: &[Field] = &[
    f(
        "server",
        Str,
        false,
        true,
        "the [postgres.NAME] server of the engine configuration",
    ),
    f(
        "login",
        Bool,
        false,
        false,
        "whether the role may log in (default true)",
    ),
];

const K8S: &[Field] = &[
    f(
        "cluster",
        Str,
        true,
        true,
        "the cluster, `[kubernetes.NAME]` in the engine config",
    ),
    f(
        "manifests",
        Manifests,
        true,
        false,
        "manifest files, folders or globs in the repository, applied as one set",
    ),
    f(
        "namespace",
        Str,
        false,
        true,
        "the environment's namespace (default: STACK-ENV), created and owned by Slipway",
    ),
    f(
        "wait",
        Duration,
        false,
        false,
        "how long the objects may take to become healthy (default: the engine's ready timeout)",
    ),
];

/// Every resource type `slipway.yaml` may use.
pub const TYPES: &[ResourceType] = &[
    ResourceType {
        name: "process",
        doc: "a supervised long-running command",
        fields: PROCESS,
        outputs: Outputs::Process,
        secret_outputs: &[],
        capabilities: Capabilities {
            source: SourceDir::Field("cwd"),
            expose: Some("expose"),
            logs: true,
            node_bound: true,
            sleeps: true,
            ..Capabilities::PROVIDED
        },
    },
    ResourceType {
        name: "job",
        doc: "a command run to completion; re-run when its inputs change",
        fields: JOB,
        outputs: Outputs::Fixed(&["exit_code"]),
        secret_outputs: &[],
        capabilities: Capabilities {
            source: SourceDir::Field("cwd"),
            logs: true,
            reruns_after_failure: true,
            // It leaves nothing on the node but its log: any replica may run it (under the
            // environment's lease, which bounds the run).
            node_bound: false,
            ..Capabilities::PROVIDED
        },
    },
    ResourceType {
        name: "file",
        doc: "a rendered file inside the environment's directory",
        fields: FILE,
        outputs: Outputs::Fixed(&["path"]),
        secret_outputs: &[],
        capabilities: Capabilities {
            node_bound: true,
            ..Capabilities::PROVIDED
        },
    },
    ResourceType {
        name: "exec",
        doc: "an external provider speaking JSON on stdin/stdout",
        fields: EXEC,
        outputs: Outputs::Any,
        secret_outputs: &[],
        capabilities: Capabilities {
            source: SourceDir::Folder,
            logs: true,
            node_bound: true,
            ..Capabilities::PROVIDED
        },
    },
    ResourceType {
        name: "postgres.database",
        doc: "a PostgreSQL database and owner role per environment",
        fields: PG_DATABASE,
        outputs: Outputs::Fixed(&["url", "host", "port", "database", "user", "password"]),
        secret_outputs: &["password", "url"],
        capabilities: Capabilities {
            holds_data: true,
            ..Capabilities::PROVIDED
        },
    },
    ResourceType {
        name: "postgres.role",
        doc: "a PostgreSQL role with a generated password",
        fields: PG_ROLE,
        outputs: Outputs::Fixed(&["user", "password", "host", "port"]),
        secret_outputs: &["password"],
        capabilities: Capabilities {
            holds_data: true,
            ..Capabilities::PROVIDED
        },
    },
    ResourceType {
        name: "kubernetes.manifests",
        doc: "manifests applied into a namespace per environment",
        fields: K8S,
        outputs: Outputs::Fixed(&["namespace", "objects"]),
        secret_outputs: &[],
        capabilities: Capabilities::PROVIDED,
    },
];

/// The type called `name`.
pub fn lookup(name: &str) -> Option<&'static ResourceType> {
    TYPES.iter().find(|t| t.name == name)
}

/// The capabilities of the type called `name`; none at all for a name the catalogue does not
/// know (a record written by another version).
pub fn capabilities(name: &str) -> Capabilities {
    lookup(name).map_or(Capabilities::NONE, |t| t.capabilities)
}

/// The name of the port a resource of type `type_name` configured as `config` serves at the
/// environment's preview URL, if it exposes one.
pub fn exposed_port<'a>(type_name: &str, config: &'a Json) -> Option<&'a str> {
    lookup(type_name)?.exposed_port(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_name_fields_of_the_right_kind() {
        for t in TYPES {
            if let SourceDir::Field(name) = t.capabilities.source {
                let field = t.field(name).expect("a source field is one of the type's");
                assert_eq!(field.kind, RelPath, "{}.{name}", t.name);
            }
            if let Some(name) = t.capabilities.expose {
                let field = t.field(name).expect("an expose field is one of the type's");
                assert_eq!(field.kind, PortName, "{}.{name}", t.name);
            }
        }
    }

    #[test]
    fn an_exposed_port_is_read_through_the_capability() {
        let config = serde_json::json!({"expose": "http", "ports": ["http"]});
        assert_eq!(exposed_port("process", &config), Some("http"));
        assert_eq!(exposed_port("job", &config), None);
        assert_eq!(exposed_port("no.such.type", &config), None);
        assert_eq!(exposed_port("process", &serde_json::json!({})), None);
    }

    #[test]
    fn an_unknown_type_can_do_nothing() {
        assert_eq!(capabilities("no.such.type"), Capabilities::NONE);
        assert!(capabilities("kubernetes.manifests").provided);
        assert!(!capabilities("kubernetes.manifests").node_bound);
        assert!(capabilities("postgres.database").holds_data);
    }
}
