//! `/packages…`: create, get, list with filters, single-shot multipart ingest, list files,
//! finalize, and the manifest in CBOR and JCS JSON.

use artifactstore_core::error::Resource;
use artifactstore_core::*;
use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{PathId, clamped, created, parse_id, query_pairs};
use crate::AppState;
use crate::auth::{Reader, Writer};
use crate::error::{ApiError, ApiResult, Problem};
use crate::http::{ApiJson, accepts, if_none_match};
use crate::multipart;

#[utoipa::path(post, path = "/packages", tag = "packages", request_body = NewPackage,
    security(("bearer" = [])),
    responses((status = 201, description = "Created", body = Package,
               headers(("Location" = String, description = "/packages/{id}"))),
               (status = 422, description = "Invalid field", body = Problem)))]
pub async fn create_package(
    State(state): State<AppState>,
    Writer(caller): Writer,
    ApiJson(new): ApiJson<NewPackage>,
) -> ApiResult<Response> {
    let package = state.registry.create_package(&caller.tenant, new).await?;
    Ok(created(format!("/packages/{}", package.id), &package))
}

#[utoipa::path(get, path = "/packages", tag = "packages", security(("bearer" = [])),
    params(
        ("producer" = Option<String>, Query, description = "Exact producer"),
        ("subject" = Option<String>, Query, description = "Exact subject"),
        ("retention_class" = Option<String>, Query, description = "Exact retention class"),
        ("state" = Option<String>, Query, description = "open or finalized"),
        ("metadata.KEY" = Option<String>, Query, description = "metadata.KEY=VALUE: exact metadata match (repeatable; with has_metadata, 16 at most)"),
        ("has_metadata" = Option<String>, Query, description = "Has metadata key (repeatable; with metadata.KEY, 16 at most)"),
        ("contains" = Option<String>, Query, description = "Holds a file with this content address (sha256:…)"),
        ("created_after" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("created_before" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("limit" = Option<u32>, Query, description = "Page size (default 50, clamped to 1000)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses((status = 200, description = "Packages, newest first", body = Page<Package>),
              (status = 422, description = "A bad filter, or more than 16 metadata filters", body = Problem),
              (status = 429, description = "The tenant runs as many listings as it may at once (Retry-After)", body = Problem),
              (status = 503, description = "The listing ran past the query time budget (Retry-After)", body = Problem)))]
pub async fn list_packages(
    State(state): State<AppState>,
    Reader(scope): Reader,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Page<Package>>> {
    let mut query = PackageQuery::default();
    let (mut cursor, mut limit) = (None, None);
    let timestamp = |field: &str, value: &str| {
        Timestamp::parse_rfc3339(value)
            .ok_or_else(|| ApiError::invalid(field, "must be an RFC 3339 timestamp"))
    };
    for (key, value) in query_pairs(raw.as_deref()) {
        match key.as_str() {
            "producer" => query.producer = Some(value),
            "subject" => query.subject = Some(value),
            "retention_class" => query.retention_class = Some(value),
            "state" => {
                query.state = Some(
                    PackageState::parse(&value)
                        .ok_or_else(|| ApiError::invalid("state", "must be open or finalized"))?,
                )
            }
            "has_metadata" => query.has_metadata.push(value),
            "contains" => {
                query.contains =
                    Some(Sha256Digest::from_content_address(&value).ok_or_else(|| {
                        ApiError::invalid("contains", "must be sha256: and 64 lowercase hex digits")
                    })?)
            }
            "created_after" => query.created_after = Some(timestamp("created_after", &value)?),
            "created_before" => query.created_before = Some(timestamp("created_before", &value)?),
            "limit" => limit = Some(clamped("limit", &value)?),
            "cursor" => cursor = Some(value),
            other => {
                if let Some(meta_key) = other.strip_prefix("metadata.") {
                    query.metadata.push((meta_key.to_string(), value));
                }
                // Unknown parameters are ignored, as most HTTP APIs do.
            }
        }
    }
    let page = state
        .registry
        .list_packages(&scope, &query, cursor.as_deref(), limit)
        .await?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/packages/{id}", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id")),
    responses((status = 200, description = "The package", body = Package),
              (status = 404, description = "Not found", body = Problem)))]
pub async fn get_package(
    State(state): State<AppState>,
    Reader(scope): Reader,
    PathId(id): PathId,
) -> ApiResult<Json<Package>> {
    let id = parse_id(&id, Resource::Package)?;
    Ok(Json(state.registry.package(&scope, id).await?))
}

