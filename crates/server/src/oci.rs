//! The OCI distribution face, `/v2/`: repositories are `<tenant>/<repository>`, credentials
//! are the store's tokens (Bearer, or the Basic password, or the token endpoint's answer),
//! errors are OCI's `errors` array beside the problem document's fields. Handlers parse the
//! path and call the registry's `oci_*` operations.

use artifactstore_core::error::Resource;
use artifactstore_core::oci::{self, Reference};
use artifactstore_core::{RegistryError, Scope, Sha256Digest};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::handlers::files::{self, Content};
use crate::handlers::{clamped, query_pairs};

/// What `/v2/token` says its tokens live for: they are the store token presented, which
/// lives as long as the store keeps it; clients ask again after this.
const TOKEN_LIFETIME_SECS: u64 = 3600;
/// Tags per page of `tags/list` at most (`n` is clamped to it; `Link` names the next page).
const MAX_TAGS_PER_PAGE: u32 = 1000;
const API_VERSION: &str = "docker-distribution-api-version";
const CONTENT_DIGEST: &str = "docker-content-digest";

/// The routes of this face, as metric labels too.
pub const ROUTES: [&str; 4] = ["/v2/", "/v2", "/v2/token", "/v2/{*rest}"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/token", get(token))
        .route("/v2/{*rest}", any(dispatch))
}

