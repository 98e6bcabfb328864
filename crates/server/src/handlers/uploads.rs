//! `/uploads…`: resumable upload sessions (create, PATCH chunks with `Content-Range`, status,
//! cancel, complete into a file).

use artifactstore_core::error::Resource;
use artifactstore_core::registry::{Chunk, CompleteUpload};
use artifactstore_core::storage::ByteStream;
use artifactstore_core::{FileRecord, NewFile, Upload};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::{PathId, created, parse_id};
use crate::AppState;
use crate::auth::{Reader, Writer};
use crate::error::{ApiError, ApiResult, Problem, UPLOAD_OFFSET};
use crate::http::ApiJson;

/// The upload resource: the registry's upload plus where to send its bytes.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadResource {
    #[serde(flatten)]
    pub upload: Upload,
    pub upload_url: String,
}

impl From<Upload> for UploadResource {
    fn from(upload: Upload) -> Self {
        Self {
            upload_url: format!("/uploads/{}", upload.id),
            upload,
        }
    }
}

#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUpload {
    /// Total size in bytes, if known up front.
    #[serde(default, deserialize_with = "whole_number")]
    pub size: Option<u64>,
}

/// A JSON integer, also when written with a zero fraction (`1024.0` is the integer 1024 in
/// JSON Schema, and some encoders write whole numbers that way).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(f)) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => {
                Ok(Some(f as u64))
            }
            _ => Err(D::Error::custom(format!(
                "invalid value: {n}, expected a non-negative integer"
            ))),
        },
    }
}

#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub package_id: String,
    pub path: String,
    pub media_type: Option<String>,
    /// Expected SHA-256, 64 lowercase hex digits.
    pub sha256: Option<String>,
}

fn with_offset(status: StatusCode, upload: Upload, no_store: bool) -> Response {
    let offset = upload.offset;
    let mut response = (status, axum::Json(UploadResource::from(upload))).into_response();
    let headers = response.headers_mut();
    headers.insert(UPLOAD_OFFSET, HeaderValue::from(offset));
    if no_store {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[utoipa::path(post, path = "/uploads", tag = "uploads", security(("bearer" = [])),
    request_body(content = NewUpload, description = "Optional (an empty body is {}); {\"size\": N} declares the total size"),
    responses((status = 201, description = "Created", body = UploadResource,
               headers(("Location" = String, description = "/uploads/{id}")))))]
pub async fn create_upload(
    State(state): State<AppState>,
    Writer(caller): Writer,
    ApiJson(new): ApiJson<NewUpload>,
) -> ApiResult<Response> {
    let upload = state
        .registry
        .create_upload(&caller.tenant, new.size)
        .await?;
    Ok(created(
        format!("/uploads/{}", upload.id),
        &UploadResource::from(upload),
    ))
}

#[utoipa::path(patch, path = "/uploads/{id}", tag = "uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "Upload id"),
           ("Content-Range" = Option<String>, Header, description = "bytes START-END/TOTAL (TOTAL may be *); START must be the current offset")),
    request_body(content_type = "application/octet-stream", description = "The chunk"),
    responses((status = 200, description = "Appended", body = UploadResource, headers(("Upload-Offset" = u64))),
              (status = 400, description = "Malformed Content-Range or length mismatch", body = Problem),
              (status = 409, description = "Upload completed", body = Problem),
              (status = 416, description = "START is not the offset, or bytes past the declared size; nothing written", body = Problem,
               headers(("Upload-Offset" = u64)))))]
pub async fn append(
    State(state): State<AppState>,
    Writer(caller): Writer,
    PathId(id): PathId,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let id = parse_id(&id, Resource::Upload)?;
    let chunk = match headers.get(header::CONTENT_RANGE) {
        Some(value) => parse_content_range(value.to_str().unwrap_or(""))?,
        None => Chunk::default(),
    };
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(declared), Some(sent)) = (chunk.len, content_length)
        && declared != sent
    {
        return Err(ApiError::BadRequest(format!(
            "Content-Range covers {declared} bytes but the body has {sent}"
        )));
    }
    let chunk = Chunk {
        len: chunk.len.or(content_length),
        ..chunk
    };
    let stream: ByteStream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .boxed();
    let upload = state
        .registry
        .append_upload(&caller.tenant, id, chunk, stream)
        .await?;
    Ok(with_offset(StatusCode::OK, upload, false))
}

