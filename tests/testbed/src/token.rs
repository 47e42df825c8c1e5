//! A tiny token server (Docker registry token authentication) for the test registry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::util::{self, Body, DropConnection};

/// The `service` (JWT audience) the test registry is configured with.
pub const TOKEN_SERVICE: &str = "tagwarden-test-registry";
/// The `issuer` the test registry expects in tokens.
pub const TOKEN_ISSUER: &str = "tagwarden-test-issuer";
/// Lifetime of issued tokens, in seconds.
pub const TOKEN_LIFETIME_SECS: u64 = 300;

/// Options of the token server: the user the system under test logs in as and whether it may delete.
#[derive(Clone, Debug)]
pub struct TokenServerOptions {
    /// Whether the `delete` action is granted to [`TokenServerOptions::user`] (default `true`).
    pub grant_delete: bool,
    /// User name accepted on token requests (HTTP Basic), default `"tagwarden"`.
    pub user: String,
    /// That user's password, default `"tagwarden-password"`.
    pub password: String,
}

impl Default for TokenServerOptions {
    fn default() -> Self {
        TokenServerOptions { grant_delete: true, user: "tagwarden".to_string(), password: "tagwarden-password".to_string() }
    }
}

/// One token handed out by the server, for assertions in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    /// The user the token was issued to.
    pub user: String,
    /// The scopes asked for, as sent (`repository:foo:pull,push`).
    pub requested: Vec<String>,
    /// The scopes granted, in the same `type:name:actions` form (actions may be empty).
    pub granted: Vec<String>,
}

#[derive(Clone)]
struct User {
    password: String,
    grant_delete: bool,
}

struct State {
    users: Mutex<BTreeMap<String, User>>,
    issued: Mutex<Vec<IssuedToken>>,
    count: AtomicUsize,
    key: EncodingKey,
    x5c: String,
}

/// A running token server on 127.0.0.1: its realm URL issues ES256 JWTs (with an `x5c` header) that
/// the registry accepts, to known users only, and counts the tokens it issues.
pub struct TokenServer {
    realm: String,
    cert_pem: String,
    admin: (String, String),
    state: Arc<State>,
    task: JoinHandle<()>,
}

#[derive(Serialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

#[derive(Serialize)]
struct Claims {
    iss: &'static str,
    sub: String,
    aud: &'static str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

impl TokenServer {
    /// Generates a P-256 key and self-signed certificate, binds a free port on 127.0.0.1 and serves
    /// `GET /token`. Besides `opts.user` there is a built-in admin user that is granted everything.
    pub async fn start(opts: TokenServerOptions) -> anyhow::Result<TokenServer> {
        let key_pair = rcgen::KeyPair::generate().context("token server: generating a P-256 key")?;
        let mut params =
            rcgen::CertificateParams::new(vec!["tagwarden-testbed-token".to_string()]).context("token server: certificate parameters")?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "tagwarden testbed token signer");
        let cert = params.self_signed(&key_pair).context("token server: self-signing the certificate")?;
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let key = EncodingKey::from_ec_der(&key_pair.serialize_der());

        let admin = ("testbed-admin".to_string(), format!("admin-{}", util::unique_id()));
        let mut users = BTreeMap::new();
        users.insert(admin.0.clone(), User { password: admin.1.clone(), grant_delete: true });
        users.insert(opts.user.clone(), User { password: opts.password.clone(), grant_delete: opts.grant_delete });
        let state = Arc::new(State { users: Mutex::new(users), issued: Mutex::new(Vec::new()), count: AtomicUsize::new(0), key, x5c });

        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.context("token server: binding 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let handler_state = state.clone();
        let task = util::serve(listener, move |req| {
            let state = handler_state.clone();
            async move { Ok::<_, DropConnection>(handle(&state, req)) }
        });
        Ok(TokenServer { realm: format!("http://127.0.0.1:{port}/token"), cert_pem: cert.pem(), admin, state, task })
    }

    /// The realm URL (`http://127.0.0.1:PORT/token`) that goes into the registry's challenge.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The `service` parameter / JWT audience.
    pub fn service(&self) -> &str {
        TOKEN_SERVICE
    }

    /// The JWT issuer.
    pub fn issuer(&self) -> &str {
        TOKEN_ISSUER
    }

    /// The PEM certificate the registry trusts (`auth.token.rootcertbundle`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes [`TokenServer::cert_pem`] to `path`.
    pub fn write_cert(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, &self.cert_pem).with_context(|| format!("writing token certificate to {}", path.display()))
    }

