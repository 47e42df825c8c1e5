//! The one path every registry request takes: concurrency permit, authentication (Basic or the
//! bearer-token flow), timeout, classification of failures, request-level retries with backoff and
//! `Retry-After`, request counters and debug tracing without credentials.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::sync::Semaphore;
use url::Url;

use super::RegistryConfig;
use super::auth::{CachedToken, Challenge, Credentials, DEFAULT_TOKEN_LIFETIME, Scope, Secret, parse_challenges};
use super::error::{RegistryError, RequestLine, classify_status, classify_transport, describe_transport, hint, parse_error_body};
use crate::model::ErrorClass;

/// Backoff before retry `n` (0-based) when the registry gives no `Retry-After`: 100 ms · 2^n.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest backoff between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Connecting should take far less than a whole request; fail fast on a dead host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request is, for the counters in [`RequestStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Catalog,
    TagList,
    ManifestHead,
    ManifestGet,
    BlobGet,
    BlobHead,
    Delete,
    Upload,
    Put,
    Probe,
    Referrers,
    /// GitLab's import API (start, status, cancel).
    Import,
}

/// How many HTTP requests a [`super::RegistryClient`] sent, by kind. Every attempt counts, retries
/// and the re-send after a token challenge included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// `GET /v2/_catalog` pages.
    pub catalog: u64,
    /// Tag list pages (`/v2/<name>/tags/list` or GitLab's tags API).
    pub tag_list: u64,
    pub manifest_head: u64,
    pub manifest_get: u64,
    /// Config blob reads.
    pub blob_get: u64,
    /// Blob existence checks (before and after uploading the dummy manifest's config).
    pub blob_head: u64,
    pub delete: u64,
    /// Blob upload sessions started (`POST /v2/<name>/blobs/uploads/`).
    pub upload: u64,
    /// Blob upload completions and manifest PUTs.
    pub put: u64,
    /// GitLab API probes.
    pub probe: u64,
    /// Referrers API requests (`GET /v2/<name>/referrers/<digest>`), the first of which is
    /// the probe for it.
    pub referrers: u64,
    /// GitLab import API requests (start, status, cancel).
    pub import: u64,
    /// Token requests to the token server.
    pub token: u64,
    /// Attempts that were retries of a failed attempt.
    pub retries: u64,
}

impl RequestStats {
    /// Requests to the registry and the token server, all kinds.
    pub fn total(&self) -> u64 {
        self.catalog
            + self.tag_list
            + self.manifest_head
            + self.manifest_get
            + self.blob_get
            + self.blob_head
            + self.delete
            + self.upload
            + self.put
            + self.probe
            + self.referrers
            + self.import
            + self.token
    }
}

