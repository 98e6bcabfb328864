//! `/packages…`: create, get, list with filters, single-shot multipart ingest, list files,
//! finalize, and the manifest in CBOR and JCS JSON.

use artifactstore_core::error::Resource;
use artifactstore_core::storage::ByteStream;
use artifactstore_core::*;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};

use super::{created, number, parse_id, query_pairs};
use crate::AppState;
use crate::auth::{Reader, Writer};
use crate::error::{ApiError, ApiResult, Problem};
use crate::http::{ApiJson, accepts, if_none_match};

/// Largest text part (`path`, `media_type`, `sha256`) of a multipart ingest.
const MAX_TEXT_PART_BYTES: usize = 8 * 1024;

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
        ("metadata.KEY" = Option<String>, Query, description = "metadata.KEY=VALUE: exact metadata match (repeatable)"),
        ("has_metadata" = Option<String>, Query, description = "Has metadata key (repeatable)"),
        ("contains" = Option<String>, Query, description = "Holds a file with this content address (sha256:…)"),
        ("created_after" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("created_before" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("limit" = Option<u32>, Query, description = "Page size (default 50, clamped to 1000)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses((status = 200, description = "Packages, newest first", body = Page<Package>)))]
pub async fn list_packages(
    State(state): State<AppState>,
    Reader(caller): Reader,
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
            "limit" => limit = Some(number("limit", &value)?),
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
        .list_packages(&caller.tenant, &query, cursor.as_deref(), limit)
        .await?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/packages/{id}", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id")),
    responses((status = 200, description = "The package", body = Package),
              (status = 404, description = "Not found", body = Problem)))]
pub async fn get_package(
    State(state): State<AppState>,
    Reader(caller): Reader,
    Path(id): Path<String>,
) -> ApiResult<Json<Package>> {
    let id = parse_id(&id, Resource::Package)?;
    Ok(Json(state.registry.package(&caller.tenant, id).await?))
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
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let id = parse_id(&id, Resource::Package)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::UnsupportedMediaType(
            "the body must be multipart/form-data with a boundary".into(),
        )
    })?;
    let mut multipart = multer::Multipart::new(body.into_data_stream(), boundary);
    let mut new = NewFile::default();
    let mut path = None;
    loop {
        let field = multipart.next_field().await.map_err(multipart_error)?;
        let Some(field) = field else {
            return Err(ApiError::invalid(
                "file",
                "the multipart body has no part named file",
            ));
        };
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            new.path = path.ok_or_else(|| {
                ApiError::invalid("path", "required, and must come before the file part")
            })?;
            if new.media_type.is_none() {
                new.media_type = field
                    .content_type()
                    .map(|m| m.essence_str().to_string())
                    .filter(|m| m != "application/octet-stream");
            }
            let stream: ByteStream = field.map_err(std::io::Error::other).boxed();
            let file = state
                .registry
                .add_file(&caller.tenant, id, new, stream)
                .await?;
            return Ok(created(format!("/files/{}", file.id), &file));
        }
        let text = text_part(field, &name).await?;
        match name.as_str() {
            "path" => path = Some(text),
            "media_type" => new.media_type = Some(text),
            "sha256" => new.sha256 = Some(text),
            _ => {}
        }
    }
}

async fn text_part(mut field: multer::Field<'static>, name: &str) -> ApiResult<String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if bytes.len() + chunk.len() > MAX_TEXT_PART_BYTES {
            return Err(ApiError::invalid(
                name,
                format!("at most {MAX_TEXT_PART_BYTES} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| ApiError::invalid(name, "must be valid UTF-8"))
}

fn multipart_error(e: multer::Error) -> ApiError {
    ApiError::BadRequest(format!("malformed multipart body: {e}"))
}

#[utoipa::path(get, path = "/packages/{id}/files", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id"),
           ("limit" = Option<u32>, Query, description = "Page size (default 50, clamped to 1000)"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, description = "Files in UTF-8 byte order of their paths", body = Page<FileRecord>)))]
pub async fn list_files(
    State(state): State<AppState>,
    Reader(caller): Reader,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Page<FileRecord>>> {
    let id = parse_id(&id, Resource::Package)?;
    let (mut cursor, mut limit) = (None, None);
    for (key, value) in query_pairs(raw.as_deref()) {
        match key.as_str() {
            "limit" => limit = Some(number("limit", &value)?),
            "cursor" => cursor = Some(value),
            _ => {}
        }
    }
    Ok(Json(
        state
            .registry
            .list_files(&caller.tenant, id, cursor.as_deref(), limit)
            .await?,
    ))
}

#[utoipa::path(post, path = "/packages/{id}/finalize", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id")),
    responses((status = 200, description = "The finalized package (the same on every call)", body = Package)))]
pub async fn finalize(
    State(state): State<AppState>,
    Writer(caller): Writer,
    Path(id): Path<String>,
) -> ApiResult<Json<Package>> {
    let id = parse_id(&id, Resource::Package)?;
    Ok(Json(state.registry.finalize(&caller.tenant, id).await?))
}

#[utoipa::path(get, path = "/packages/{id}/manifest", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id")),
    responses((status = 200, description = "Deterministic CBOR (RFC 8949 §4.2.1)", content_type = "application/cbor",
               headers(("ETag" = String, description = "\"sha256:<hex>\": the manifest digest"))),
              (status = 304, description = "Not modified (If-None-Match)"),
              (status = 406, description = "Accept allows neither application/cbor nor */*", body = Problem),
              (status = 409, description = "Not finalized", body = Problem)))]
pub async fn manifest(
    State(state): State<AppState>,
    Reader(caller): Reader,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = parse_id(&id, Resource::Package)?;
    if !accepts(&headers, "application/cbor") {
        return Err(ApiError::NotAcceptable(
            "the manifest is served as application/cbor".into(),
        ));
    }
    let manifest = state.registry.manifest(&caller.tenant, id).await?;
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
    params(("id" = String, Path, description = "Package id")),
    responses((status = 200, description = "The JCS (RFC 8785) projection of the manifest", content_type = "application/json"),
              (status = 409, description = "Not finalized", body = Problem)))]
pub async fn manifest_json(
    State(state): State<AppState>,
    Reader(caller): Reader,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id, Resource::Package)?;
    let manifest = state.registry.manifest(&caller.tenant, id).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        manifest.json,
    )
        .into_response())
}
