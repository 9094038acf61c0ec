//! HTTP client of the v2 project and committee services.
//!
//! Both are Goa services (linuxfoundation/lfx-v2-project-service
//! `cmd/project-api/design/project.go`, linuxfoundation/lfx-v2-committee-service
//! `cmd/committee-api/design/committee.go`): JSON bodies, `201` with the new
//! record (its `uid`) on create, the `ETag` response header on reads, and
//! optimistic concurrency on PUT/DELETE (`412` when the tag is stale).
//!
//! Errors are typed by what the caller should do next: retry later
//! ([`ApiError::is_retryable`]: 5xx, 429, timeouts, connection failures),
//! re-read and retry ([`ApiError::PreconditionFailed`]), or give up with the
//! service's answer ([`ApiError::Rejected`], kept for the dead letter).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, ETAG, IF_MATCH};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::auth::{AuthError, COMMITTEE_AUDIENCE, PROJECT_AUDIENCE, Signer};
use super::mapping::Fields;

/// Larger answers are not records: cut off rather than buffered.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// Error bodies are kept this long in errors (they go to dead letters).
const MAX_ERROR_BODY: usize = 2048;

/// One v2 service: where it is and the audience its tokens name.
#[derive(Debug, Clone)]
pub struct Service {
    base: String,
    audience: &'static str,
}

impl Service {
    /// `PROJECT_SERVICE_URL`.
    pub fn projects(base_url: &str) -> Self {
        Self::new(base_url, PROJECT_AUDIENCE)
    }

    /// `COMMITTEE_SERVICE_URL`.
    pub fn committees(base_url: &str) -> Self {
        Self::new(base_url, COMMITTEE_AUDIENCE)
    }

    fn new(base_url: &str, audience: &'static str) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            audience,
        }
    }

    pub fn audience(&self) -> &'static str {
        self.audience
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A v2 record and the ETag it was read with.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub record: Fields,
    pub etag: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method} {url}: HTTP {status}: {body}")]
    Unavailable {
        method: Method,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{method} {url}: no answer within {timeout:?}")]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
    #[error("{method} {url}: {reason}")]
    Transport {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("{method} {url}: the record changed since it was read (HTTP 412)")]
    PreconditionFailed { method: Method, url: String },
    #[error("{method} {url}: not found")]
    NotFound { method: Method, url: String },
    #[error("{method} {url}: rejected with HTTP {status}: {body}")]
    Rejected {
        method: Method,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{method} {url}: unexpected answer: {reason}")]
    BadResponse {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl ApiError {
    /// Worth another attempt later, unchanged: the service was unavailable,
    /// throttling, slow or unreachable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Timeout { .. } | Self::Transport { .. }
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot load the TLS root certificates: {0}")]
pub struct ClientSetupError(String);

/// A request header beyond the ones every request carries.
pub type Header<'a> = (&'static str, &'a str);

pub struct V2Client {
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    signer: Arc<Signer>,
    service_principal: String,
    timeout: Duration,
}

impl V2Client {
    /// `service_principal` (`<HEIMDALL_CLIENT_ID>@clients`) signs the reads;
    /// `timeout` bounds each request, body included.
    pub fn new(
        signer: Arc<Signer>,
        service_principal: String,
        timeout: Duration,
    ) -> Result<Self, ClientSetupError> {
        // ring is the only rustls crypto provider built here, so the default
        // provider is unambiguous.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| ClientSetupError(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(https),
            signer,
            service_principal,
            timeout,
        })
    }

    pub fn service_principal(&self) -> &str {
        &self.service_principal
    }

    /// GET a record with its ETag, as the service principal.
    pub async fn get(&self, service: &Service, path: &str) -> Result<Versioned, ApiError> {
        let (method, url) = (Method::GET, service.url(path));
        let answer = self
            .send(
                service,
                Method::GET,
                path,
                &self.service_principal,
                None,
                None,
                &[],
            )
            .await?;
        let record = answer.json(&method, &url)?;
        let etag = answer
            .etag
            .ok_or_else(|| bad(&method, &url, "no ETag header"))?;
        Ok(Versioned { record, etag })
    }

    /// POST a new record as `principal`; the created record (with `uid`).
    pub async fn create(
        &self,
        service: &Service,
        path: &str,
        body: &Fields,
        principal: &str,
        headers: &[Header<'_>],
    ) -> Result<Fields, ApiError> {
        let (method, url) = (Method::POST, service.url(path));
        let answer = self
            .send(
                service,
                Method::POST,
                path,
                principal,
                None,
                Some(body),
                headers,
            )
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(bad(
                &method,
                &url,
                format!("HTTP {} instead of 201", answer.status),
            ));
        }
        let record = answer.json(&method, &url)?;
        match record.get("uid").and_then(|u| u.as_str()) {
            Some(uid) if !uid.is_empty() => Ok(record),
            _ => Err(bad(&method, &url, "no uid in the created record")),
        }
    }

    /// PUT the whole record as `principal`, if it still has `etag`.
    pub async fn update(
        &self,
        service: &Service,
        path: &str,
        etag: &str,
        body: &Fields,
        principal: &str,
        headers: &[Header<'_>],
    ) -> Result<(), ApiError> {
        self.send(
            service,
            Method::PUT,
            path,
            principal,
            Some(etag),
            Some(body),
            headers,
        )
        .await
        .map(drop)
    }

    /// DELETE as `principal`, if the record still has `etag`.
    pub async fn delete(
        &self,
        service: &Service,
        path: &str,
        etag: &str,
        principal: &str,
        headers: &[Header<'_>],
    ) -> Result<(), ApiError> {
        self.send(
            service,
            Method::DELETE,
            path,
            principal,
            Some(etag),
            None,
            headers,
        )
        .await
        .map(drop)
    }

    // The one path of every verb; a request struct would only rename these.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        service: &Service,
        method: Method,
        path: &str,
        principal: &str,
        etag: Option<&str>,
        body: Option<&Fields>,
        headers: &[Header<'_>],
    ) -> Result<Answer, ApiError> {
        let url = service.url(path);
        let token = self.signer.token(service.audience, principal)?;
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            // Tells the v2 services not to echo this change back towards v1.
            .header("X-Sync", "false");
        if let Some(etag) = etag {
            // `If-Match` per SPEC §7.2; older project-service designs read
            // the tag from an `ETag` request header instead, so send both.
            request = request.header(IF_MATCH, etag).header(ETAG, etag);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let payload = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(
                    serde_json::to_vec(body)
                        .map_err(|e| ApiError::InvalidRequest(format!("{method} {url}: {e}")))?,
                )
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| ApiError::InvalidRequest(format!("{method} {url}: {e}")))?;

        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| ApiError::Transport {
                    method: method.clone(),
                    url: url.clone(),
                    reason: error_chain(&e),
                })?;
            let status = response.status();
            let etag = response
                .headers()
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| ApiError::Transport {
                    method: method.clone(),
                    url: url.clone(),
                    reason: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, ApiError>(Answer { status, etag, body })
        };
        let answer = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ApiError::Timeout {
                method: method.clone(),
                url: url.clone(),
                timeout: self.timeout,
            })??;
        classify(method, url, answer)
    }
}

struct Answer {
    status: StatusCode,
    etag: Option<String>,
    body: Bytes,
}

impl Answer {
    fn json(&self, method: &Method, url: &str) -> Result<Fields, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| bad(method, url, format!("body is not a JSON object: {e}")))
    }
}