/// What a request under a repository addresses.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Manifest(&'a str),
    Blob(&'a str),
    Uploads(Option<&'a str>),
    TagsList,
}

/// `<name>/<target>` split from the end, so a repository may hold `blobs` or `manifests` as a
/// component of its own.
fn split(path: &str) -> Option<(&str, Target<'_>)> {
    let (name, last) = path.rsplit_once('/')?;
    if let Some((name, "uploads")) = name.rsplit_once('/').filter(|(n, _)| n.ends_with("/blobs")) {
        let upload = (!last.is_empty()).then_some(last);
        return Some((name.strip_suffix("/blobs")?, Target::Uploads(upload)));
    }
    if last == "uploads" && name.ends_with("/blobs") {
        return Some((name.strip_suffix("/blobs")?, Target::Uploads(None)));
    }
    let (name, kind) = name.rsplit_once('/')?;
    match (kind, last) {
        ("tags", "list") => Some((name, Target::TagsList)),
        ("manifests", reference) => Some((name, Target::Manifest(reference))),
        ("blobs", digest) => Some((name, Target::Blob(digest))),
        _ => None,
    }
}

/// A repository name `<tenant>/<repository>` the caller may reach, or `NAME_UNKNOWN` (another
/// tenant's repository is as unknown as one that does not exist).
struct Repo {
    tenant: String,
    repository: String,
}

fn repo(name: &str, scope: &Scope) -> Result<Repo, OciError> {
    let unknown = || OciError::new(Code::NameUnknown, ApiError::NotFound(Resource::Package));
    let (tenant, repository) = name.split_once('/').ok_or_else(unknown)?;
    if artifactstore_core::validate::repository(name).is_err() {
        return Err(OciError::new(
            Code::NameInvalid,
            ApiError::invalid("name", "not a repository name <tenant>/<repository>"),
        ));
    }
    if !scope.admits(tenant) {
        return Err(unknown());
    }
    Ok(Repo {
        tenant: tenant.to_string(),
        repository: repository.to_string(),
    })
}

/// `GET /v2/`: `200` to a caller the store knows (or anyone, with anonymous reads on), else
/// the challenge that sends clients to the token endpoint.
async fn base(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match reader(&state, &headers) {
        Ok(_) => {
            let mut response = (StatusCode::OK, axum::Json(json!({}))).into_response();
            version_header(response.headers_mut());
            response
        }
        Err(e) => e.with_realm(&state, &headers).into_response(),
    }
}

/// The Docker token flow's endpoint: a store token in, as Basic password or Bearer, and the
/// same token out, which `/v2/` accepts as Bearer.
async fn token(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.auth.oci_caller(&headers) {
        Ok(Some(_)) => {
            let presented = crate::auth::presented_token(&headers).unwrap_or_default();
            let body = json!({
                "token": presented,
                "access_token": presented,
                "expires_in": TOKEN_LIFETIME_SECS,
            });
            axum::Json(body).into_response()
        }
        Ok(None) => OciError::new(Code::Unauthorized, ApiError::Unauthorized)
            .with_realm(&state, &headers)
            .into_response(),
        Err(e) => OciError::from_api(e, Code::Unauthorized)
            .with_realm(&state, &headers)
            .into_response(),
    }
}

async fn dispatch(
    State(state): State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let answer = route(&state, &method, &rest, query.as_deref(), &headers).await;
    match answer {
        Ok(mut response) => {
            version_header(response.headers_mut());
            response
        }
        Err(e) => e.with_realm(&state, &headers).into_response(),
    }
}

async fn route(
    state: &AppState,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, OciError> {
    let not_found = || OciError::new(Code::NameUnknown, ApiError::NoRoute(path.to_string()));
    let (name, target) = split(path).ok_or_else(not_found)?;
    let write = !matches!(*method, Method::GET | Method::HEAD);
    let scope = match write {
        false => reader(state, headers)?,
        true => Scope::Tenant(writer(state, headers)?.tenant),
    };
    let repo = repo(name, &scope)?;
    match (method.clone(), target) {
        (Method::GET | Method::HEAD, Target::Manifest(reference)) => {
            get_manifest(state, &repo, reference, method, headers).await
        }
        (Method::DELETE, Target::Manifest(reference)) => {
            delete_manifest(state, &repo, reference).await
        }
        (Method::GET | Method::HEAD, Target::Blob(digest)) => {
            get_blob(state, &repo, digest, method, headers).await
        }
        (Method::GET, Target::TagsList) => tags_list(state, &repo, name, query).await,
        (Method::DELETE, Target::Blob(_)) => Err(OciError::new(
            Code::Unsupported,
            ApiError::MethodNotAllowed {
                method: "DELETE".into(),
                path: "a blob: blobs no manifest references are collected by the store".into(),
            },
        )),
        (method, _) => Err(OciError::new(
            Code::Unsupported,
            ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: path.to_string(),
            },
        )),
    }
}

async fn get_manifest(
    state: &AppState,
    repo: &Repo,
    reference: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, OciError> {
    let unknown = || OciError::new(Code::ManifestUnknown, ApiError::NotFound(Resource::Package));
    let reference = Reference::parse(reference).ok_or_else(unknown)?;
    let served = state
        .registry
        .oci_manifest(&repo.tenant, &repo.repository, &reference)
        .await
        .map_err(|e| OciError::from_registry(e, Code::ManifestUnknown))?;
    let content = Content::Bytes {
        bytes: served.bytes,
        media_type: served.media_type,
        digest: served.digest,
    };
    files::serve(state, content, headers, method)
        .await
        .map(|r| with_digest(r, served.digest))
        .map_err(|e| OciError::from_api(e, Code::ManifestUnknown))
}

async fn get_blob(
    state: &AppState,
    repo: &Repo,
    digest: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, OciError> {
    let digest = Sha256Digest::from_content_address(digest).ok_or_else(|| {
        OciError::new(
            Code::DigestInvalid,
            ApiError::invalid("digest", "not a sha256: digest"),
        )
    })?;
    let blob = state
        .registry
        .oci_blob(&repo.tenant, digest)
        .await
        .map_err(|e| OciError::from_registry(e, Code::BlobUnknown))?;
    let content = match blob {
        oci::Blob::File(file) => Content::File {
            file: file.into(),
            media_type: Some("application/octet-stream"),
        },
        oci::Blob::Bytes(bytes) => Content::Bytes {
            bytes,
            media_type: "application/octet-stream".into(),
            digest,
        },
    };
    files::serve(state, content, headers, method)
        .await
        .map(|r| with_digest(r, digest))
        .map_err(|e| OciError::from_api(e, Code::BlobUnknown))
}

async fn delete_manifest(
    state: &AppState,
    repo: &Repo,
    reference: &str,
) -> Result<Response, OciError> {
    let unknown = || OciError::new(Code::ManifestUnknown, ApiError::NotFound(Resource::Package));
    let reference = Reference::parse(reference).ok_or_else(unknown)?;
    state
        .registry
        .oci_delete(&repo.tenant, &repo.repository, &reference)
        .await
        .map_err(|e| OciError::from_registry(e, Code::ManifestUnknown))?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `tags/list`, `n` and `last` as the specification pins them; `Link` when more follow.
async fn tags_list(
    state: &AppState,
    repo: &Repo,
    name: &str,
    query: Option<&str>,
) -> Result<Response, OciError> {
    let (mut n, mut last) = (None, None);
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "n" => {
                let parsed = clamped::<u32>("n", &value);
                n = Some(parsed.map_err(|e| OciError::from_api(e, Code::Unsupported))?);
            }
            "last" => last = Some(value),
            _ => {}
        }
    }
    let limit = n.unwrap_or(MAX_TAGS_PER_PAGE).min(MAX_TAGS_PER_PAGE);
    let (tags, more) = state
        .registry
        .oci_tags(&repo.tenant, &repo.repository, last.as_deref(), limit)
        .await
        .map_err(|e| OciError::from_registry(e, Code::NameUnknown))?;
    let next = match (more, tags.last()) {
        (true, Some(last)) => Some(format!(
            "</v2/{name}/tags/list?n={limit}&last={last}>; rel=\"next\""
        )),
        _ => None,
    };
    let mut response = axum::Json(json!({ "name": name, "tags": tags })).into_response();
    if let Some(link) = next.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

fn with_digest(mut response: Response, digest: Sha256Digest) -> Response {
    if let Ok(value) = HeaderValue::from_str(&digest.content_address()) {
        response.headers_mut().insert(CONTENT_DIGEST, value);
    }
    response
}

fn version_header(headers: &mut HeaderMap) {
    headers.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
}

/// What the caller may read under `/v2/`.
fn reader(state: &AppState, headers: &HeaderMap) -> Result<Scope, OciError> {
    match state.auth.oci_caller(headers) {
        Ok(Some(caller)) => Ok(Scope::Tenant(caller.tenant)),
        Ok(None) => state
            .auth
            .anonymous()
            .cloned()
            .ok_or_else(|| OciError::new(Code::Unauthorized, ApiError::Unauthorized)),
        Err(e) => Err(OciError::from_api(e, Code::Unauthorized)),
    }
}

/// A caller allowed to change things under `/v2/`.
fn writer(state: &AppState, headers: &HeaderMap) -> Result<Caller, OciError> {
    match state.auth.oci_caller(headers) {
        Ok(Some(caller)) if caller.read_only => {
            Err(OciError::new(Code::Denied, ApiError::Forbidden))
        }
        Ok(Some(caller)) => Ok(caller),
        Ok(None) => Err(OciError::new(Code::Unauthorized, ApiError::Unauthorized)),
        Err(e) => Err(OciError::from_api(e, Code::Unauthorized)),
    }
}

/// OCI's error codes (distribution-spec, "Error Codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Code {
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unknown,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::Unknown => "UNKNOWN",
        }
    }
}