/// `bytes START-END/TOTAL` or `bytes START-END/*`.
fn parse_content_range(value: &str) -> ApiResult<Chunk> {
    let malformed = || {
        ApiError::BadRequest(format!(
            "malformed Content-Range {value:?}: expected bytes START-END/TOTAL"
        ))
    };
    let spec = value.trim().strip_prefix("bytes ").ok_or_else(malformed)?;
    let (range, total) = spec.split_once('/').ok_or_else(malformed)?;
    let (start, end) = range.split_once('-').ok_or_else(malformed)?;
    let number = |s: &str| -> ApiResult<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        s.parse().map_err(|_| malformed())
    };
    let (start, end) = (number(start)?, number(end)?);
    let total = match total.trim() {
        "*" => None,
        t => Some(number(t)?),
    };
    if end < start || total.is_some_and(|t| end >= t) {
        return Err(malformed());
    }
    Ok(Chunk {
        start: Some(start),
        len: Some((end - start).checked_add(1).ok_or_else(malformed)?),
        total,
    })
}

#[utoipa::path(method(get, head), path = "/uploads/{id}", tag = "uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "Upload id")),
    responses((status = 200, description = "The upload; resume at its offset", body = UploadResource,
               headers(("Upload-Offset" = u64), ("Cache-Control" = String, description = "no-store"))),
              (status = 404, description = "Unknown, cancelled or expired", body = Problem)))]
pub async fn get_upload(
    State(state): State<AppState>,
    Reader(scope): Reader,
    PathId(id): PathId,
) -> ApiResult<Response> {
    let id = parse_id(&id, Resource::Upload)?;
    let upload = state.registry.upload(&scope, id).await?;
    Ok(with_offset(StatusCode::OK, upload, true))
}

#[utoipa::path(delete, path = "/uploads/{id}", tag = "uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "Upload id")),
    responses((status = 204, description = "Cancelled; the bytes are discarded"),
              (status = 409, description = "Already completed (the file stays)", body = Problem)))]
pub async fn cancel(
    State(state): State<AppState>,
    Writer(caller): Writer,
    PathId(id): PathId,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, Resource::Upload)?;
    state.registry.cancel_upload(&caller.tenant, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/uploads/{id}/complete", tag = "uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "Upload id")),
    request_body = CompleteRequest,
    responses((status = 201, description = "The new file", body = FileRecord,
               headers(("Location" = String, description = "/files/{file_id}"))),
              (status = 409, description = "Size not reached, finalized package, path taken, or already completed", body = Problem),
              (status = 422, description = "Invalid path or digest mismatch; the upload stays open", body = Problem)))]
pub async fn complete(
    State(state): State<AppState>,
    Writer(caller): Writer,
    PathId(id): PathId,
    ApiJson(request): ApiJson<CompleteRequest>,
) -> ApiResult<Response> {
    let id = parse_id(&id, Resource::Upload)?;
    let request = CompleteUpload {
        package_id: request.package_id,
        file: NewFile {
            path: request.path,
            media_type: request.media_type,
            sha256: request.sha256,
        },
    };
    let file = state
        .registry
        .complete_upload(&caller.tenant, id, request)
        .await?;
    Ok(created(format!("/files/{}", file.id), &file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_whole_numbers() {
        let size = |json: &str| serde_json::from_str::<NewUpload>(json).map(|u| u.size);
        assert_eq!(size("{}").unwrap(), None);
        assert_eq!(size(r#"{"size": null}"#).unwrap(), None);
        assert_eq!(size(r#"{"size": 1024}"#).unwrap(), Some(1024));
        assert_eq!(size(r#"{"size": 1024.0}"#).unwrap(), Some(1024));
        for bad in [
            r#"{"size": 1.5}"#,
            r#"{"size": -1}"#,
            r#"{"size": "1"}"#,
            r#"{"size": 1e30}"#,
        ] {
            assert!(size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_range() {
        let c = parse_content_range("bytes 0-99/1000").unwrap();
        assert_eq!((c.start, c.len, c.total), (Some(0), Some(100), Some(1000)));
        let c = parse_content_range("bytes 100-199/*").unwrap();
        assert_eq!((c.start, c.len, c.total), (Some(100), Some(100), None));
        for bad in [
            "0-99/1000",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes -1/2",
            "bytes a-b/*",
            "bytes 0-1",
            "bytes */10",
            "bytes 0-18446744073709551615/*",
            "bytes 0-99999999999999999999999/*",
            "bytes 0-1/99999999999999999999999",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad}");
        }
    }
}
