//! A stand-in for the v2 project and committee services on loopback (real
//! HTTP), and the tests of the v2 client and token signer against it.
//!
//! The shapes follow the public Goa designs:
//! - linuxfoundation/lfx-v2-project-service `cmd/project-api/design/project.go`:
//!   `POST /projects` → 201 with the project (`uid`); `GET /projects/{id}` →
//!   body + `ETag`; `PUT`/`DELETE /projects/{id}` with the tag (204 on delete);
//!   required on create/update: `slug`, `name`, `parent_uid`, `description`
//!   (which may be empty); `409` on a duplicate slug.
//! - linuxfoundation/lfx-v2-committee-service `cmd/committee-api/design/committee.go`:
//!   `POST /committees` (201, `uid` and `sso_group_name`),
//!   `GET|PUT|DELETE /committees/{uid}`, `POST /committees/{uid}/members`,
//!   `GET|PUT|DELETE /committees/{uid}/members/{member_uid}`; `v=1` is required
//!   (`VersionAttribute`), `If-Match` carries the tag, members need `email`.
//!
//! What the real services do beyond that and the tests rely on: strong ETags
//! that change on every write, `412` on a stale tag, JWTs verified with
//! Heimdall's public key (PS256, issuer, audience per service, `nbf`/`exp`).
//! Faults (status codes, latency) can be queued to test retries.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use lfx_sync::sync::v2::auth::{self, COMMITTEE_AUDIENCE, PROJECT_AUDIENCE, Signer};
use lfx_sync::sync::v2::client::{ApiError, Service, V2Client};
use lfx_sync::sync::v2::mapping::Fields;
use ring::signature::{RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};
use serde_json::{Value, json};

pub const TEST_KEY: &[u8] = include_bytes!("../fixtures/v2/heimdall-test-key.pem");
pub const IMPOSTOR_KEY: &[u8] = include_bytes!("../fixtures/v2/impostor-test-key.pem");
pub const KID: &str = "test-kid";

/// A fault served instead of (or before) the next answer.
#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16),
    Delay(Duration),
    /// Serve the request normally (to aim a later fault).
    Pass,
    /// Someone else wrote every record in v2 just before this request.
    BumpEtags,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub status: u16,
    /// The verified token's `principal` and `aud` (`None`: rejected).
    pub principal: Option<String>,
    pub audience: Option<String>,
    pub if_match: Option<String>,
    pub x_sync: Option<String>,
    pub skip_notification: Option<String>,
    pub body: Option<Value>,
}

#[derive(Debug, Clone)]
struct Stored {
    record: Fields,
    etag: String,
}

#[derive(Default)]
struct State {
    projects: HashMap<String, Stored>,
    settings: HashMap<String, Stored>,
    committees: HashMap<String, Stored>,
    /// (committee uid, member uid).
    members: HashMap<(String, String), Stored>,
    next_id: u64,
    faults: VecDeque<Fault>,
    seen: Vec<Seen>,
}

impl State {
    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Strong tags, never reused: every write gets a new one.
    fn etag(&mut self) -> String {
        format!("\"{}\"", self.next())
    }
}