/// An error under `/v2/`: the problem the native API would answer, with its OCI code.
#[derive(Debug)]
struct OciError {
    code: Code,
    error: ApiError,
    /// The `realm` of a `401`'s challenge.
    realm: Option<String>,
}

impl OciError {
    fn new(code: Code, error: ApiError) -> Self {
        Self {
            code,
            error,
            realm: None,
        }
    }

    fn from_registry(e: RegistryError, not_found: Code) -> Self {
        Self::from_api(ApiError::Registry(e), not_found)
    }

    /// The OCI code of `e`; `not_found` is what a `404` means where it happened.
    fn from_api(e: ApiError, not_found: Code) -> Self {
        use RegistryError as R;
        let code = match &e {
            ApiError::Unauthorized => Code::Unauthorized,
            ApiError::Forbidden | ApiError::Registry(R::PackageHeld | R::QuotaExceeded { .. }) => {
                Code::Denied
            }
            ApiError::NotFound(_) | ApiError::Registry(R::NotFound(_)) => not_found,
            ApiError::Throttled(..)
            | ApiError::Registry(R::TooManyReads | R::TooManyWaiting { .. }) => {
                Code::TooManyRequests
            }
            ApiError::MethodNotAllowed { .. } | ApiError::RangeNotSatisfiable { .. } => {
                Code::Unsupported
            }
            ApiError::Invalid(_) | ApiError::Registry(R::Invalid(_)) => Code::NameInvalid,
            _ => Code::Unknown,
        };
        Self::new(code, e)
    }

    /// Names the token endpoint of this server in a `401`'s challenge, by the address the
    /// client used (`Host`), so it works behind any name and port.
    fn with_realm(mut self, state: &AppState, headers: &HeaderMap) -> Self {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or("localhost");
        let scheme = if state.settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        self.realm = Some(format!("{scheme}://{host}/v2/token"));
        self
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let status = match (&self.code, &self.error) {
            // OCI answers an unsupported method 405 whatever the native API would say.
            (Code::Unsupported, ApiError::MethodNotAllowed { .. }) => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            // A malformed digest or name is a bad request here, as OCI clients expect.
            (Code::DigestInvalid | Code::NameInvalid, _) => StatusCode::BAD_REQUEST,
            _ => self.error.http_status_code(),
        };
        let mut problem: Value =
            serde_json::from_slice(&self.error.problem_bytes().1).unwrap_or_else(|_| json!({}));
        problem["status"] = json!(status.as_u16());
        let message = problem["title"].clone();
        let detail = problem["detail"].clone();
        problem["errors"] = json!([{
            "code": self.code.as_str(),
            "message": message,
            "detail": detail,
        }]);
        let mut response = self.error.into_response();
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.remove(header::WWW_AUTHENTICATE);
        if status == StatusCode::UNAUTHORIZED {
            let realm = self.realm.unwrap_or_else(|| "/v2/token".into());
            let challenge = format!("Bearer realm=\"{realm}\",service=\"artifactstore\"");
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        }
        version_header(headers);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        *response.body_mut() = Body::from(body);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_from_the_end() {
        assert_eq!(
            split("acme/app/manifests/latest"),
            Some(("acme/app", Target::Manifest("latest")))
        );
        assert_eq!(
            split("acme/blobs/manifests/blobs/sha256:ab"),
            Some(("acme/blobs/manifests", Target::Blob("sha256:ab")))
        );
        assert_eq!(
            split("acme/app/blobs/uploads/"),
            Some(("acme/app", Target::Uploads(None)))
        );
        assert_eq!(
            split("acme/app/blobs/uploads"),
            Some(("acme/app", Target::Uploads(None)))
        );
        assert_eq!(
            split("acme/app/blobs/uploads/upl_1"),
            Some(("acme/app", Target::Uploads(Some("upl_1"))))
        );
        assert_eq!(
            split("acme/x/tags/list"),
            Some(("acme/x", Target::TagsList))
        );
        assert_eq!(split("acme/app"), None);
        assert_eq!(split("manifests/x"), None);
    }
}
