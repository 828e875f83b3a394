//! What can go wrong with a hub operation, each with an HTTP status for the admin API and
//! a message that says what is wrong and what to do.

use serde::Serialize;

/// Why a hub operation failed. Every failure after the first write rolls back first, so
/// unless the variant says otherwise ([`HubError::RollbackFailed`]), nothing changed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("unknown item type {given:?}; the index has: {}", known.join(", "))]
    UnknownType { given: String, known: Vec<String> },
    #[error("no item named {name:?} in the hub index{}; search with GET /hub/presets?q=", kind.as_ref().map(|k| format!(" under {k}")).unwrap_or_default())]
    NotFound { name: String, kind: Option<String> },
    #[error("{kind} {name} is not installed, so there is nothing to remove{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    NotInstalled {
        name: String,
        kind: String,
        hint: Option<String>,
    },
    #[error("{item}: {reason}")]
    Conflict { item: String, reason: String },
    #[error("cannot reach the CrowdSec hub at {host} ({url}): {reason}")]
    Unreachable {
        host: String,
        url: String,
        reason: String,
    },
    #[error("the CrowdSec hub answered HTTP {status} for {url}; check hub_url")]
    HubStatus { url: String, status: u16 },
    #[error("{url} is not a usable hub index: {reason}")]
    BadIndex { url: String, reason: String },
    #[error(
        "sha256 of {kind} {item} {version} is {actual}, but the index says {expected}: \
         refused, nothing was written (the hub served content that does not match its own \
         index; try again later or check hub_url)"
    )]
    DigestMismatch {
        item: String,
        kind: String,
        version: String,
        expected: String,
        actual: String,
    },
    #[error("cannot get the content of {kind} {item}: {reason}")]
    MissingContent {
        item: String,
        kind: String,
        reason: String,
    },
    #[error("dependency cycle in the hub index: {}", cycle.join(" -> "))]
    DependencyCycle { cycle: Vec<String> },
    #[error("{item} needs {dep_kind} {dep}, which the hub index does not have")]
    MissingDependency {
        item: String,
        dep_kind: String,
        dep: String,
    },
    #[error(
        "the engine rejected the new configuration{}{}; everything was rolled back{}",
        item.as_ref().map(|i| format!(" because of {i}")).unwrap_or_default(),
        complaint.first().map(|c| format!(": {c}")).unwrap_or_default(),
        if *already_failing { " (the engine's config test fails without this change too: fix the engine config first)" } else { "" }
    )]
    ValidationFailed {
        /// The item the engine complained about, when its output names one.
        item: Option<String>,
        /// The engine's error lines (`crowdsec -t`), most relevant first.
        complaint: Vec<String>,
        already_failing: bool,
    },
    #[error("cannot run the engine's config test ({bin} -c {config} -t): {reason}; everything was rolled back")]
    Engine {
        bin: String,
        config: String,
        reason: String,
    },
    #[error("engine config {path}: {reason}")]
    EngineConfig { path: String, reason: String },
    #[error("cannot {action} {path}: {reason}; everything was rolled back")]
    Io {
        action: String,
        path: String,
        reason: String,
    },
    #[error("{cause}; rolling back ALSO failed, the engine's files may be inconsistent: {}", problems.join("; "))]
    RollbackFailed {
        cause: String,
        problems: Vec<String>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON body an HTTP handler answers with, next to [`HubError::status`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
    /// A stable machine-readable name ([`HubError::kind`]).
    pub kind: &'static str,
    pub status: u16,
    /// The item at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// The engine's complaint (for `validation_failed`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub engine_output: Vec<String>,
    /// False only when a rollback itself failed.
    pub nothing_changed: bool,
}

impl HubError {
    /// The HTTP status an admin API answers with.
    pub fn status(&self) -> u16 {
        match self {
            HubError::InvalidRequest(_) | HubError::UnknownType { .. } => 400,
            HubError::NotFound { .. } | HubError::NotInstalled { .. } => 404,
            HubError::Conflict { .. } => 409,
            HubError::DependencyCycle { .. }
            | HubError::MissingDependency { .. }
            | HubError::ValidationFailed { .. } => 422,
            HubError::Unreachable { .. }
            | HubError::HubStatus { .. }
            | HubError::BadIndex { .. }
            | HubError::DigestMismatch { .. }
            | HubError::MissingContent { .. } => 502,
            HubError::Engine { .. }
            | HubError::EngineConfig { .. }
            | HubError::Io { .. }
            | HubError::RollbackFailed { .. }
            | HubError::Internal(_) => 500,
        }
    }

    /// A short, bounded name: the `kind` of the JSON body and the metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            HubError::InvalidRequest(_) => "invalid_request",
            HubError::UnknownType { .. } => "unknown_type",
            HubError::NotFound { .. } => "not_found",
            HubError::NotInstalled { .. } => "not_installed",
            HubError::Conflict { .. } => "conflict",
            HubError::Unreachable { .. } => "hub_unreachable",
            HubError::HubStatus { .. } => "hub_status",
            HubError::BadIndex { .. } => "bad_index",
            HubError::DigestMismatch { .. } => "digest_mismatch",
            HubError::MissingContent { .. } => "missing_content",
            HubError::DependencyCycle { .. } => "dependency_cycle",
            HubError::MissingDependency { .. } => "missing_dependency",
            HubError::ValidationFailed { .. } => "validation_failed",
            HubError::Engine { .. } => "engine",
            HubError::EngineConfig { .. } => "engine_config",
            HubError::Io { .. } => "io",
            HubError::RollbackFailed { .. } => "rollback_failed",
            HubError::Internal(_) => "internal",
        }
    }

    /// The item at fault, when the error names one.
    pub fn item(&self) -> Option<&str> {
        match self {
            HubError::NotFound { name, .. } | HubError::NotInstalled { name, .. } => Some(name),
            HubError::Conflict { item, .. }
            | HubError::DigestMismatch { item, .. }
            | HubError::MissingContent { item, .. }
            | HubError::MissingDependency { item, .. } => Some(item),
            HubError::ValidationFailed { item, .. } => item.as_deref(),
            _ => None,
        }
    }

    /// True for failures of the hub itself (network, status, index), where a listing may
    /// fall back to the cached index.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            HubError::Unreachable { .. } | HubError::HubStatus { .. } | HubError::BadIndex { .. }
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            kind: self.kind(),
            status: self.status(),
            item: self.item().map(str::to_string),
            engine_output: match self {
                HubError::ValidationFailed { complaint, .. } => complaint.clone(),
                _ => Vec::new(),
            },
            nothing_changed: !matches!(self, HubError::RollbackFailed { .. }),
        }
    }
}
