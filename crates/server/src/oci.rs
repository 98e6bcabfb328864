//! The OCI distribution face, `/v2/`: repositories are `<tenant>/<repository>`, credentials
//! are the store's tokens (Bearer, or the Basic password, or the token endpoint's answer),
//! errors are OCI's `errors` array beside the problem document's fields. Handlers parse the
//! path and call the registry's `oci_*` operations.

use artifactstore_core::error::Resource;
use artifactstore_core::oci::{self, Reference};
use artifactstore_core::registry::Chunk;
use artifactstore_core::storage::ByteStream;
use artifactstore_core::{RegistryError, Scope, Sha256Digest, Upload, UploadId};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures::{StreamExt, TryStreamExt};
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
    Referrers(&'a str),
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
        ("referrers", digest) => Some((name, Target::Referrers(digest))),
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
///
/// The `200` of an anonymous reader carries the challenge too: clients (containers/image)
/// read it from the ping whatever its status, and without it would never send the
/// credentials a push needs; the token endpoint answers them without credentials as well.
async fn base(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match reader(&state, &headers) {
        Ok(_) => {
            let mut response = (StatusCode::OK, axum::Json(json!({}))).into_response();
            version_header(response.headers_mut());
            let challenge = OciError::new(Code::Unauthorized, ApiError::Unauthorized)
                .with_realm(&state, &headers)
                .challenge();
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
            response
        }
        Err(e) => e.with_realm(&state, &headers).into_response(),
    }
}

/// The Docker token flow's endpoint: a store token in, as Basic password or Bearer, and the
/// same token out, which `/v2/` accepts as Bearer.
async fn token(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let anonymous = state.auth.anonymous().is_some();
    match state.auth.oci_caller(&headers) {
        Ok(None) if anonymous => {
            let token = crate::auth::ANONYMOUS_TOKEN;
            let body = json!({
                "token": token,
                "access_token": token,
                "expires_in": TOKEN_LIFETIME_SECS,
            });
            axum::Json(body).into_response()
        }
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
    body: Body,
) -> Response {
    let request = Request {
        method: &method,
        query: query.as_deref(),
        headers: &headers,
    };
    let answer = route(&state, &rest, request, body).await;
    match answer {
        Ok(mut response) => {
            version_header(response.headers_mut());
            response
        }
        Err(e) => e.with_realm(&state, &headers).into_response(),
    }
}

/// The parts of a request the handlers below read.
#[derive(Clone, Copy)]
struct Request<'a> {
    method: &'a Method,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
}

impl Request<'_> {
    /// The first value of a query parameter.
    fn param(&self, key: &str) -> Option<String> {
        query_pairs(self.query)
            .into_iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }
}

