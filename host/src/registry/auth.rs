//! Credentials, token scopes and `WWW-Authenticate` challenges.
//!
//! The token flow itself (fetching and caching tokens) lives with the request path in
//! `transport.rs`; this file holds the pieces that need no HTTP.

use std::fmt;
use std::time::{Duration, Instant};

/// `url` with any `user:password@` part replaced by `***@`, for error messages about a
/// URL that may not even parse (so `url::Url` cannot be used to strip it).
pub fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let authority_end = url[scheme_end..].find(['/', '?', '#']).map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end], &url[scheme_end + at + 1..]),
        None => url.to_owned(),
    }
}

/// A credential that never shows up in logs, errors or `Debug` output: both `Debug` and `Display`
/// print `***`. [`Secret::expose`] is the one way to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for building the one header that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How tagwarden logs in to a registry. With token authentication the same credentials are sent
/// to the token server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: Secret,
    },
}

/// The access a request needs, as a token scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// No repository access (the API probe).
    None,
    Pull(String),
    Push(String),
    Delete(String),
    Catalog,
}

impl Scope {
    /// The scope string to request from a token server, e.g. `repository:app:pull`.
    pub fn token_scope(&self) -> Option<String> {
        match self {
            Scope::None => None,
            Scope::Pull(repo) => Some(format!("repository:{repo}:pull")),
            Scope::Push(repo) => Some(format!("repository:{repo}:pull,push")),
            // Least privilege: a delete needs `delete`, and the registry wants `pull` to look first.
            Scope::Delete(repo) => Some(format!("repository:{repo}:pull,delete")),
            Scope::Catalog => Some("registry:catalog:*".to_string()),
        }
    }

    /// The permission this scope is about, for error messages.
    pub fn action(&self) -> &'static str {
        match self {
            Scope::None => "any",
            Scope::Pull(_) => "pull",
            Scope::Push(_) => "push",
            Scope::Delete(_) => "delete",
            Scope::Catalog => "catalog",
        }
    }
}

/// One challenge of a `WWW-Authenticate` header: a scheme and its `name=value` parameters (names
/// lowercased, values unquoted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }
}

