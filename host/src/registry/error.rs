//! [`RegistryError`]: what failed, where, what the registry said, and what an operator can do.

use std::fmt;

use reqwest::StatusCode;
use serde::Deserialize;

use crate::model::ErrorClass;

/// The request a [`RegistryError`] is about: method and URL without the query (which may carry
/// upload state or pagination cursors) and without credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    /// Scheme, host, port and path, e.g. `http://127.0.0.1:5000/v2/app/tags/list`.
    pub url: String,
}

impl RequestLine {
    /// The request line for `method url`, dropping the URL's query, fragment and any userinfo.
    pub fn new(method: &reqwest::Method, url: &url::Url) -> Self {
        let mut url = url.clone();
        url.set_query(None);
        url.set_fragment(None);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        RequestLine { method: method.to_string(), url: url.to_string() }
    }
}

impl fmt::Display for RequestLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.url)
    }
}

/// A failed registry operation, with enough context for an operator to act on and a [`ErrorClass`]
/// for callers (and backoff plugins) to branch on.
///
/// Displays as e.g. `DELETE http://127.0.0.1:5000/v2/group/app/manifests/sha256:ab.. on group/app:
/// 405 UNSUPPORTED: The operation is unsupported (deletes are disabled on this registry: enable
/// storage.delete.enabled)`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.render())]
pub struct RegistryError {
    /// The registry's base URL, e.g. `http://127.0.0.1:5000`.
    pub registry: String,
    /// The repository operated on, when there is one.
    pub repository: Option<String>,
    /// Boxed to keep `Result<_, RegistryError>` small on the happy path.
    pub request: Box<RequestLine>,
    /// The HTTP status, when the registry answered.
    pub status: Option<u16>,
    /// The registry's error code (`NAME_UNKNOWN`, `UNSUPPORTED`, `DIGEST_INVALID`, ...), when its
    /// answer had a JSON error body.
    pub code: Option<String>,
    /// What went wrong, with a hint on what to do where there is one.
    pub message: String,
    pub class: ErrorClass,
    /// How long the registry asked callers to wait (`Retry-After`, whole seconds), when it
    /// did: the daemon's backoff plugin sees it. Seconds in a `u32` keep the error small.
    pub retry_after_secs: Option<u32>,
}

impl RegistryError {
    fn render(&self) -> String {
        let mut s = self.request.to_string();
        if let Some(repo) = &self.repository {
            s.push_str(" on ");
            s.push_str(repo);
        }
        s.push_str(": ");
        let head: Vec<String> = self.status.map(|s| s.to_string()).into_iter().chain(self.code.clone()).collect();
        if !head.is_empty() {
            s.push_str(&head.join(" "));
            s.push_str(": ");
        }
        s.push_str(&self.message);
        s
    }

    /// The registry's `Retry-After`, when it gave one.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after_secs.map(|s| std::time::Duration::from_secs(u64::from(s)))
    }

    /// Whether the registry said the repository does not exist (`404 NAME_UNKNOWN`).
    pub fn is_name_unknown(&self) -> bool {
        self.status == Some(404) && self.code.as_deref() == Some("NAME_UNKNOWN")
    }

    /// Whether this is a 404 from the registry API itself (with a registry error code), as opposed to
    /// a router-level `404 page not found` that hints at a wrong URL.
    pub fn is_registry_not_found(&self) -> bool {
        self.status == Some(404) && self.code.is_some()
    }

    /// Appends `(hint)` to the message.
    pub(crate) fn with_hint(mut self, hint: &str) -> Self {
        self.message = format!("{} ({hint})", self.message);
        self
    }
}