fn classify(method: Method, url: String, answer: Answer) -> Result<Answer, ApiError> {
    let status = answer.status;
    if status.is_success() {
        return Ok(answer);
    }
    let body = excerpt(&answer.body);
    Err(match status {
        StatusCode::PRECONDITION_FAILED => ApiError::PreconditionFailed { method, url },
        StatusCode::NOT_FOUND => ApiError::NotFound { method, url },
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => ApiError::Unavailable {
            method,
            url,
            status: status.as_u16(),
            body,
        },
        s if s.is_server_error() => ApiError::Unavailable {
            method,
            url,
            status: s.as_u16(),
            body,
        },
        s => ApiError::Rejected {
            method,
            url,
            status: s.as_u16(),
            body,
        },
    })
}

fn bad(method: &Method, url: &str, reason: impl Into<String>) -> ApiError {
    ApiError::BadResponse {
        method: method.clone(),
        url: url.to_string(),
        reason: reason.into(),
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(MAX_ERROR_BODY) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

/// hyper's errors say little at the top level ("client error (Connect)").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            etag: None,
            body: Bytes::from(body.to_string()),
        }
    }

    fn kind(status: u16) -> ApiError {
        match classify(
            Method::PUT,
            "http://x/projects/1".into(),
            answer(status, "no"),
        ) {
            Err(e) => e,
            Ok(_) => panic!("{status} is not an error"),
        }
    }

    #[test]
    fn statuses_are_classified_by_what_to_do_next() {
        for status in [500, 502, 503, 504, 429, 408] {
            assert!(kind(status).is_retryable(), "{status}");
        }
        assert!(matches!(kind(412), ApiError::PreconditionFailed { .. }));
        assert!(matches!(kind(404), ApiError::NotFound { .. }));
        for status in [400, 401, 403, 409, 422] {
            let e = kind(status);
            assert!(!e.is_retryable(), "{status}");
            assert!(matches!(e, ApiError::Rejected { .. }), "{status}");
        }
        assert!(classify(Method::GET, "u".into(), answer(204, "")).is_ok());
    }

    #[test]
    fn rejections_keep_the_body_for_the_dead_letter() {
        let e = kind(400);
        assert!(e.to_string().contains("HTTP 400: no"), "{e}");
        let long = "x".repeat(MAX_ERROR_BODY + 10);
        assert_eq!(excerpt(long.as_bytes()).chars().count(), MAX_ERROR_BODY + 1);
    }

    #[test]
    fn service_urls_join_without_double_slashes() {
        let s = Service::projects("http://projects:8080/");
        assert_eq!(s.url("/projects/1"), "http://projects:8080/projects/1");
        assert_eq!(s.audience(), PROJECT_AUDIENCE);
        assert_eq!(
            Service::committees("http://c").audience(),
            COMMITTEE_AUDIENCE
        );
    }
}
