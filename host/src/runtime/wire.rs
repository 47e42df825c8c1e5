//! The plugin contract (`wit/policy.wit`) as the host speaks it, for every contract
//! version it accepts.
//!
//! The host does not generate bindings for one version of the WIT package. It finds each
//! export by name — `tagwarden:policy/<kind>@<version>` and the functions in it — and
//! calls it with the types below, which mirror the WIT types field for field. Their shapes
//! are the same in every accepted version except where a type says otherwise
//! ([`EvaluationV01`] and [`Evaluation`]), so one code path serves 0.1 and 0.2 plugins,
//! and a version is data ([`ContractVersion`]), not a second copy of the host. wasmtime
//! checks every type against the component's own when the plugin is loaded
//! ([`Exports::check`]), so a mismatch is a load error naming the function, never a
//! wrong answer.

use wasmtime::Store;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, ComponentType, Instance, Lift, Lower, ResourceAny, TypedFunc,
};

use super::sandbox::SandboxState;
use super::{CONTRACT_PACKAGE, PluginKind};

/// A contract version this host accepts: a plugin built for `major.minor.patch` with
/// `patch` at most the one listed here (a newer patch may rely on additions this host
/// lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContractVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl ContractVersion {
    /// Whether a plugin built for `other` can be served as this version (semver for
    /// 0.x: same minor, patch not newer).
    pub fn accepts(self, other: ContractVersion) -> bool {
        other.major == self.major
            && if self.major == 0 { other.minor == self.minor && other.patch <= self.patch } else { other.minor <= self.minor }
    }

    /// 0.2.0 added `policy.reads`: the columns a retention policy reads.
    pub fn declares_columns(self) -> bool {
        (self.major, self.minor) >= (0, 2)
    }

    pub fn parse(text: &str) -> Option<ContractVersion> {
        let mut it = text.split('.').map(|p| p.split(['-', '+']).next().unwrap_or(p).parse::<u64>().ok());
        let v = ContractVersion { major: it.next()??, minor: it.next()??, patch: it.next()?? };
        it.next().is_none().then_some(v)
    }
}

impl std::fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// `types.plugin-info`.
#[derive(ComponentType, Lift, Debug, Clone)]
#[component(record)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
}

/// `types.log-level`.
#[allow(dead_code, reason = "its values come from the guest, lifted, never built by the host")]
#[derive(ComponentType, Lift, Lower, Debug, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
pub enum LogLevel {
    #[component(name = "trace")]
    Trace,
    #[component(name = "debug")]
    Debug,
    #[component(name = "info")]
    Info,
    #[component(name = "warn")]
    Warn,
    #[component(name = "error")]
    Error,
}

/// `types.operation-kind`.
#[derive(ComponentType, Lift, Lower, Debug, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
pub enum OperationKind {
    #[component(name = "cleanup")]
    Cleanup,
    #[component(name = "tag-deletion")]
    TagDeletion,
    #[component(name = "repository-deletion")]
    RepositoryDeletion,
    #[component(name = "import")]
    Import,
}

// `retention.columns` (0.2): the columns a retention policy reads besides tag names.
wasmtime::component::flags! {
    Columns {
        #[component(name = "digests")]
        const DIGESTS;
        #[component(name = "created-at")]
        const CREATED_AT;
        #[component(name = "pushed-at")]
        const PUSHED_AT;
        #[component(name = "last-pulled-at")]
        const LAST_PULLED_AT;
        #[component(name = "size-bytes")]
        const SIZE_BYTES;
        #[component(name = "media-types")]
        const MEDIA_TYPES;
    }
}