pub struct StandIn {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Serves both services on one loopback port, trusting tokens signed by
    /// the key whose PKCS#1 public key is `public_key`.
    pub async fn start(public_key: Vec<u8>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let public_key = Arc::new(public_key);
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&shared);
                let key = Arc::clone(&public_key);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        let key = Arc::clone(&key);
                        async move { Ok::<_, Infallible>(handle(&state, &key, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().faults.extend(faults);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn projects(&self) -> Vec<Fields> {
        let state = self.state.lock().unwrap();
        state.projects.values().map(|s| s.record.clone()).collect()
    }

    pub fn members(&self) -> Vec<Fields> {
        let state = self.state.lock().unwrap();
        state.members.values().map(|s| s.record.clone()).collect()
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: Option<&Value>, etag: Option<&str>) -> Answer {
    let mut response = Response::builder().status(status);
    if let Some(etag) = etag {
        response = response.header("ETag", etag);
    }
    let body = match body {
        Some(body) => {
            response = response.header("Content-Type", "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    response.body(Full::new(body)).unwrap()
}

fn error(status: StatusCode, message: &str) -> Answer {
    // Goa's error body shape.
    answer(
        status,
        Some(&json!({"name": status.canonical_reason(), "message": message})),
        None,
    )
}

async fn handle(state: &Mutex<State>, public_key: &[u8], request: Request<Incoming>) -> Answer {
    let fault = state.lock().unwrap().faults.pop_front();
    match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap();
            record(state, &request, None, status, None);
            return error(status, "injected fault");
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::BumpEtags) => {
            let mut s = state.lock().unwrap();
            let State {
                projects,
                settings,
                committees,
                members,
                next_id,
                ..
            } = &mut *s;
            let stored = projects
                .values_mut()
                .chain(settings.values_mut())
                .chain(committees.values_mut())
                .chain(members.values_mut());
            for record in stored {
                *next_id += 1;
                record.etag = format!("\"{next_id}\"");
            }
        }
        Some(Fault::Pass) | None => {}
    }
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request = Request::from_parts(parts, ());
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let audience = if segments.first() == Some(&"projects") {
        PROJECT_AUDIENCE
    } else {
        COMMITTEE_AUDIENCE
    };
    let claims = request
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| "no bearer token".to_string())
        .and_then(|token| verify(token, public_key, audience, SystemTime::now()));
    let claims = match claims {
        Ok(claims) => claims,
        Err(why) => {
            record(
                state,
                &request,
                None,
                StatusCode::UNAUTHORIZED,
                body.clone(),
            );
            return error(StatusCode::UNAUTHORIZED, &why);
        }
    };
    let if_match = request
        .headers()
        .get("If-Match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let method = request.method().as_str().to_string();
    let mut guard = state.lock().unwrap();
    let s = &mut *guard;
    let committee_api = audience == COMMITTEE_AUDIENCE;
    let response = if committee_api && !query.split('&').any(|p| p == "v=1") {
        // committee-service: `version` is a required payload attribute.
        error(
            StatusCode::BAD_REQUEST,
            "missing required query parameter v",
        )
    } else {
        route(s, &method, &segments, body.as_ref(), if_match.as_deref())
    };
    let status = response.status();
    drop(guard);
    record(state, &request, Some(&claims), status, body);
    response
}

fn record(
    state: &Mutex<State>,
    request: &Request<impl Sized>,
    claims: Option<&Value>,
    status: StatusCode,
    body: Option<Value>,
) {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let seen = Seen {
        method: request.method().as_str().to_string(),
        target: request
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        status: status.as_u16(),
        principal: claims.and_then(|c| c["principal"].as_str().map(str::to_string)),
        audience: claims.and_then(|c| c["aud"].as_str().map(str::to_string)),
        if_match: header("If-Match"),
        x_sync: header("X-Sync"),
        skip_notification: header("X-Skip-Notification"),
        body,
    };
    state.lock().unwrap().seen.push(seen);
}

/// Checks a token as the v2 services do; its claims when it is good.
pub fn verify(
    token: &str,
    public_key: &[u8],
    audience: &str,
    now: SystemTime,
) -> Result<Value, String> {
    let (input, signature) = token.rsplit_once('.').ok_or("not a JWT")?;
    let (header, claims) = input.split_once('.').ok_or("not a JWT")?;
    let decode = |part: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let header = decode(header)?;
    if header["alg"] != "PS256" || header["kid"] != KID {
        return Err(format!("unexpected header {header}"));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| e.to_string())?;
    UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, public_key)
        .verify(input.as_bytes(), &signature)
        .map_err(|_| "bad signature".to_string())?;
    let claims = decode(claims)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let number = |name: &str| claims[name].as_u64().ok_or(format!("no {name}"));
    if claims["iss"] != auth::ISSUER {
        return Err("wrong issuer".into());
    }
    if claims["aud"] != audience {
        return Err(format!("wrong audience {}", claims["aud"]));
    }
    if number("exp")? <= now {
        return Err("expired".into());
    }
    if number("nbf")? > now || number("iat")? > now {
        return Err("not valid yet".into());
    }
    if claims["principal"].as_str().is_none_or(str::is_empty)
        || claims["sub"] != claims["principal"]
    {
        return Err("no principal".into());
    }
    if claims["jti"].as_str().is_none_or(str::is_empty) {
        return Err("no jti".into());
    }
    Ok(claims)
}

fn route(
    s: &mut State,
    method: &str,
    segments: &[&str],
    body: Option<&Value>,
    if_match: Option<&str>,
) -> Answer {
    match (method, segments) {
        ("POST", ["projects"]) => {
            let Some(body) = object(body) else {
                return error(StatusCode::BAD_REQUEST, "body is not an object");
            };
            if let Some(missing) = missing(&body, &["slug", "name", "parent_uid"]) {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("missing required field {missing}"),
                );
            }
            // Required as well, but Goa accepts it empty.
            if !body.get("description").is_some_and(Value::is_string) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "missing required field description",
                );
            }
            if s.projects
                .values()
                .any(|p| p.record.get("slug") == body.get("slug"))
            {
                return error(StatusCode::CONFLICT, "project slug already exists");
            }
            let uid = format!("project-{}", s.next());
            create(&mut s.projects, uid.clone(), body, |r| {
                r.insert("uid".into(), uid.clone().into());
            });
            let etag = s.etag();
            s.projects.get_mut(&uid).unwrap().etag = etag;
            // Settings exist from the start, as project-service creates them.
            let etag = s.etag();
            s.settings.insert(
                uid.clone(),
                Stored {
                    record: Fields::from_iter([("uid".to_string(), Value::from(uid.clone()))]),
                    etag,
                },
            );
            created(&s.projects[&uid].record)
        }
        ("GET", ["projects", uid]) => read(&s.projects, uid),
        ("PUT", ["projects", uid]) => {
            if let Some(body) = object(body)
                && let Some(missing) = missing(&body, &["slug", "name", "parent_uid"])
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("missing required field {missing}"),
                );
            }
            let etag = s.etag();
            write(&mut s.projects, uid, body, if_match, etag)
        }
        ("DELETE", ["projects", uid]) => {
            let answer = remove(&mut s.projects, uid, if_match);
            if answer.status() == StatusCode::NO_CONTENT {
                s.settings.remove(*uid);
            }
            answer
        }
        ("GET", ["projects", uid, "settings"]) => read(&s.settings, uid),
        ("PUT", ["projects", uid, "settings"]) => {
            let etag = s.etag();
            write(&mut s.settings, uid, body, if_match, etag)
        }
        ("POST", ["committees"]) => {
            let Some(body) = object(body) else {
                return error(StatusCode::BAD_REQUEST, "body is not an object");
            };
            if let Some(missing) = missing(&body, &["name", "category", "project_uid"]) {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("missing required field {missing}"),
                );
            }
            let project = body["project_uid"].as_str().unwrap_or_default();
            if !s.projects.contains_key(project) {
                return error(StatusCode::BAD_REQUEST, "project not found");
            }
            let uid = format!("committee-{}", s.next());
            let sso = format!("{}-{}", project, body["name"].as_str().unwrap_or_default());
            create(&mut s.committees, uid.clone(), body, |r| {
                r.insert("uid".into(), uid.clone().into());
                r.insert(
                    "sso_group_name".into(),
                    sso.to_lowercase().replace(' ', "-").into(),
                );
            });
            let etag = s.etag();
            s.committees.get_mut(&uid).unwrap().etag = etag;
            created(&s.committees[&uid].record)
        }
        ("GET", ["committees", uid]) => read(&s.committees, uid),
        ("PUT", ["committees", uid]) => {
            let etag = s.etag();
            write(&mut s.committees, uid, body, if_match, etag)
        }
        ("DELETE", ["committees", uid]) => {
            let answer = remove(&mut s.committees, uid, if_match);
            if answer.status() == StatusCode::NO_CONTENT {
                s.members.retain(|(c, _), _| c != uid);
            }
            answer
        }
        ("POST", ["committees", committee, "members"]) => {
            if !s.committees.contains_key(*committee) {
                return error(StatusCode::NOT_FOUND, "committee not found");
            }
            let Some(body) = object(body) else {
                return error(StatusCode::BAD_REQUEST, "body is not an object");
            };
            if let Some(missing) = missing(&body, &["email"]) {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("missing required field {missing}"),
                );
            }
            if s.members
                .iter()
                .any(|((c, _), m)| c == committee && m.record.get("email") == body.get("email"))
            {
                return error(StatusCode::CONFLICT, "member already exists");
            }
            let uid = format!("member-{}", s.next());
            let etag = s.etag();
            let mut record = body;
            record.insert("uid".into(), uid.clone().into());
            record.insert("committee_uid".into(), (*committee).into());
            s.members.insert(
                ((*committee).to_string(), uid.clone()),
                Stored { record, etag },
            );
            created(&s.members[&((*committee).to_string(), uid)].record)
        }
        (_, ["committees", committee, "members", member]) => {
            let key = ((*committee).to_string(), (*member).to_string());
            let etag = s.etag();
            let mut one: HashMap<String, Stored> = s
                .members
                .remove(&key)
                .map(|m| HashMap::from([(key.1.clone(), m)]))
                .unwrap_or_default();
            let answer = match method {
                "GET" => read(&one, member),
                "PUT" => write(&mut one, member, body, if_match, etag),
                "DELETE" => remove(&mut one, member, if_match),
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            };
            if let Some(stored) = one.remove(*member) {
                s.members.insert(key, stored);
            }
            answer
        }
        _ => error(StatusCode::NOT_FOUND, "no such route"),
    }
}

