//! GitLab's repository import API (`/gitlab/v1/import/<path>/`): start a pre-import or the final
//! import, ask the registry's true status, cancel (`gitlab-cleanup-semantics.md` §5).
//!
//! Every answer the API documents comes back as a value the scheduler branches on; credentials,
//! timeouts, 5xx and the token flow are the transport's, as for every other request. `429` is an
//! answer here, not a transient failure: it means "too many imports at once", and the scheduler
//! backs off for minutes, where the transport would retry within seconds.

use std::time::{Duration, SystemTime};

use reqwest::Method;
use serde::Deserialize;

use super::auth::Scope;
use super::client::RegistryClient;
use super::error::RegistryError;
use super::transport::{Kind, Request, parse_retry_after};

/// Which step a `PUT` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImportType {
    /// `import_type=pre`: copy the repository's metadata while it stays writable.
    Pre,
    /// `import_type=final`: the short final step, after a pre-import.
    Final,
}

impl ImportType {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportType::Pre => "pre",
            ImportType::Final => "final",
        }
    }
}

/// What a `PUT /gitlab/v1/import/<path>/` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportStart {
    /// 202: the registry started the step.
    Started,
    /// 200: the repository is already imported.
    AlreadyImported,
    /// 409 or 425: the registry is already importing it (status code kept for reports).
    AlreadyRunning(u16),
    /// 424: the final import was refused because the pre-import failed.
    PreImportFailed,
    /// 429: the registry runs as many imports as it will; try later (`Retry-After`, if sent).
    TooManyImports { retry_after: Option<Duration> },
    /// 404: the registry does not know the repository.
    NotFound,
}

/// The registry's status of one repository's import (`GET`, and the body of a refused cancel).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegistryImportStatus {
    PreImportInProgress,
    PreImportComplete,
    PreImportFailed,
    PreImportCanceled,
    ImportInProgress,
    ImportComplete,
    ImportFailed,
    ImportCanceled,
    /// The repository was created in the new metadata database: nothing to import.
    Native,
    /// A status this tagwarden does not know (kept verbatim for the stale plugin and reports).
    Other(String),
}

impl RegistryImportStatus {
    pub fn parse(s: &str) -> Self {
        use RegistryImportStatus::*;
        match s {
            "pre_import_in_progress" => PreImportInProgress,
            "pre_import_complete" => PreImportComplete,
            "pre_import_failed" => PreImportFailed,
            "pre_import_canceled" => PreImportCanceled,
            "import_in_progress" => ImportInProgress,
            "import_complete" => ImportComplete,
            "import_failed" => ImportFailed,
            "import_canceled" => ImportCanceled,
            "native" => Native,
            other => Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        use RegistryImportStatus::*;
        match self {
            PreImportInProgress => "pre_import_in_progress",
            PreImportComplete => "pre_import_complete",
            PreImportFailed => "pre_import_failed",
            PreImportCanceled => "pre_import_canceled",
            ImportInProgress => "import_in_progress",
            ImportComplete => "import_complete",
            ImportFailed => "import_failed",
            ImportCanceled => "import_canceled",
            Native => "native",
            Other(s) => s,
        }
    }

    /// Whether the registry is working on the repository right now.
    pub fn is_in_progress(&self) -> bool {
        matches!(self, RegistryImportStatus::PreImportInProgress | RegistryImportStatus::ImportInProgress)
    }
}

impl std::fmt::Display for RegistryImportStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a `DELETE /gitlab/v1/import/<path>/` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// 202: the registry cancels the import.
    Accepted,
    /// 400: nothing to cancel; the registry's current status, when its body said one.
    NothingToCancel(Option<RegistryImportStatus>),
    /// 404: the registry does not know the repository.
    NotFound,
}

/// The JSON of a status answer (and of a 400 to a cancel): `{"status": "...", ...}`.
#[derive(Deserialize)]
struct StatusBody {
    status: Option<String>,
}