impl Columns {
    /// What a policy reading these columns is sent, for people: `tag names, created-at and
    /// pushed-at`.
    pub fn describe(self) -> String {
        let names: Vec<&str> = [
            (Columns::DIGESTS, "digests"),
            (Columns::CREATED_AT, "created-at"),
            (Columns::PUSHED_AT, "pushed-at"),
            (Columns::LAST_PULLED_AT, "last-pulled-at"),
            (Columns::SIZE_BYTES, "size-bytes"),
            (Columns::MEDIA_TYPES, "media-types"),
        ]
        .into_iter()
        .filter(|&(c, _)| self.contains(c))
        .map(|(_, n)| n)
        .collect();
        match names.as_slice() {
            [] => "tag names only".to_owned(),
            [one] => format!("tag names and {one}"),
            [init @ .., last] => format!("tag names, {} and {last}", init.join(", ")),
        }
    }
}

/// `types.string-table`, borrowing the host's columns.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
pub struct StringTable<'a> {
    pub data: &'a str,
    pub ends: &'a [u32],
}

impl StringTable<'_> {
    pub const EMPTY: StringTable<'static> = StringTable { data: "", ends: &[] };
}

/// `retention.tag-columns`, borrowing the host's columns.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct TagColumns<'a> {
    pub names: StringTable<'a>,
    pub digests: &'a [u32],
    #[component(name = "created-at")]
    pub created_at: &'a [i64],
    #[component(name = "pushed-at")]
    pub pushed_at: &'a [i64],
    #[component(name = "last-pulled-at")]
    pub last_pulled_at: &'a [i64],
    #[component(name = "size-bytes")]
    pub size_bytes: &'a [i64],
    #[component(name = "media-types")]
    pub media_types: &'a [u32],
}

/// `retention.untagged-columns` of 0.1.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct UntaggedColumnsV01<'a> {
    pub digests: &'a [u32],
    #[component(name = "created-at")]
    pub created_at: &'a [i64],
    #[component(name = "pushed-at")]
    pub pushed_at: &'a [i64],
}

/// `retention.untagged-columns` of 0.2: with the count, since its columns may all be
/// left out.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct UntaggedColumns<'a> {
    pub count: u32,
    pub digests: &'a [u32],
    #[component(name = "created-at")]
    pub created_at: &'a [i64],
    #[component(name = "pushed-at")]
    pub pushed_at: &'a [i64],
}

/// `retention.evaluation` of 0.1.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct EvaluationV01<'a> {
    pub repository: &'a str,
    pub now: i64,
    pub digests: StringTable<'a>,
    #[component(name = "media-types")]
    pub media_types: StringTable<'a>,
    pub tags: TagColumns<'a>,
    pub untagged: UntaggedColumnsV01<'a>,
}

/// `retention.evaluation` of 0.2.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct Evaluation<'a> {
    pub repository: &'a str,
    pub now: i64,
    pub digests: StringTable<'a>,
    #[component(name = "media-types")]
    pub media_types: StringTable<'a>,
    pub tags: TagColumns<'a>,
    pub untagged: UntaggedColumns<'a>,
}

/// `retention.action`.
#[allow(dead_code, reason = "its values come from the guest, lifted, never built by the host")]
#[derive(ComponentType, Lift, Debug, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
pub enum Action {
    #[component(name = "keep")]
    Keep,
    #[component(name = "delete")]
    Delete,
}

/// `retention.rule`.
#[derive(ComponentType, Lift, Debug, Clone)]
#[component(record)]
pub struct Rule {
    pub action: Action,
    pub reason: String,
}

/// `retention.decisions`.
#[derive(ComponentType, Lift, Debug, Clone)]
#[component(record)]
pub struct Decisions {
    pub rules: Vec<Rule>,
    pub tags: Vec<u8>,
    pub untagged: Vec<u8>,
}

/// `backoff.error-class`.
#[derive(ComponentType, Lower, Debug, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
pub enum ErrorClass {
    #[component(name = "transient")]
    Transient,
    #[component(name = "rate-limited")]
    RateLimited,
    #[component(name = "not-found")]
    NotFound,
    #[component(name = "unauthorized")]
    Unauthorized,
    #[component(name = "timeout")]
    Timeout,
    #[component(name = "permanent")]
    Permanent,
}