async fn route(
    state: &AppState,
    path: &str,
    request: Request<'_>,
    body: Body,
) -> Result<Response, OciError> {
    let (method, headers) = (request.method, request.headers);
    let not_found = || OciError::new(Code::NameUnknown, ApiError::NoRoute(path.to_string()));
    let (name, target) = split(path).ok_or_else(not_found)?;
    let write = !matches!(*method, Method::GET | Method::HEAD);
    let scope = match write {
        false => reader(state, headers)?,
        true => Scope::Tenant(writer(state, headers)?.tenant),
    };
    let repo = repo(name, &scope)?;
    let at = Place { repo: &repo, name };
    match (method.clone(), target) {
        (Method::GET | Method::HEAD, Target::Manifest(reference)) => {
            get_manifest(state, &repo, reference, method, headers).await
        }
        (Method::PUT, Target::Manifest(reference)) => {
            put_manifest(state, at, reference, headers, body).await
        }
        (Method::DELETE, Target::Manifest(reference)) => {
            delete_manifest(state, &repo, reference).await
        }
        (Method::GET | Method::HEAD, Target::Blob(digest)) => {
            get_blob(state, &repo, digest, method, headers).await
        }
        (Method::GET, Target::TagsList) => tags_list(state, &repo, name, request.query).await,
        (Method::GET, Target::Referrers(digest)) => referrers(state, &repo, digest, request).await,
        (Method::POST, Target::Uploads(None)) => start_upload(state, at, request, body).await,
        (Method::PATCH, Target::Uploads(Some(id))) => {
            let upload = match upload_id(id)? {
                Session::Fresh => start_session(state, &repo).await?.id,
                Session::Open(upload) => upload,
            };
            let chunk = chunk_of(headers)?;
            let upload = append(state, &repo, upload, chunk, body).await?;
            let id = upload.id.to_string();
            Ok(upload_state(StatusCode::ACCEPTED, at, &id, upload.offset))
        }
        (Method::GET, Target::Uploads(Some(id))) => match upload_id(id)? {
            Session::Fresh => Ok(upload_state(StatusCode::NO_CONTENT, at, id, 0)),
            Session::Open(upload) => {
                let tenant = Scope::Tenant(repo.tenant.clone());
                let upload = state.registry.upload(tenant, upload).await;
                let upload = upload.map_err(|e| OciError::upload(e.into()))?;
                let id = upload.id.to_string();
                Ok(upload_state(StatusCode::NO_CONTENT, at, &id, upload.offset))
            }
        },
        (Method::PUT, Target::Uploads(Some(id))) => {
            let digest = request.param("digest").unwrap_or_default();
            let digest = parse_digest(&digest)?;
            match upload_id(id)? {
                // The whole blob in one request: no session at all.
                Session::Fresh => put_whole(state, at, digest, body).await,
                Session::Open(upload) => {
                    if body_may_hold_bytes(headers) {
                        let chunk = chunk_of(headers)?;
                        append(state, &repo, upload, chunk, body).await?;
                    }
                    complete(state, at, upload, digest).await
                }
            }
        }
        (Method::DELETE, Target::Uploads(Some(id))) => {
            if let Session::Open(upload) = upload_id(id)? {
                let cancelled = state.registry.cancel_upload(&repo.tenant, upload).await;
                cancelled.map_err(|e| OciError::upload(e.into()))?;
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
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

/// A repository and its name as the client wrote it (for the locations answered).
#[derive(Clone, Copy)]
struct Place<'a> {
    repo: &'a Repo,
    name: &'a str,
}

fn parse_digest(text: &str) -> Result<Sha256Digest, OciError> {
    Sha256Digest::from_content_address(text).ok_or_else(|| {
        OciError::new(
            Code::DigestInvalid,
            ApiError::invalid("digest", "not a sha256: digest"),
        )
    })
}

/// What an upload location names: a session that holds bytes (an upload session of the
/// store, `upl_…`), or one begun by a `POST` and not yet sent anything (`new_<ULID>`), which
/// costs nothing until its first bytes: a blob `PUT` whole goes straight to the blob store.
enum Session {
    Fresh,
    Open(UploadId),
}

/// The prefix of a session no bytes have been sent to yet.
const FRESH: &str = "new_";

fn upload_id(text: &str) -> Result<Session, OciError> {
    let unknown = || {
        OciError::new(
            Code::BlobUploadUnknown,
            ApiError::NotFound(Resource::Upload),
        )
    };
    if let Some(fresh) = text.strip_prefix(FRESH) {
        let fresh = fresh.parse::<ulid::Ulid>();
        return fresh.map(|_| Session::Fresh).map_err(|_| unknown());
    }
    text.parse().map(Session::Open).map_err(|_| unknown())
}

async fn start_session(state: &AppState, repo: &Repo) -> Result<Upload, OciError> {
    let created = state.registry.create_upload(&repo.tenant, None).await;
    created.map_err(|e| OciError::upload(e.into()))
}

/// A blob sent whole in one request (`PUT` of a fresh session, or `POST ?digest=`).
async fn put_whole(
    state: &AppState,
    at: Place<'_>,
    digest: Sha256Digest,
    body: Body,
) -> Result<Response, OciError> {
    let stream: ByteStream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .boxed();
    let put = state
        .registry
        .oci_put_blob(&at.repo.tenant, digest, stream)
        .await;
    let blob = put.map_err(|e| OciError::upload(e.into()))?;
    Ok(blob_created(at, blob.digest))
}

/// Whether a request may carry bytes: a `PUT` closing an upload has a body only sometimes.
fn body_may_hold_bytes(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    length != Some("0") && (length.is_some() || headers.contains_key(header::TRANSFER_ENCODING))
}

/// Where a chunk goes: OCI's `Content-Range: START-END` (inclusive; `bytes ` tolerated),
/// else at the upload's offset; `Content-Length` its length.
fn chunk_of(headers: &HeaderMap) -> Result<Chunk, OciError> {
    let invalid = |why: &str| {
        OciError::new(
            Code::BlobUploadInvalid,
            ApiError::BadRequest(format!("Content-Range: {why}")),
        )
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(range) = headers.get(header::CONTENT_RANGE) else {
        return Ok(Chunk {
            len: length,
            ..Chunk::default()
        });
    };
    let text = range.to_str().map_err(|_| invalid("not text"))?.trim();
    let text = text
        .strip_prefix("bytes")
        .map_or(text, |t| t.trim_start_matches([' ', '=']));
    let (start, end) = text
        .split_once('-')
        .ok_or_else(|| invalid("expected START-END"))?;
    let number = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| invalid("expected START-END"))
    };
    let (start, end) = (number(start)?, number(end.split('/').next().unwrap_or(""))?);
    if end < start {
        return Err(invalid("END is before START"));
    }
    let len = end - start + 1;
    if length.is_some_and(|l| l != len) {
        return Err(invalid("its length differs from Content-Length"));
    }
    Ok(Chunk {
        start: Some(start),
        len: Some(len),
        total: None,
    })
}

async fn append(
    state: &AppState,
    repo: &Repo,
    upload: UploadId,
    chunk: Chunk,
    body: Body,
) -> Result<Upload, OciError> {
    let stream: ByteStream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .boxed();
    let appended = state
        .registry
        .append_upload(&repo.tenant, upload, chunk, stream)
        .await;
    appended.map_err(|e| OciError::upload(e.into()))
}

/// `202`/`204` with where the upload goes on and what it holds (`Range: 0-LAST`).
fn upload_state(status: StatusCode, at: Place<'_>, id: &str, offset: u64) -> Response {
    let mut response = status.into_response();
    let headers = response.headers_mut();
    let location = format!("/v2/{}/blobs/uploads/{id}", at.name);
    let range = format!("0-{}", offset.saturating_sub(1));
    for (name, value) in [
        (header::LOCATION.as_str(), location),
        ("range", range),
        ("docker-upload-uuid", id.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    response
}

/// `201` for a blob now in the repository.
fn blob_created(at: Place<'_>, digest: Sha256Digest) -> Response {
    let mut response = StatusCode::CREATED.into_response();
    let location = format!("/v2/{}/blobs/{}", at.name, digest.content_address());
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    with_digest(response, digest)
}

async fn complete(
    state: &AppState,
    at: Place<'_>,
    upload: UploadId,
    digest: Sha256Digest,
) -> Result<Response, OciError> {
    let done = state
        .registry
        .oci_complete_blob(&at.repo.tenant, upload, digest)
        .await;
    let blob = done.map_err(|e| OciError::upload(e.into()))?;
    Ok(blob_created(at, blob.digest))
}

/// `POST …/blobs/uploads/`: a mount when the tenant has the blob, the whole blob with
/// `?digest=`, else a new session.
async fn start_upload(
    state: &AppState,
    at: Place<'_>,
    request: Request<'_>,
    body: Body,
) -> Result<Response, OciError> {
    let tenant = &at.repo.tenant;
    if let Some(mount) = request.param("mount")
        && let Some(digest) = Sha256Digest::from_content_address(&mount)
    {
        let has = state.registry.oci_has_blob(tenant, digest).await;
        if has.map_err(|e| OciError::upload(e.into()))? {
            return Ok(blob_created(at, digest));
        }
    }
    match request.param("digest") {
        Some(digest) => put_whole(state, at, parse_digest(&digest)?, body).await,
        None => {
            let id = format!("{FRESH}{}", ulid::Ulid::new());
            Ok(upload_state(StatusCode::ACCEPTED, at, &id, 0))
        }
    }
}

async fn put_manifest(
    state: &AppState,
    at: Place<'_>,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, OciError> {
    let invalid = |e: ApiError| OciError::new(Code::ManifestInvalid, e);
    let reference = Reference::parse(reference).ok_or_else(|| {
        invalid(ApiError::invalid(
            "reference",
            "neither a tag nor a sha256: digest",
        ))
    })?;
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let limit = state.settings.max_oci_manifest_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        invalid(ApiError::TooLarge {
            limit: limit as u64,
        })
    })?;
    let pushed = state
        .registry
        .oci_put_manifest(
            &at.repo.tenant,
            &at.repo.repository,
            &reference,
            &media_type,
            bytes,
        )
        .await
        .map_err(OciError::push)?;
    let mut response = StatusCode::CREATED.into_response();
    let location = format!(
        "/v2/{}/manifests/{}",
        at.name,
        pushed.digest.content_address()
    );
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    if let Some(subject) = pushed.subject
        && let Ok(value) = HeaderValue::from_str(&subject.content_address())
    {
        headers.insert("oci-subject", value);
    }
    Ok(with_digest(response, pushed.digest))
}

/// The referrers API: the manifests pushed to the repository whose subject is `digest`.
async fn referrers(
    state: &AppState,
    repo: &Repo,
    digest: &str,
    request: Request<'_>,
) -> Result<Response, OciError> {
    let digest = parse_digest(digest)?;
    let filter = request.param("artifactType");
    let found = state
        .registry
        .oci_referrers(&repo.tenant, &repo.repository, digest, filter.as_deref())
        .await
        .map_err(|e| OciError::from_registry(e, Code::ManifestUnknown))?;
    let mut response = Response::new(Body::from(oci::referrers_index(&found)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(oci::IMAGE_INDEX),
    );
    if filter.is_some() {
        headers.insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
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
        oci::Blob::Stored(blob) => Content::Stored(blob),
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
    BlobUploadInvalid,
    BlobUploadUnknown,
    ManifestBlobUnknown,
    ManifestInvalid,
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
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
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

    /// An error of an upload session's request.
    fn upload(e: ApiError) -> Self {
        use RegistryError as R;
        match &e {
            ApiError::Registry(R::DigestMismatch { .. }) => Self::new(Code::DigestInvalid, e),
            ApiError::Registry(
                R::OffsetMismatch { .. }
                | R::BeyondDeclaredSize { .. }
                | R::LengthMismatch { .. }
                | R::UploadIncomplete { .. },
            ) => Self::new(Code::BlobUploadInvalid, e),
            _ => Self::from_api(e, Code::BlobUploadUnknown),
        }
    }

    /// An error of a manifest push.
    fn push(e: RegistryError) -> Self {
        use RegistryError as R;
        match e {
            R::DigestMismatch { .. } => Self::new(Code::DigestInvalid, e.into()),
            R::Invalid(_) => Self::new(Code::ManifestInvalid, e.into()),
            R::ManifestBlobUnknown(_) => Self::new(Code::ManifestBlobUnknown, e.into()),
            e => Self::from_registry(e, Code::ManifestUnknown),
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

impl OciError {
    /// The `WWW-Authenticate` value that sends a client to the token endpoint.
    fn challenge(&self) -> String {
        let realm = self.realm.as_deref().unwrap_or("/v2/token");
        format!("Bearer realm=\"{realm}\",service=\"artifactstore\"")
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
            (Code::ManifestInvalid, ApiError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            (Code::ManifestInvalid, _) => StatusCode::BAD_REQUEST,
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
        let challenge = self.challenge();
        let mut response = self.error.into_response();
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.remove(header::WWW_AUTHENTICATE);
        if status == StatusCode::UNAUTHORIZED
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
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