#[derive(Default)]
struct Counters {
    /// One counter per [`Kind`] (`Kind::Import` is the last).
    by_kind: [AtomicU64; Kind::Import as usize + 1],
    token: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RequestStats {
        let k = |kind: Kind| self.by_kind[kind as usize].load(Ordering::Relaxed);
        RequestStats {
            catalog: k(Kind::Catalog),
            tag_list: k(Kind::TagList),
            manifest_head: k(Kind::ManifestHead),
            manifest_get: k(Kind::ManifestGet),
            blob_get: k(Kind::BlobGet),
            blob_head: k(Kind::BlobHead),
            delete: k(Kind::Delete),
            upload: k(Kind::Upload),
            put: k(Kind::Put),
            probe: k(Kind::Probe),
            referrers: k(Kind::Referrers),
            import: k(Kind::Import),
            token: self.token.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// One request to send (and maybe re-send).
pub(crate) struct Request {
    pub kind: Kind,
    pub method: Method,
    pub url: Url,
    pub repository: Option<String>,
    pub scope: Scope,
    pub accept: Option<&'static str>,
    /// Content type and bytes (cheap to clone for retries).
    pub body: Option<(String, Bytes)>,
    /// Non-2xx statuses the caller handles itself (returned as answers, no token flow on 401).
    pub pass_statuses: &'static [u16],
}

impl Request {
    pub fn new(kind: Kind, method: Method, url: Url, repository: Option<&str>, scope: Scope) -> Self {
        Request { kind, method, url, repository: repository.map(str::to_string), scope, accept: None, body: None, pass_statuses: &[] }
    }
}

/// A complete answer (body read).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A failed attempt and how long the registry asked us to wait before the next.
struct Failure {
    error: RegistryError,
    retry_after: Option<Duration>,
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Self {
        Failure { error, retry_after: None }
    }
}

/// Where the token server is, learnt from the registry's first bearer challenge.
#[derive(Clone, Debug)]
struct TokenEndpoint {
    realm: Url,
    service: Option<String>,
}

enum Authorization {
    None,
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

pub(crate) struct Transport {
    base: Url,
    /// `base` without a trailing slash, for error messages.
    label: String,
    http: reqwest::Client,
    permits: Semaphore,
    credentials: Credentials,
    request_timeout: Duration,
    max_retries: u32,
    max_retry_after: Duration,
    token_endpoint: Mutex<Option<TokenEndpoint>>,
    /// Tokens by requested scope. An async mutex held across a token fetch: concurrent requests
    /// that need the same token wait for one fetch instead of each fetching their own.
    tokens: tokio::sync::Mutex<HashMap<String, CachedToken>>,
    counters: Counters,
}

impl Transport {
    pub fn new(config: &RegistryConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("tagwarden/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(config.concurrency.max(1))
            .connect_timeout(CONNECT_TIMEOUT.min(config.request_timeout))
            .build()?;
        Ok(Transport {
            base: config.url.clone(),
            label: config.url.as_str().trim_end_matches('/').to_string(),
            http,
            permits: Semaphore::new(config.concurrency.max(1)),
            credentials: config.credentials.clone(),
            request_timeout: config.request_timeout,
            max_retries: config.max_retries,
            max_retry_after: config.max_retry_after,
            token_endpoint: Mutex::new(None),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
            counters: Counters::default(),
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn stats(&self) -> RequestStats {
        self.counters.snapshot()
    }

    /// Sends `req`, retrying transient failures, rate limits and timeouts up to `max_retries` times.
    /// Any answer that is neither 2xx nor in `req.pass_statuses` becomes a [`RegistryError`].
    pub async fn send(&self, req: &Request) -> Result<Answer, RegistryError> {
        let mut retry = 0;
        loop {
            let failure = match self.attempt(req).await {
                Ok(answer) => return Ok(answer),
                Err(failure) => failure,
            };
            let retry_after_secs = failure.retry_after.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
            let error = RegistryError { retry_after_secs, ..failure.error };
            if !error.class.is_retryable() {
                return Err(error);
            }
            let delay = match failure.retry_after {
                Some(wait) if wait > self.max_retry_after => {
                    return Err(RegistryError { class: ErrorClass::RateLimited, ..error }.with_hint(&format!(
                        "the registry asked to wait {} s, longer than max_retry_after ({} s)",
                        wait.as_secs(),
                        self.max_retry_after.as_secs()
                    )));
                }
                Some(wait) => wait,
                None => backoff(retry),
            };
            if retry >= self.max_retries {
                let attempts = retry + 1;
                return Err(error.with_hint(&format!("gave up after {attempts} attempts")));
            }
            retry += 1;
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                method = %req.method, path = req.url.path(), retry, delay_ms = delay.as_millis() as u64,
                "registry request failed ({}), retrying", error.message
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt, holding a concurrency permit: send, and on a bearer challenge get a token and
    /// send once more.
    async fn attempt(&self, req: &Request) -> Result<Answer, Failure> {
        let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
        let (authorization, mut fresh_token) = self.authorization(req, None).await?;
        let mut used_token = match &authorization {
            Authorization::Bearer(t) => Some(t.clone()),
            _ => None,
        };
        let mut answer = self.execute(req, &authorization).await?;
        if answer.status == StatusCode::UNAUTHORIZED
            && !req.pass_statuses.contains(&401)
            && let Some(challenge) = bearer_challenge(&answer.headers)
        {
            self.learn_token_endpoint(req, &challenge)?;
            if !fresh_token {
                let (authorization, fresh) = self.authorization(req, Some((&challenge, used_token.as_ref()))).await?;
                fresh_token = fresh;
                used_token = match &authorization {
                    Authorization::Bearer(t) => Some(t.clone()),
                    _ => None,
                };
                answer = self.execute(req, &authorization).await?;
            }
            if answer.status == StatusCode::UNAUTHORIZED && used_token.is_some() {
                let challenge = bearer_challenge(&answer.headers).unwrap_or(challenge);
                return Err(self.token_rejected(req, &answer, &challenge, fresh_token).into());
            }
        }
        if answer.status.is_success() || req.pass_statuses.contains(&answer.status.as_u16()) {
            return Ok(answer);
        }
        let retry_after = answer.header(header::RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(v, SystemTime::now()));
        Err(Failure { error: self.status_error(req, &answer), retry_after })
    }

    /// Sends the request once, with the timeout, and reads the whole body.
    async fn execute(&self, req: &Request, authorization: &Authorization) -> Result<Answer, Failure> {
        self.counters.by_kind[req.kind as usize].fetch_add(1, Ordering::Relaxed);
        let mut builder = self.http.request(req.method.clone(), req.url.clone());
        if let Some(accept) = req.accept {
            builder = builder.header(header::ACCEPT, accept);
        }
        if let Some((content_type, body)) = &req.body {
            builder = builder.header(header::CONTENT_TYPE, content_type.as_str()).body(body.clone());
        } else if req.method == Method::PUT || req.method == Method::POST {
            builder = builder.header(header::CONTENT_LENGTH, 0);
        }
        // Credentials go only to the registry itself (upload URLs are absolute and could point
        // elsewhere); reqwest drops them on redirects to other hosts (blob storage).
        if same_origin(&req.url, &self.base) {
            builder = match authorization {
                Authorization::None => builder,
                Authorization::Basic { username, password } => builder.basic_auth(username, Some(password.expose())),
                Authorization::Bearer(token) => builder.bearer_auth(token.expose()),
            };
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.request_timeout, async {
            let response = builder.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>(Answer { status, headers, body })
        })
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let status = match &result {
            Ok(Ok(answer)) => Some(answer.status.as_u16()),
            _ => None,
        };
        crate::metrics::get().registry_request(req.method.as_str(), status, started.elapsed());
        match result {
            Ok(Ok(answer)) => {
                tracing::debug!(method = %req.method, path = req.url.path(), status = answer.status.as_u16(), elapsed_ms, "registry request");
                Ok(answer)
            }
            Ok(Err(e)) => {
                let class = classify_transport(&e);
                let message = describe_transport(e);
                tracing::debug!(method = %req.method, path = req.url.path(), elapsed_ms, "registry request failed: {message}");
                Err(self.error(req, None, None, message, class).into())
            }
            Err(_elapsed) => {
                tracing::debug!(method = %req.method, path = req.url.path(), elapsed_ms, "registry request timed out");
                let message = format!("no answer within {} s (request_timeout)", self.request_timeout.as_secs_f32());
                Err(self.error(req, None, None, message, ErrorClass::Timeout).into())
            }
        }
    }

    /// The credentials for `req`: a bearer token once the registry has shown it wants one (cached
    /// per scope), else Basic credentials when configured. `retry` is the challenge just received
    /// and the token it rejected (if any), which must not be handed out again. Returns whether the
    /// token was fetched for this call.
    async fn authorization(&self, req: &Request, retry: Option<(&Challenge, Option<&Secret>)>) -> Result<(Authorization, bool), Failure> {
        let endpoint = self.token_endpoint.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(endpoint) = endpoint else {
            return Ok((self.basic(), false));
        };
        let challenge_scope = retry.and_then(|(c, _)| c.param("scope")).map(str::to_string);
        let Some(key) = req.scope.token_scope().or_else(|| challenge_scope.clone()) else {
            return Ok((self.basic(), false));
        };
        let rejected = retry.and_then(|(_, t)| t);
        let mut tokens = self.tokens.lock().await;
        let now = Instant::now();
        if let Some(cached) = tokens.get(&key)
            && cached.is_fresh(now)
            && Some(&cached.token) != rejected
        {
            // Another request fetched it after this one's attempt was rejected: as good as fresh.
            let fresh = retry.is_some();
            return Ok((Authorization::Bearer(cached.token.clone()), fresh));
        }
        let mut scopes = vec![key.clone()];
        for extra in challenge_scope.iter().flat_map(|s| s.split(' ')) {
            if !extra.is_empty() && !scopes.iter().any(|s| s == extra) {
                scopes.push(extra.to_string());
            }
        }
        let token = self.fetch_token(req, &endpoint, &scopes).await?;
        tokens.insert(key, token.clone());
        Ok((Authorization::Bearer(token.token), true))
    }

    fn basic(&self) -> Authorization {
        match &self.credentials {
            Credentials::Anonymous => Authorization::None,
            Credentials::Basic { username, password } => Authorization::Basic { username: username.clone(), password: password.clone() },
        }
    }

    fn learn_token_endpoint(&self, req: &Request, challenge: &Challenge) -> Result<(), RegistryError> {
        let realm = challenge.param("realm").unwrap_or_default();
        let realm = match Url::parse(realm).or_else(|_| self.base.join(realm)) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            _ => {
                let message = format!("the registry's bearer challenge has no usable realm ({realm:?})");
                return Err(self.error(req, Some(401), None, message, ErrorClass::Permanent));
            }
        };
        let endpoint = TokenEndpoint { realm, service: challenge.param("service").map(str::to_string) };
        *self.token_endpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint);
        Ok(())
    }

    /// `GET <realm>?service=..&scope=..`, with Basic credentials when configured.
    async fn fetch_token(&self, req: &Request, endpoint: &TokenEndpoint, scopes: &[String]) -> Result<CachedToken, Failure> {
        #[derive(Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let mut url = endpoint.realm.clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &endpoint.service {
                query.append_pair("service", service);
            }
            for scope in scopes {
                query.append_pair("scope", scope);
            }
        }
        self.counters.token.fetch_add(1, Ordering::Relaxed);
        let mut builder = self.http.get(url.clone());
        if let Credentials::Basic { username, password } = &self.credentials {
            builder = builder.basic_auth(username, Some(password.expose()));
        }
        let token_error = |status: Option<u16>, message: String, class: ErrorClass| RegistryError {
            registry: self.label.clone(),
            repository: req.repository.clone(),
            request: Box::new(RequestLine::new(&Method::GET, &url)),
            status,
            code: None,
            message,
            class,
            retry_after_secs: None,
        };
        let result = tokio::time::timeout(self.request_timeout, async {
            let response = builder.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            Ok::<_, reqwest::Error>((status, headers, response.bytes().await?))
        })
        .await;
        let (status, headers, body) = match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                let class = classify_transport(&e);
                return Err(token_error(None, format!("token request failed: {}", describe_transport(e)), class).into());
            }
            Err(_) => {
                let message = format!("the token server gave no answer within {} s", self.request_timeout.as_secs_f32());
                return Err(token_error(None, message, ErrorClass::Timeout).into());
            }
        };
        tracing::debug!(realm = endpoint.realm.path(), scopes = ?scopes, status = status.as_u16(), "token request");
        if !status.is_success() {
            let (_, detail) = parse_error_body(status, &body);
            let message = match (status.as_u16(), &self.credentials) {
                (401 | 403, Credentials::Basic { username, .. }) => {
                    format!("the token server rejected the credentials of user `{username}`: {detail}")
                }
                (401 | 403, Credentials::Anonymous) => {
                    format!("the token server requires credentials: configure a username and password ({detail})")
                }
                _ => format!("token request failed: {detail}"),
            };
            let retry_after =
                headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, SystemTime::now()));
            return Err(Failure { error: token_error(Some(status.as_u16()), message, classify_status(status)), retry_after });
        }
        let parsed: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            token_error(Some(status.as_u16()), format!("the token server's answer is not token JSON: {e}"), ErrorClass::Permanent)
        })?;
        let Some(token) = parsed.token.or(parsed.access_token).filter(|t| !t.is_empty()) else {
            return Err(token_error(Some(status.as_u16()), "the token server's answer has no token".into(), ErrorClass::Permanent).into());
        };
        let lifetime = parsed.expires_in.filter(|&s| s > 0).map(Duration::from_secs).unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Ok(CachedToken::new(Secret::new(token), lifetime, Instant::now()))
    }