/// `backoff.failure`.
#[derive(ComponentType, Lower, Debug, Clone)]
#[component(record)]
pub struct Failure<'a> {
    pub operation: OperationKind,
    pub attempt: u32,
    pub class: ErrorClass,
    #[component(name = "http-status")]
    pub http_status: Option<u16>,
    #[component(name = "retry-after")]
    pub retry_after: Option<u64>,
    pub message: &'a str,
    pub now: i64,
    pub seed: u64,
}

/// `backoff.decision`.
#[derive(ComponentType, Lift, Debug, Clone)]
#[component(variant)]
pub enum BackoffDecision {
    #[component(name = "retry-after")]
    RetryAfter(u64),
    #[component(name = "give-up")]
    GiveUp(String),
}

/// `stale.limits`.
#[derive(ComponentType, Lower, Debug, Clone, Copy)]
#[component(record)]
pub struct Limits {
    #[component(name = "delete-timeout")]
    pub delete_timeout: u64,
}

/// `stale.operation`.
#[derive(ComponentType, Lower, Debug, Clone)]
#[component(record)]
pub struct Operation<'a> {
    pub kind: OperationKind,
    pub state: &'a str,
    #[component(name = "started-at")]
    pub started_at: Option<i64>,
    pub now: i64,
    pub limits: Limits,
    #[component(name = "registry-status")]
    pub registry_status: Option<&'a str>,
}

/// `stale.stale-action`.
#[allow(dead_code, reason = "its values come from the guest, lifted, never built by the host")]
#[derive(ComponentType, Lift, Debug, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
pub enum StaleAction {
    #[component(name = "mark-unfinished")]
    MarkUnfinished,
    #[component(name = "reschedule")]
    Reschedule,
    #[component(name = "cancel")]
    Cancel,
    #[component(name = "abort")]
    Abort,
}

/// `stale.stale-finding`.
#[derive(ComponentType, Lift, Debug, Clone)]
#[component(record)]
pub struct StaleFinding {
    pub action: StaleAction,
    pub reason: String,
}

/// `stale.verdict`.
#[derive(ComponentType, Lift, Debug, Clone)]
#[component(variant)]
pub enum Verdict {
    #[component(name = "healthy")]
    Healthy,
    #[component(name = "stale")]
    Stale(StaleFinding),
}

/// The resource each kind exports and the method the host calls on it.
fn resource_and_method(kind: PluginKind) -> (&'static str, &'static str) {
    match kind {
        PluginKind::Retention => ("policy", "evaluate"),
        PluginKind::Backoff => ("strategy", "decide"),
        PluginKind::Stale => ("rule", "check"),
    }
}

/// The functions of one plugin's interface, found once when it is loaded.
#[derive(Debug, Clone, Copy)]
pub struct Exports {
    pub kind: PluginKind,
    pub version: ContractVersion,
    /// `info`.
    pub info: ComponentExportIndex,
    /// `[static]<resource>.create`.
    pub create: ComponentExportIndex,
    /// `[method]policy.evaluate`, `[method]strategy.decide` or `[method]rule.check`.
    pub call: ComponentExportIndex,
    /// `[method]policy.reads`, for retention plugins of 0.2 and later.
    pub reads: Option<ComponentExportIndex>,
}

/// A created resource's typed entry points.
pub type Create<'a> = TypedFunc<(&'a str,), (Result<ResourceAny, String>,)>;

impl Exports {
    /// Finds the interface's functions in `component`, built for `version`.
    pub fn find(component: &Component, kind: PluginKind, version: ContractVersion) -> Result<Exports, String> {
        let interface = format!("{CONTRACT_PACKAGE}/{kind}@{version}");
        let iface = component.get_export_index(None, &interface).ok_or_else(|| format!("exports no `{interface}`"))?;
        let (resource, method) = resource_and_method(kind);
        let func = |name: &str| component.get_export_index(Some(&iface), name).ok_or_else(|| format!("`{interface}` exports no `{name}`"));
        Ok(Exports {
            kind,
            version,
            info: func("info")?,
            create: func(&format!("[static]{resource}.create"))?,
            call: func(&format!("[method]{resource}.{method}"))?,
            reads: if kind == PluginKind::Retention && version.declares_columns() { Some(func("[method]policy.reads")?) } else { None },
        })
    }