impl RegistryClient {
    /// `PUT /gitlab/v1/import/<repo>/?import_type=pre|final`.
    pub async fn start_import(&self, repo: &str, import_type: ImportType) -> Result<ImportStart, RegistryError> {
        self.check_repository(repo)?;
        let url = self.url(&format!("/gitlab/v1/import/{repo}/?import_type={}", import_type.as_str()));
        let mut req = Request::new(Kind::Import, Method::PUT, url, Some(repo), Scope::Push(repo.to_owned()));
        req.pass_statuses = &[404, 409, 424, 425, 429];
        let answer = self.transport().send(&req).await?;
        Ok(match answer.status.as_u16() {
            200 => ImportStart::AlreadyImported,
            202 => ImportStart::Started,
            s @ (409 | 425) => ImportStart::AlreadyRunning(s),
            424 => ImportStart::PreImportFailed,
            429 => ImportStart::TooManyImports {
                retry_after: answer.header("retry-after").and_then(|v| parse_retry_after(v, SystemTime::now())),
            },
            404 => ImportStart::NotFound,
            other => return Err(self.malformed(&req, &answer, &format!("unexpected {other} to an import request"))),
        })
    }

    /// `GET /gitlab/v1/import/<repo>/`: the registry's status; `None` on 404.
    pub async fn import_status(&self, repo: &str) -> Result<Option<RegistryImportStatus>, RegistryError> {
        self.check_repository(repo)?;
        let url = self.url(&format!("/gitlab/v1/import/{repo}/"));
        let mut req = Request::new(Kind::Import, Method::GET, url, Some(repo), Scope::Pull(repo.to_owned()));
        req.accept = Some("application/json");
        req.pass_statuses = &[404];
        let answer = self.transport().send(&req).await?;
        if answer.status.as_u16() == 404 {
            return Ok(None);
        }
        match serde_json::from_slice::<StatusBody>(&answer.body).ok().and_then(|b| b.status).filter(|s| !s.is_empty()) {
            Some(status) => Ok(Some(RegistryImportStatus::parse(&status))),
            None => Err(self.malformed(&req, &answer, "the import status answer has no `status`")),
        }
    }

    /// `DELETE /gitlab/v1/import/<repo>/`: cancel the import in progress.
    pub async fn cancel_import(&self, repo: &str) -> Result<CancelOutcome, RegistryError> {
        self.check_repository(repo)?;
        let url = self.url(&format!("/gitlab/v1/import/{repo}/"));
        let mut req = Request::new(Kind::Import, Method::DELETE, url, Some(repo), Scope::Delete(repo.to_owned()));
        req.pass_statuses = &[400, 404];
        let answer = self.transport().send(&req).await?;
        Ok(match answer.status.as_u16() {
            // GitLab's own client read this body under the wrong key and always aborted.
            400 => CancelOutcome::NothingToCancel(
                serde_json::from_slice::<StatusBody>(&answer.body)
                    .ok()
                    .and_then(|b| b.status)
                    .filter(|s| !s.is_empty())
                    .map(|s| RegistryImportStatus::parse(&s)),
            ),
            404 => CancelOutcome::NotFound,
            s if (200..300).contains(&s) => CancelOutcome::Accepted,
            other => return Err(self.malformed(&req, &answer, &format!("unexpected {other} to a cancel request"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_unknown_ones_are_kept() {
        for s in [
            "pre_import_in_progress",
            "pre_import_complete",
            "pre_import_failed",
            "pre_import_canceled",
            "import_in_progress",
            "import_complete",
            "import_failed",
            "import_canceled",
            "native",
            "something_new",
        ] {
            assert_eq!(RegistryImportStatus::parse(s).as_str(), s);
        }
        assert!(RegistryImportStatus::parse("import_in_progress").is_in_progress());
        assert!(!RegistryImportStatus::parse("import_complete").is_in_progress());
        assert_eq!(RegistryImportStatus::parse("x"), RegistryImportStatus::Other("x".into()));
    }
}
