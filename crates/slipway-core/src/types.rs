//! The resource type catalogue: for each `type:`, its fields, which changes force a
//! replacement, and which outputs other resources may reference.
//!
//! The parser, the reference checker, the planner and `slipway schema` all read this one
//! table, so they cannot disagree. Adding a resource type is one entry here plus its provider.

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
        self.name.starts_with("postgres.")
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
        "path",
        Str,
        true,
        false,
        "a folder or file of manifests in the repository",
    ),
    f(
        "namespace",
        Str,
        false,
        true,
        "namespace (default: one per environment)",
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
    },
    ResourceType {
        name: "job",
        doc: "a command run to completion; re-run when its inputs change",
        fields: JOB,
        outputs: Outputs::Fixed(&["exit_code"]),
        secret_outputs: &[],
    },
    ResourceType {
        name: "file",
        doc: "a rendered file inside the environment's directory",
        fields: FILE,
        outputs: Outputs::Fixed(&["path"]),
        secret_outputs: &[],
    },
    ResourceType {
        name: "exec",
        doc: "an external provider speaking JSON on stdin/stdout",
        fields: EXEC,
        outputs: Outputs::Any,
        secret_outputs: &[],
    },
    ResourceType {
        name: "postgres.database",
        doc: "a PostgreSQL database and owner role per environment",
        fields: PG_DATABASE,
        outputs: Outputs::Fixed(&["url", "host", "port", "database", "user", "password"]),
        secret_outputs: &["password", "url"],
    },
    ResourceType {
        name: "postgres.role",
        doc: "a PostgreSQL role with a generated password",
        fields: PG_ROLE,
        outputs: Outputs::Fixed(&["user", "password", "host", "port"]),
        secret_outputs: &["password"],
    },
    ResourceType {
        name: "kubernetes.manifests",
        doc: "manifests applied into a namespace per environment",
        fields: K8S,
        outputs: Outputs::Fixed(&["namespace"]),
        secret_outputs: &[],
    },
];

/// The type called `name`.
pub fn lookup(name: &str) -> Option<&'static ResourceType> {
    TYPES.iter().find(|t| t.name == name)
}