    /// Checks every function's type against the host's, in an instance of the plugin;
    /// the error names the function whose type differs.
    pub fn check(&self, store: &mut Store<SandboxState>, instance: &Instance) -> wasmtime::Result<()> {
        let named = |what: &str, e: wasmtime::Error| e.context(format!("`{what}` has another type than the contract's"));
        self.info(store, instance).map_err(|e| named("info", e))?;
        instance.get_typed_func::<(&str,), (Result<ResourceAny, String>,)>(&mut *store, self.create).map_err(|e| named("create", e))?;
        let (_, method) = resource_and_method(self.kind);
        match (self.kind, self.version.declares_columns()) {
            (PluginKind::Retention, false) => {
                self.typed::<(ResourceAny, &EvaluationV01<'_>), (Result<Decisions, String>,)>(store, instance)
            }
            (PluginKind::Retention, true) => self.typed::<(ResourceAny, &Evaluation<'_>), (Result<Decisions, String>,)>(store, instance),
            (PluginKind::Backoff, _) => self.typed::<(ResourceAny, &Failure<'_>), (BackoffDecision,)>(store, instance),
            (PluginKind::Stale, _) => self.typed::<(ResourceAny, &Operation<'_>), (Verdict,)>(store, instance),
        }
        .map_err(|e| named(method, e))?;
        if let Some(reads) = self.reads {
            instance.get_typed_func::<(ResourceAny,), (Columns,)>(&mut *store, reads).map_err(|e| named("reads", e))?;
        }
        Ok(())
    }

    fn typed<P: ComponentNamedList + Lower, R: ComponentNamedList + Lift>(
        &self,
        store: &mut Store<SandboxState>,
        instance: &Instance,
    ) -> wasmtime::Result<()> {
        instance.get_typed_func::<P, R>(&mut *store, self.call).map(drop)
    }

    pub fn info(&self, store: &mut Store<SandboxState>, instance: &Instance) -> wasmtime::Result<TypedFunc<(), (PluginInfo,)>> {
        instance.get_typed_func(&mut *store, self.info)
    }

    /// Calls `[static]<resource>.create(params)`.
    pub fn create(
        &self,
        store: &mut Store<SandboxState>,
        instance: &Instance,
        params: &str,
    ) -> wasmtime::Result<Result<ResourceAny, String>> {
        let create: Create<'_> = instance.get_typed_func(&mut *store, self.create)?;
        Ok(create.call(&mut *store, (params,))?.0)
    }

    /// Calls `[method]<resource>.<method>` with one argument.
    pub fn call<P: ComponentType + Lower, R: ComponentType + Lift>(
        &self,
        store: &mut Store<SandboxState>,
        instance: &Instance,
        handle: ResourceAny,
        input: &P,
    ) -> wasmtime::Result<R> {
        let f = instance.get_typed_func::<(ResourceAny, &P), (R,)>(&mut *store, self.call)?;
        Ok(f.call(&mut *store, (handle, input))?.0)
    }

    /// The columns a created policy reads: all of them for a plugin that cannot say.
    pub fn reads(&self, store: &mut Store<SandboxState>, instance: &Instance, handle: ResourceAny) -> wasmtime::Result<Columns> {
        match self.reads {
            None => Ok(Columns::all()),
            Some(reads) => {
                let f = instance.get_typed_func::<(ResourceAny,), (Columns,)>(&mut *store, reads)?;
                Ok(f.call(&mut *store, (handle,))?.0)
            }
        }
    }
}