    /// How many tokens were issued so far (failed requests are not counted).
    pub fn tokens_issued(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Every token issued so far, oldest first.
    pub fn issued(&self) -> Vec<IssuedToken> {
        self.state.issued.lock().unwrap().clone()
    }

    /// The names of the users the server knows (including the built-in admin), sorted.
    pub fn users(&self) -> Vec<String> {
        self.state.users.lock().unwrap().keys().cloned().collect()
    }

    /// Adds (or replaces) a user.
    pub fn add_user(&self, user: &str, password: &str, grant_delete: bool) {
        self.state.users.lock().unwrap().insert(user.to_string(), User { password: password.to_string(), grant_delete });
    }

    /// Changes whether `user` is granted `delete` from now on (tokens already issued keep theirs).
    pub fn set_grant_delete(&self, user: &str, grant_delete: bool) {
        if let Some(u) = self.state.users.lock().unwrap().get_mut(user) {
            u.grant_delete = grant_delete;
        }
    }

    /// The built-in admin's `(user, password)`: granted every requested action.
    pub fn admin_credentials(&self) -> (&str, &str) {
        (&self.admin.0, &self.admin.1)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error(status: u16, code: &str, message: &str) -> Response<Body> {
    let mut resp = util::json_response(status, &json!({"errors": [{"code": code, "message": message, "detail": null}]}));
    if status == 401 {
        resp.headers_mut().insert("WWW-Authenticate", hyper::header::HeaderValue::from_static("Basic realm=\"tagwarden-test-token\""));
    }
    resp
}

fn basic_credentials(req: &Request<Incoming>) -> Option<(String, String)> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Splits `type:name:actions` (the name may itself contain colons, e.g. a host with a port).
fn parse_scope(scope: &str) -> Option<(String, String, Vec<String>)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions = actions.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect();
    Some((kind.to_string(), name.to_string(), actions))
}

fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/token" {
        return error(404, "NOT_FOUND", "only /token is served");
    }
    if req.method() != hyper::Method::GET {
        return error(405, "UNSUPPORTED", "only GET /token is supported");
    }
    let Some((user, password)) = basic_credentials(&req) else {
        return error(401, "UNAUTHORIZED", "credentials required (HTTP Basic)");
    };
    let Some(entry) = state.users.lock().unwrap().get(&user).cloned() else {
        return error(401, "UNAUTHORIZED", "unknown user");
    };
    if entry.password != password {
        return error(401, "UNAUTHORIZED", "wrong password");
    }
    let query = util::parse_query(req.uri().query().unwrap_or(""));
    let mut requested = Vec::new();
    for (k, v) in &query {
        match k.as_str() {
            "service" if v != TOKEN_SERVICE => {
                return error(400, "INVALID_REQUEST", &format!("unknown service {v:?}, expected {TOKEN_SERVICE:?}"));
            }
            "scope" => requested.extend(v.split(' ').filter(|s| !s.is_empty()).map(String::from)),
            _ => {}
        }
    }

    let mut access = Vec::new();
    let mut granted = Vec::new();
    for scope in &requested {
        let Some((kind, name, actions)) = parse_scope(scope) else {
            return error(400, "INVALID_REQUEST", &format!("malformed scope {scope:?}"));
        };
        let actions: Vec<String> = if kind == "repository" {
            let mut out: Vec<String> = Vec::new();
            for a in actions {
                let expanded: &[&str] = match a.as_str() {
                    "*" => &["pull", "push", "delete"],
                    "pull" => &["pull"],
                    "push" => &["push"],
                    "delete" => &["delete"],
                    _ => &[],
                };
                for e in expanded {
                    if (*e != "delete" || entry.grant_delete) && !out.iter().any(|x| x == e) {
                        out.push(e.to_string());
                    }
                }
            }
            out
        } else {
            actions
        };
        granted.push(format!("{kind}:{name}:{}", actions.join(",")));
        access.push(Access { kind, name, actions });
    }

    let now = util::now_secs();
    let claims = Claims {
        iss: TOKEN_ISSUER,
        sub: user.clone(),
        aud: TOKEN_SERVICE,
        exp: now + TOKEN_LIFETIME_SECS,
        nbf: now.saturating_sub(10),
        iat: now,
        jti: util::unique_id(),
        access,
    };
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some("JWT".to_string());
    header.x5c = Some(vec![state.x5c.clone()]);
    let token = match jsonwebtoken::encode(&header, &claims, &state.key) {
        Ok(t) => t,
        Err(e) => return error(500, "UNKNOWN", &format!("signing failed: {e}")),
    };
    let issued_at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    state.issued.lock().unwrap().push(IssuedToken { user, requested, granted });
    state.count.fetch_add(1, Ordering::SeqCst);
    util::json_response(
        200,
        &json!({
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_LIFETIME_SECS,
            "issued_at": issued_at,
        }),
    )
}