fn object(body: Option<&Value>) -> Option<Fields> {
    body.and_then(Value::as_object).cloned()
}

fn missing<'a>(body: &Fields, required: &[&'a str]) -> Option<&'a str> {
    required
        .iter()
        .copied()
        .find(|field| match body.get(*field) {
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Null) | None => true,
            Some(_) => false,
        })
}

fn create(
    table: &mut HashMap<String, Stored>,
    uid: String,
    mut record: Fields,
    extra: impl FnOnce(&mut Fields),
) {
    extra(&mut record);
    record.insert("created_at".into(), "2026-01-01T00:00:00Z".into());
    table.insert(
        uid,
        Stored {
            record,
            etag: String::new(),
        },
    );
}

fn created(record: &Fields) -> Answer {
    answer(
        StatusCode::CREATED,
        Some(&Value::Object(record.clone())),
        None,
    )
}

fn read(table: &HashMap<String, Stored>, uid: &str) -> Answer {
    match table.get(uid) {
        Some(stored) => answer(
            StatusCode::OK,
            Some(&Value::Object(stored.record.clone())),
            Some(&stored.etag),
        ),
        None => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// A PUT: the body replaces the record (read-only fields kept) when the tag
/// matches.
fn write(
    table: &mut HashMap<String, Stored>,
    uid: &str,
    body: Option<&Value>,
    if_match: Option<&str>,
    new_etag: String,
) -> Answer {
    let Some(stored) = table.get_mut(uid) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let Some(tag) = if_match else {
        return error(StatusCode::BAD_REQUEST, "If-Match is required");
    };
    if tag != stored.etag {
        return error(StatusCode::PRECONDITION_FAILED, "etag mismatch");
    }
    let Some(mut record) = object(body) else {
        return error(StatusCode::BAD_REQUEST, "body is not an object");
    };
    for read_only in ["uid", "created_at", "sso_group_name", "committee_uid"] {
        match stored.record.get(read_only) {
            Some(value) => record.insert(read_only.into(), value.clone()),
            None => record.remove(read_only),
        };
    }
    stored.record = record;
    stored.etag = new_etag;
    answer(
        StatusCode::OK,
        Some(&Value::Object(stored.record.clone())),
        Some(&stored.etag),
    )
}

fn remove(table: &mut HashMap<String, Stored>, uid: &str, if_match: Option<&str>) -> Answer {
    let Some(stored) = table.get(uid) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    match if_match {
        None => error(StatusCode::BAD_REQUEST, "If-Match is required"),
        Some(tag) if tag != stored.etag => error(StatusCode::PRECONDITION_FAILED, "etag mismatch"),
        Some(_) => {
            table.remove(uid);
            answer(StatusCode::NO_CONTENT, None, None)
        }
    }
}

// ---- tests of the client and signer against the stand-in ----

pub struct Setup {
    pub standin: StandIn,
    pub client: V2Client,
    pub projects: Service,
    pub committees: Service,
    pub signer: Arc<Signer>,
}

pub const SERVICE_PRINCIPAL: &str = "lfx-sync-test@clients";

pub async fn setup(timeout: Duration) -> Setup {
    let signer = Arc::new(Signer::from_pem(TEST_KEY, KID).unwrap());
    let standin = StandIn::start(signer.public_key_der().to_vec()).await;
    let client = V2Client::new(Arc::clone(&signer), SERVICE_PRINCIPAL.into(), timeout).unwrap();
    Setup {
        projects: Service::projects(&standin.url()),
        committees: Service::committees(&standin.url()),
        standin,
        client,
        signer,
    }
}

fn fields(value: Value) -> Fields {
    value.as_object().cloned().unwrap()
}

#[tokio::test]
async fn project_lifecycle_with_etags() {
    let t = setup(Duration::from_secs(5)).await;
    let body = fields(
        json!({"name": "Root child", "slug": "child", "parent_uid": "root", "description": "d"}),
    );
    let created = t
        .client
        .create(&t.projects, "/projects", &body, "jdoe", &[])
        .await
        .unwrap();
    let uid = created["uid"].as_str().unwrap().to_string();
    let path = format!("/projects/{uid}");

    let first = t.client.get(&t.projects, &path).await.unwrap();
    assert_eq!(first.record["slug"], "child");
    let mut changed = first.record.clone();
    changed.insert("description".into(), "new".into());
    t.client
        .update(&t.projects, &path, &first.etag, &changed, "jdoe", &[])
        .await
        .unwrap();
    let second = t.client.get(&t.projects, &path).await.unwrap();
    assert_ne!(second.etag, first.etag, "every write changes the tag");
    assert_eq!(second.record["description"], "new");

    // The old tag is stale now: 412, for PUT and DELETE alike.
    let stale = t
        .client
        .update(&t.projects, &path, &first.etag, &changed, "jdoe", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(stale, ApiError::PreconditionFailed { .. }),
        "{stale}"
    );
    assert!(!stale.is_retryable());
    let stale = t
        .client
        .delete(&t.projects, &path, &first.etag, "jdoe", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(stale, ApiError::PreconditionFailed { .. }),
        "{stale}"
    );

    t.client
        .delete(&t.projects, &path, &second.etag, "jdoe", &[])
        .await
        .unwrap();
    let gone = t.client.get(&t.projects, &path).await.unwrap_err();
    assert!(matches!(gone, ApiError::NotFound { .. }), "{gone}");

    // Writes carry the v1 principal, reads the service principal; all
    // verified for the project-service audience, all with X-Sync: false.
    let seen = t.standin.seen();
    assert_eq!(seen.len(), 8);
    for s in &seen {
        assert_eq!(s.audience.as_deref(), Some(PROJECT_AUDIENCE), "{s:?}");
        assert_eq!(s.x_sync.as_deref(), Some("false"), "{s:?}");
        let expected = if s.method == "GET" {
            SERVICE_PRINCIPAL
        } else {
            "jdoe"
        };
        assert_eq!(s.principal.as_deref(), Some(expected), "{s:?}");
    }
    let put = seen.iter().find(|s| s.method == "PUT").unwrap();
    assert_eq!(put.if_match.as_deref(), Some(first.etag.as_str()));
    assert_eq!(
        put.body.as_ref().map(|b| &b["description"]),
        Some(&json!("new"))
    );
}

#[tokio::test]
async fn committees_and_members_with_version_and_headers() {
    let t = setup(Duration::from_secs(5)).await;
    let project = t
        .client
        .create(
            &t.projects,
            "/projects",
            &fields(json!({"name": "P", "slug": "p", "parent_uid": "root", "description": ""})),
            "jdoe",
            &[],
        )
        .await
        .unwrap();
    let committee = t
        .client
        .create(
            &t.committees,
            "/committees?v=1",
            &fields(json!({"name": "TSC", "category": "Board", "project_uid": project["uid"]})),
            "jdoe",
            &[],
        )
        .await
        .unwrap();
    assert!(committee["sso_group_name"].as_str().is_some());
    let members = format!(
        "/committees/{}/members?v=1",
        committee["uid"].as_str().unwrap()
    );
    let member = t
        .client
        .create(
            &t.committees,
            &members,
            &fields(json!({"email": "a@example.org", "version": "1"})),
            "jdoe",
            &[("X-Skip-Notification", "true")],
        )
        .await
        .unwrap();
    let path = format!(
        "/committees/{}/members/{}?v=1",
        committee["uid"].as_str().unwrap(),
        member["uid"].as_str().unwrap()
    );
    let current = t.client.get(&t.committees, &path).await.unwrap();
    assert_eq!(current.record["email"], "a@example.org");
    t.client
        .delete(&t.committees, &path, &current.etag, "jdoe", &[])
        .await
        .unwrap();
    assert!(t.standin.members().is_empty());

    let seen = t.standin.seen();
    let post = &seen[2];
    assert_eq!(post.skip_notification.as_deref(), Some("true"));
    assert_eq!(post.target, members);
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.audience.as_deref() == Some(COMMITTEE_AUDIENCE))
    );

    // Without `v=1` committee-service refuses: a permanent error with its body.
    let err = t
        .client
        .create(
            &t.committees,
            "/committees",
            &fields(json!({"name": "X", "category": "Board", "project_uid": project["uid"]})),
            "jdoe",
            &[],
        )
        .await
        .unwrap_err();
    match &err {
        ApiError::Rejected {
            status: 400, body, ..
        } => assert!(body.contains("v"), "{body}"),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn validation_errors_are_permanent_and_keep_the_body() {
    let t = setup(Duration::from_secs(5)).await;
    let err = t
        .client
        .create(
            &t.projects,
            "/projects",
            &fields(json!({"name": "no slug"})),
            "jdoe",
            &[],
        )
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    match &err {
        ApiError::Rejected {
            status: 400, body, ..
        } => {
            assert!(body.contains("missing required field slug"), "{body}")
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn faults_are_retryable_and_pass() {
    let t = setup(Duration::from_millis(300)).await;
    t.standin.inject([
        Fault::Status(503),
        Fault::Status(429),
        Fault::Status(500),
        Fault::Delay(Duration::from_millis(800)),
    ]);
    let body = fields(json!({"name": "P", "slug": "p", "parent_uid": "root", "description": ""}));
    let mut errors = Vec::new();
    let created = loop {
        match t
            .client
            .create(&t.projects, "/projects", &body, "jdoe", &[])
            .await
        {
            Ok(created) => break created,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                errors.push(e);
            }
        }
        assert!(errors.len() <= 4, "faults do not end: {errors:?}");
    };
    assert!(
        matches!(errors[3], ApiError::Timeout { .. }),
        "{}",
        errors[3]
    );
    let statuses: Vec<u16> = t.standin.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses[..3], [503, 429, 500]);
    assert!(created["uid"].as_str().is_some());
    // The timed-out request is still served later; it then meets the slug
    // the retry created (409): a timeout can mean "done", which is why
    // handlers look the mapping up before creating again.
    assert_eq!(t.standin.projects().len(), 1);
}

#[tokio::test]
async fn unreachable_service_is_retryable() {
    let t = setup(Duration::from_secs(2)).await;
    // A port nothing listens on: bind, note it, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let nowhere = Service::projects(&format!("http://127.0.0.1:{port}"));
    let err = t.client.get(&nowhere, "/projects/x").await.unwrap_err();
    assert!(matches!(err, ApiError::Transport { .. }), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn standin_rejects_bad_tokens() {
    let t = setup(Duration::from_secs(5)).await;
    let key = t.signer.public_key_der().to_vec();
    let now = SystemTime::now();
    let good = t.signer.sign(PROJECT_AUDIENCE, "jdoe", now).unwrap();
    assert!(verify(&good, &key, PROJECT_AUDIENCE, now).is_ok());
    assert_eq!(
        verify(&good, &key, COMMITTEE_AUDIENCE, now).unwrap_err(),
        "wrong audience \"lfx-v2-project-service\""
    );
    let expired = t
        .signer
        .sign(PROJECT_AUDIENCE, "jdoe", now - Duration::from_secs(301))
        .unwrap();
    assert_eq!(
        verify(&expired, &key, PROJECT_AUDIENCE, now).unwrap_err(),
        "expired"
    );
    let impostor = Signer::from_pem(IMPOSTOR_KEY, KID).unwrap();
    let forged = impostor.sign(PROJECT_AUDIENCE, "jdoe", now).unwrap();
    assert_eq!(
        verify(&forged, &key, PROJECT_AUDIENCE, now).unwrap_err(),
        "bad signature"
    );

    // Over HTTP: a client signing with the wrong key is refused with 401,
    // which is permanent (retrying cannot fix a key).
    let client = V2Client::new(
        Arc::new(impostor),
        SERVICE_PRINCIPAL.into(),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = client.get(&t.projects, "/projects/x").await.unwrap_err();
    assert!(
        matches!(err, ApiError::Rejected { status: 401, .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
}