#[utoipa::path(post, path = "/packages/{id}/files", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id")),
    request_body(content_type = "multipart/form-data",
        description = "Text parts `path` (required), `media_type`, `sha256` (expected hex digest), then one binary part `file`, streamed."),
    responses((status = 201, description = "Created", body = FileRecord,
               headers(("Location" = String, description = "/files/{file_id}"))),
              (status = 409, description = "Finalized package or path taken", body = Problem),
              (status = 413, description = "Larger than the file limit", body = Problem),
              (status = 422, description = "Invalid field or digest mismatch", body = Problem)))]
pub async fn add_file(
    State(state): State<AppState>,
    Writer(caller): Writer,
    PathId(id): PathId,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let id = parse_id(&id, Resource::Package)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (new, stream) = multipart::read_form(content_type, body).await?;
    let file = state
        .registry
        .add_file(&caller.tenant, id, new, stream)
        .await?;
    Ok(created(format!("/files/{}", file.id), &file))
}

#[utoipa::path(get, path = "/packages/{id}/files", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id"),
           ("limit" = Option<u32>, Query, description = "Page size (default 50, clamped to 1000)"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, description = "Files in UTF-8 byte order of their paths", body = Page<FileRecord>)))]
pub async fn list_files(
    State(state): State<AppState>,
    Reader(scope): Reader,
    PathId(id): PathId,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Page<FileRecord>>> {
    let id = parse_id(&id, Resource::Package)?;
    let (mut cursor, mut limit) = (None, None);
    for (key, value) in query_pairs(raw.as_deref()) {
        match key.as_str() {
            "limit" => limit = Some(clamped("limit", &value)?),
            "cursor" => cursor = Some(value),
            _ => {}
        }
    }
    Ok(Json(
        state
            .registry
            .list_files(&scope, id, cursor.as_deref(), limit)
            .await?,
    ))
}

#[utoipa::path(post, path = "/packages/{id}/finalize", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id")),
    responses((status = 200, description = "The finalized package (the same on every call)", body = Package)))]
pub async fn finalize(
    State(state): State<AppState>,
    Writer(caller): Writer,
    PathId(id): PathId,
) -> ApiResult<Json<Package>> {
    let id = parse_id(&id, Resource::Package)?;
    Ok(Json(state.registry.finalize(&caller.tenant, id).await?))
}

#[utoipa::path(get, path = "/packages/{id}/manifest", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id"),
           ("If-None-Match" = Option<String>, Header, description = "ETags (weak comparison) or *")),
    responses((status = 200, description = "Deterministic CBOR (RFC 8949 §4.2.1)", content_type = "application/cbor",
               headers(("ETag" = String, description = "\"sha256:<hex>\": the manifest digest"))),
              (status = 304, description = "Not modified (If-None-Match)", headers(("ETag" = String))),
              (status = 406, description = "Accept allows neither application/cbor nor */*", body = Problem),
              (status = 409, description = "Not finalized", body = Problem)))]
pub async fn manifest(
    State(state): State<AppState>,
    Reader(scope): Reader,
    PathId(id): PathId,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = parse_id(&id, Resource::Package)?;
    if !accepts(&headers, "application/cbor") {
        return Err(ApiError::NotAcceptable(
            "the manifest is served as application/cbor".into(),
        ));
    }
    let manifest = state.registry.manifest(&scope, id).await?;
    let etag = format!("\"{}\"", manifest.digest.content_address());
    let etag_value =
        HeaderValue::from_str(&etag).map_err(|_| ApiError::BadRequest("etag".into()))?;
    if if_none_match(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/cbor"),
            ),
            (header::ETAG, etag_value),
        ],
        manifest.cbor,
    )
        .into_response())
}

#[utoipa::path(get, path = "/packages/{id}/manifest.json", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id"),
           ("If-None-Match" = Option<String>, Header, description = "ETags (weak comparison) or *")),
    responses((status = 200, description = "The JCS (RFC 8785) projection of the manifest", content_type = "application/json",
               headers(("ETag" = String, description = "\"sha256:<manifest digest>+json\": this representation's tag"))),
              (status = 304, description = "Not modified (If-None-Match)", headers(("ETag" = String))),
              (status = 409, description = "Not finalized", body = Problem)))]
pub async fn manifest_json(
    State(state): State<AppState>,
    Reader(scope): Reader,
    PathId(id): PathId,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = parse_id(&id, Resource::Package)?;
    let manifest = state.registry.manifest(&scope, id).await?;
    // Another representation of the same manifest, so a tag of its own, derived from the
    // digest (strong tags of two representations must differ).
    let etag = format!("\"{}+json\"", manifest.digest.content_address());
    let etag_value = HeaderValue::from_str(&etag).map_err(|_| ApiError::Internal("etag".into()))?;
    if if_none_match(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag_value),
        ],
        manifest.json,
    )
        .into_response())
}