    /// The error for a 401 that a token did not cure.
    fn token_rejected(&self, req: &Request, answer: &Answer, challenge: &Challenge, fresh: bool) -> RegistryError {
        let (code, detail) = parse_error_body(answer.status, &answer.body);
        let scope = req.scope.token_scope().unwrap_or_default();
        let message = if challenge.param("error") == Some("insufficient_scope") {
            format!(
                "{detail} (the credentials lack the `{}` scope: the token server did not grant {scope}; \
                 give the user the `{}` permission on this repository)",
                req.scope.action(),
                req.scope.action()
            )
        } else if fresh {
            format!("{detail} (the registry rejected a token just issued by its token server)")
        } else {
            format!("{detail} (the registry rejected the token)")
        };
        RegistryError { code, ..self.error(req, Some(401), None, message, ErrorClass::Unauthorized) }
    }

    /// The error for an answer with an unexpected status.
    pub fn status_error(&self, req: &Request, answer: &Answer) -> RegistryError {
        let (code, message) = if req.method == Method::HEAD {
            (None, answer.status.canonical_reason().unwrap_or("no message").to_string())
        } else {
            parse_error_body(answer.status, &answer.body)
        };
        let status = answer.status.as_u16();
        let has_credentials = !matches!(self.credentials, Credentials::Anonymous);
        // HEAD answers have no body, so a HEAD 404 is not "not a registry".
        let code_for_hint = if req.method == Method::HEAD { Some("") } else { code.as_deref() };
        let error = self.error(req, Some(status), code.clone(), message, classify_status(answer.status));
        match hint(req.method.as_str(), status, code_for_hint, has_credentials) {
            Some(h) => error.with_hint(h),
            None => error,
        }
    }