/// How an HTTP status is classified (see [`ErrorClass`]).
pub fn classify_status(status: StatusCode) -> ErrorClass {
    match status.as_u16() {
        429 => ErrorClass::RateLimited,
        404 => ErrorClass::NotFound,
        401 | 403 => ErrorClass::Unauthorized,
        408 => ErrorClass::Timeout,
        500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// How a failure to get any answer is classified.
pub fn classify_transport(err: &reqwest::Error) -> ErrorClass {
    if err.is_timeout() {
        ErrorClass::Timeout
    } else if err.is_builder() || err.is_redirect() {
        ErrorClass::Permanent
    } else {
        // Connection refused or reset, an answer cut short, a TLS hiccup: may pass.
        ErrorClass::Transient
    }
}

/// The message of a transport error with its causes, without the URL (whose query may hold upload
/// state) that reqwest puts in its own message.
pub fn describe_transport(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut parts = vec![err.to_string()];
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// `(code, message)` from an error answer's body. Registries send
/// `{"errors":[{"code":..,"message":..,"detail":..}]}`, but router-level errors are plain text and
/// proxies send HTML, so anything else becomes a (shortened) text message.
pub fn parse_error_body(status: StatusCode, body: &[u8]) -> (Option<String>, String) {
    #[derive(Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(parsed) = serde_json::from_slice::<Body>(body)
        && let Some(first) = parsed.errors.first()
    {
        let messages: Vec<String> = parsed
            .errors
            .iter()
            .filter_map(|e| e.message.as_deref())
            .map(|m| m.trim().trim_end_matches('.').to_string())
            .filter(|m| !m.is_empty())
            .collect();
        let message = if messages.is_empty() { canonical(status) } else { messages.join("; ") };
        return (first.code.clone().filter(|c| !c.is_empty()), message);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return (None, canonical(status));
    }
    const MAX: usize = 200;
    if text.chars().count() > MAX {
        let short: String = text.chars().take(MAX).collect();
        (None, format!("{short}…"))
    } else {
        (None, text)
    }
}

fn canonical(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("no message").to_string()
}

/// What an operator can do about an error answer, where we know.
pub fn hint(method: &str, status: u16, code: Option<&str>, has_credentials: bool) -> Option<&'static str> {
    match (method, status, code) {
        ("DELETE", 405, _) => Some("deletes are disabled on this registry: enable storage.delete.enabled"),
        (_, 401, _) if has_credentials => Some("the registry rejected the configured credentials: check the username and password"),
        (_, 401, _) => Some("the registry requires credentials: configure a username and password"),
        (_, 403, _) => Some("the credentials lack permission for this operation"),
        (_, 404, None) => Some("not a registry API answer: check the registry URL"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(status: Option<u16>, code: Option<&str>, message: &str) -> RegistryError {
        RegistryError {
            registry: "http://127.0.0.1:5000".into(),
            repository: Some("group/app".into()),
            request: Box::new(RequestLine::new(
                &reqwest::Method::DELETE,
                &url::Url::parse("http://user:pw@127.0.0.1:5000/v2/group/app/manifests/sha256:ab?secret=1").unwrap(),
            )),
            status,
            code: code.map(String::from),
            message: message.into(),
            class: ErrorClass::Permanent,
            retry_after_secs: None,
        }
    }

    #[test]
    fn display_names_request_repository_status_code_and_message() {
        let (code, message) = parse_error_body(
            StatusCode::METHOD_NOT_ALLOWED,
            br#"{"errors":[{"code":"UNSUPPORTED","message":"The operation is unsupported.","detail":null}]}"#,
        );
        let e = error(Some(405), code.as_deref(), &message).with_hint(hint("DELETE", 405, code.as_deref(), false).unwrap());
        assert_eq!(
            e.to_string(),
            "DELETE http://127.0.0.1:5000/v2/group/app/manifests/sha256:ab on group/app: 405 UNSUPPORTED: \
             The operation is unsupported (deletes are disabled on this registry: enable storage.delete.enabled)"
        );
        let e = error(None, None, "timed out");
        assert!(e.to_string().ends_with("on group/app: timed out"), "{e}");
    }

    #[test]
    fn error_bodies_that_are_not_json_become_text_messages() {
        let check = |status: u16, body: &[u8], want_code: Option<&str>, want_message: &str| {
            let (code, message) = parse_error_body(StatusCode::from_u16(status).unwrap(), body);
            assert_eq!((code.as_deref(), message.as_str()), (want_code, want_message), "body {:?}", String::from_utf8_lossy(body));
        };
        check(404, b"404 page not found\n", None, "404 page not found");
        check(502, b"<html>\n<body>Bad   Gateway</body></html>", None, "<html> <body>Bad Gateway</body></html>");
        check(503, b"", None, "Service Unavailable");
        check(400, b"{\"not\":\"errors\"}", None, "{\"not\":\"errors\"}");
        check(
            400,
            br#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#,
            Some("DIGEST_INVALID"),
            "provided digest did not match uploaded content",
        );
        check(404, br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#, Some("NAME_UNKNOWN"), "Not Found");
        let (_, long) = parse_error_body(StatusCode::BAD_GATEWAY, "x".repeat(5000).as_bytes());
        assert!(long.chars().count() <= 201 && long.ends_with('…'));
        let (_, binary) = parse_error_body(StatusCode::BAD_GATEWAY, &[0xff, 0xfe, b'a']);
        assert!(binary.ends_with('a'));
    }

    #[test]
    fn statuses_are_classified_for_retries() {
        let check = |status: u16, want: ErrorClass| assert_eq!(classify_status(StatusCode::from_u16(status).unwrap()), want, "{status}");
        check(500, ErrorClass::Transient);
        check(502, ErrorClass::Transient);
        check(503, ErrorClass::Transient);
        check(429, ErrorClass::RateLimited);
        check(404, ErrorClass::NotFound);
        check(401, ErrorClass::Unauthorized);
        check(403, ErrorClass::Unauthorized);
        check(400, ErrorClass::Permanent);
        check(405, ErrorClass::Permanent);
        check(409, ErrorClass::Permanent);
        check(408, ErrorClass::Timeout);
        assert!(!ErrorClass::Permanent.is_retryable() && ErrorClass::Transient.is_retryable());
    }

    #[test]
    fn name_unknown_differs_from_a_router_404() {
        let mut e = error(Some(404), Some("NAME_UNKNOWN"), "repository name not known to registry");
        assert!(e.is_name_unknown() && e.is_registry_not_found());
        e.code = None;
        assert!(!e.is_name_unknown() && !e.is_registry_not_found());
    }
}