/// Parses a `WWW-Authenticate` value (RFC 7235): one or more challenges, each a scheme followed by
/// comma-separated parameters whose values may be quoted strings containing commas, spaces and
/// backslash escapes, e.g. `Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push"`.
pub(crate) fn parse_challenges(input: &str) -> Vec<Challenge> {
    let b = input.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let is_space = |c: u8| c == b' ' || c == b'\t';
    let is_token = |c: u8| !(c.is_ascii_whitespace() || c == b',' || c == b'=' || c == b'"');
    let read_token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && is_token(b[*i]) {
            *i += 1;
        }
        &input[start..*i]
    };
    loop {
        while i < b.len() && (is_space(b[i]) || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let scheme = read_token(&mut i);
        if scheme.is_empty() {
            i += 1; // a stray `=` or `"`: skip it
            continue;
        }
        let mut challenge = Challenge { scheme: scheme.to_string(), params: Vec::new() };
        loop {
            while i < b.len() && (is_space(b[i]) || b[i] == b',') {
                i += 1;
            }
            let start = i;
            let name = read_token(&mut i);
            let mut j = i;
            while j < b.len() && is_space(b[j]) {
                j += 1;
            }
            if name.is_empty() || j >= b.len() || b[j] != b'=' {
                i = start; // the next challenge's scheme, or the end
                break;
            }
            i = j + 1;
            while i < b.len() && is_space(b[i]) {
                i += 1;
            }
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut value = String::new();
                let mut chars = input[i..].char_indices();
                let mut end = input.len() - i;
                while let Some((k, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => {
                            end = k + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                i += end;
                value
            } else {
                let start = i;
                while i < b.len() && b[i] != b',' && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                input[start..i].to_string()
            };
            challenge.params.push((name.to_ascii_lowercase(), value));
        }
        out.push(challenge);
    }
    out
}

/// A bearer token and when to stop using it.
#[derive(Clone)]
pub(crate) struct CachedToken {
    pub token: Secret,
    pub renew_at: Instant,
}

impl CachedToken {
    /// A token valid for `expires_in`, renewed a little early (half its lifetime, at most 10 s) so
    /// a request in flight never carries an expired token.
    pub fn new(token: Secret, expires_in: Duration, now: Instant) -> Self {
        let margin = (expires_in / 2).min(Duration::from_secs(10));
        CachedToken { token, renew_at: now + expires_in - margin }
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.renew_at
    }
}

/// Token lifetime when the token server does not say (the token spec's default).
pub(crate) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted_even_from_unparseable_urls() {
        assert_eq!(redact_userinfo("http://robot:pw@[::1"), "http://***@[::1");
        assert_eq!(redact_userinfo("https://u:p@host/v2/?a=b@c"), "https://***@host/v2/?a=b@c");
        assert_eq!(redact_userinfo("https://host/x@y"), "https://host/x@y");
        assert_eq!(redact_userinfo("not a url"), "not a url");
    }

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn bearer_challenges_with_quoted_commas_parse() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:group/app:pull,push",error="insufficient_scope""#,
        );
        assert_eq!(c.len(), 1);
        assert!(c[0].is_bearer());
        assert_eq!(
            params(&c[0]),
            [
                ("realm", "https://auth.example.com/token"),
                ("service", "registry.example.com"),
                ("scope", "repository:group/app:pull,push"),
                ("error", "insufficient_scope"),
            ]
        );
    }

    #[test]
    fn challenge_parsing_tolerates_spacing_case_escapes_and_several_challenges() {
        let c = parse_challenges(r#"bearer Realm = "http://h:1/t" , service=reg, scope="a b \"c\"""#);
        assert_eq!(params(&c[0]), [("realm", "http://h:1/t"), ("service", "reg"), ("scope", r#"a b "c""#)]);

        let c = parse_challenges(r#"Basic realm="tagwarden-test", Bearer realm="http://x/token",service="s""#);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].scheme.as_str(), c[0].param("realm")), ("Basic", Some("tagwarden-test")));
        assert_eq!((c[1].scheme.as_str(), c[1].param("service")), ("Bearer", Some("s")));

        assert_eq!(parse_challenges("Basic").len(), 1);
        assert!(parse_challenges("").is_empty());
        // Unterminated quotes and junk do not panic.
        for junk in [r#"Bearer realm="unterminated"#, "=,=\"", "Bearer ,,, x=", "Bearer realm=\"é,ü\""] {
            let _ = parse_challenges(junk);
        }
        assert_eq!(parse_challenges("Bearer realm=\"é,ü\"")[0].param("realm"), Some("é,ü"));
    }

    #[test]
    fn secrets_are_redacted_everywhere() {
        let creds = Credentials::Basic { username: "robot".into(), password: Secret::new("hunter2") };
        let debug = format!("{creds:?} {:?} {}", Secret::new("hunter2"), Secret::new("hunter2"));
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("robot") && debug.contains("***"));
        assert_eq!(Secret::new("hunter2").expose(), "hunter2");
    }

    #[test]
    fn scopes_follow_the_token_spec() {
        assert_eq!(Scope::Pull("a/b".into()).token_scope().unwrap(), "repository:a/b:pull");
        assert_eq!(Scope::Push("a".into()).token_scope().unwrap(), "repository:a:pull,push");
        assert_eq!(Scope::Delete("a".into()).token_scope().unwrap(), "repository:a:pull,delete");
        assert_eq!(Scope::Catalog.token_scope().unwrap(), "registry:catalog:*");
        assert_eq!(Scope::None.token_scope(), None);
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        let now = Instant::now();
        let t = CachedToken::new(Secret::new("t"), Duration::from_secs(300), now);
        assert!(t.is_fresh(now + Duration::from_secs(289)) && !t.is_fresh(now + Duration::from_secs(290)));
        let short = CachedToken::new(Secret::new("t"), Duration::from_secs(4), now);
        assert!(short.is_fresh(now + Duration::from_secs(1)) && !short.is_fresh(now + Duration::from_secs(2)));
    }
}