    pub fn error(&self, req: &Request, status: Option<u16>, code: Option<String>, message: String, class: ErrorClass) -> RegistryError {
        RegistryError {
            registry: self.label.clone(),
            repository: req.repository.clone(),
            request: Box::new(RequestLine::new(&req.method, &req.url)),
            status,
            code,
            message,
            class,
            retry_after_secs: None,
        }
    }
}

fn bearer_challenge(headers: &HeaderMap) -> Option<Challenge> {
    headers.get_all(header::WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).flat_map(parse_challenges).find(Challenge::is_bearer)
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// 100 ms · 2^retry, at most 5 s.
pub(crate) fn backoff(retry: u32) -> Duration {
    BACKOFF_BASE.saturating_mul(2u32.saturating_pow(retry.min(16))).min(BACKOFF_CAP)
}

/// A `Retry-After` value: delay-seconds or an HTTP date (a date in the past means now).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `rel="next"` target of a `Link` header, resolved against `base` (registries send
/// relative links such as `</v2/app/tags/list?last=x&n=100>; rel="next"`).
pub(crate) fn next_link(headers: &HeaderMap, base: &Url) -> Option<Url> {
    headers.get_all(header::LINK).iter().filter_map(|v| v.to_str().ok()).find_map(|v| parse_next_link(v, base))
}

pub(crate) fn parse_next_link(value: &str, base: &Url) -> Option<Url> {
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        // Parameters run to the next link (`, <`); quoted commas are not a concern for `rel`.
        let after = &rest[close + 1..];
        let params_end = after.find('<').unwrap_or(after.len());
        // The comma before the next link belongs to neither.
        let params = after[..params_end].trim_end().trim_end_matches(',');
        let is_next = params.split(';').any(|param| {
            let Some((name, value)) = param.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value.trim().trim_matches('"').split_ascii_whitespace().any(|r| r.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return base.join(target.trim()).ok();
        }
        rest = &after[params_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_resolve_relative_and_absolute_next_links() {
        let base = Url::parse("http://127.0.0.1:5000").unwrap();
        let check = |value: &str, want: Option<&str>| {
            assert_eq!(parse_next_link(value, &base).map(|u| u.to_string()).as_deref(), want, "{value}");
        };
        check(r#"</v2/app/tags/list?last=b&n=3>; rel="next""#, Some("http://127.0.0.1:5000/v2/app/tags/list?last=b&n=3"));
        check(
            r#"<https://other.example/v2/_catalog?last=x%2Fy&n=100>; rel=next"#,
            Some("https://other.example/v2/_catalog?last=x%2Fy&n=100"),
        );
        check(
            r#"</v2/_catalog?n=2>; rel="first", </v2/_catalog?last=c&n=2>; rel="next", </v2/_catalog?last=z>; rel="last""#,
            Some("http://127.0.0.1:5000/v2/_catalog?last=c&n=2"),
        );
        check(r#"</x?a=1>; title="a, b"; rel="prev next""#, Some("http://127.0.0.1:5000/x?a=1"));
        check(r#"</v2/_catalog?n=2>; rel="prev""#, None);
        check("garbage", None);
        check("<unterminated; rel=next", None);
        let base = Url::parse("https://gitlab.example.com/").unwrap();
        assert_eq!(
            parse_next_link(r#"</gitlab/v1/repositories/g/a/tags/list/?last=v9&n=2>; rel="next""#, &base).unwrap().as_str(),
            "https://gitlab.example.com/gitlab/v1/repositories/g/a/tags/list/?last=v9&n=2"
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn backoff_doubles_from_100ms_and_caps_at_5s() {
        let ms: Vec<u128> = (0..8).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn stats_count_every_kind() {
        let c = Counters::default();
        for kind in [
            Kind::Catalog,
            Kind::TagList,
            Kind::ManifestHead,
            Kind::ManifestGet,
            Kind::BlobGet,
            Kind::BlobHead,
            Kind::Delete,
            Kind::Upload,
            Kind::Put,
            Kind::Probe,
            Kind::Referrers,
            Kind::Import,
        ] {
            c.by_kind[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        c.token.fetch_add(1, Ordering::Relaxed);
        assert_eq!(c.snapshot().total(), 13);
    }
}
