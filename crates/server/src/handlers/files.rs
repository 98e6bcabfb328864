//! `/files/{id}` and its download: streamed bytes, strong ETag, `304`, single `Range`.

use artifactstore_core::FileId;
use artifactstore_core::error::Resource;
use artifactstore_core::storage::{BlobInfo, ByteStream};
use artifactstore_core::{FileRecord, Scope, Sha256Digest};
use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use super::{PathId, parse_id};
use crate::AppState;
use crate::auth::Reader;
use crate::error::{ApiError, ApiResult, Problem};
use crate::http::{RangeRequest, if_none_match, if_range_allows, parse_range};

/// The sandbox every download is served in.
pub const DOWNLOAD_CSP: &str = "sandbox; default-src 'none'";

#[utoipa::path(get, path = "/files/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path, description = "File id")),
    responses((status = 200, description = "The file resource", body = FileRecord),
              (status = 404, description = "Not found", body = Problem)))]
pub async fn get_file(
    State(state): State<AppState>,
    Reader(scope): Reader,
    PathId(id): PathId,
) -> ApiResult<Json<FileRecord>> {
    let id = parse_id(&id, Resource::File)?;
    Ok(Json(FileRecord::clone(
        &*state.registry.file(&scope, id).await?,
    )))
}

#[utoipa::path(method(get, head), path = "/files/{id}/download", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path, description = "File id"),
           ("Range" = Option<String>, Header, description = "bytes=a-b, bytes=a- or bytes=-n"),
           ("If-None-Match" = Option<String>, Header, description = "ETags (weak comparison) or *")),
    responses((status = 200, description = "The bytes, streamed", content_type = "application/octet-stream",
               headers(("ETag" = String, description = "\"sha256:<hex>\""), ("Accept-Ranges" = String), ("Content-Length" = u64))),
              (status = 206, description = "The requested range",
               headers(("Content-Range" = String, description = "bytes FIRST-LAST/SIZE"), ("ETag" = String), ("Content-Length" = u64))),
              (status = 304, description = "Not modified", headers(("ETag" = String))),
              (status = 416, description = "Range not satisfiable", body = Problem,
               headers(("Content-Range" = String, description = "bytes */SIZE")))))]
pub async fn download(
    State(state): State<AppState>,
    Reader(scope): Reader,
    PathId(id): PathId,
    request: Request,
) -> ApiResult<Response> {
    respond(&state, scope, &id, request.headers(), request.method()).await
}

/// What [`download`] answers, for a request that [`crate::shortcut`] recognised as one
/// without the router: the same checks in the same order (the caller, then the id).
pub async fn download_unrouted(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    method: &Method,
) -> Response {
    let answer = async {
        let scope = state.auth.reader(headers)?;
        respond(state, scope, id, headers, method).await
    };
    answer.await.into_response()
}

/// The request's headers are read in place: axum's `HeaderMap` extractor copies them all.
async fn respond(
    state: &AppState,
    scope: Scope,
    id: &str,
    headers: &HeaderMap,
    method: &Method,
) -> ApiResult<Response> {
    let id = parse_id(id, Resource::File)?;
    let file = state.registry.file(scope, id).await?;
    let content = Content::File {
        file,
        media_type: None,
    };
    serve(state, content, headers, method).await
}

/// Bytes served by a download or under `/v2/`: a file's, or bytes at hand.
pub enum Content {
    /// A file, as its own media type unless another is given.
    File {
        file: Arc<FileRecord>,
        media_type: Option<&'static str>,
    },
    /// A blob no file names yet (pushed through `/v2/`).
    Stored(BlobInfo),
    Bytes {
        bytes: Bytes,
        media_type: String,
        digest: Sha256Digest,
    },
}

impl Content {
    fn size(&self) -> u64 {
        match self {
            Self::File { file, .. } => file.size,
            Self::Stored(blob) => blob.size,
            Self::Bytes { bytes, .. } => bytes.len() as u64,
        }
    }

    fn digest(&self) -> Sha256Digest {
        match self {
            Self::File { file, .. } => file.sha256(),
            Self::Stored(blob) => blob.digest,
            Self::Bytes { digest, .. } => *digest,
        }
    }

    fn media_type(&self) -> &str {
        match self {
            Self::File { file, media_type } => media_type.unwrap_or(&file.media_type),
            Self::Stored(_) => "application/octet-stream",
            Self::Bytes { media_type, .. } => media_type,
        }
    }
}

/// Answers a `GET` or `HEAD` of `content`: strong ETag (its content address), `304`, one
/// `Range`, immutable caching, and a sandbox for whatever the bytes are.
pub async fn serve(
    state: &AppState,
    content: Content,
    headers: &HeaderMap,
    method: &Method,
) -> ApiResult<Response> {
    let size = content.size();
    let etag = header_value(format_args!("\"sha256:{}\"", content.digest().hex()))?;
    let etag_text = etag.to_str().unwrap_or_default();
    let not_modified = if_none_match(headers, etag_text);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) if if_range_allows(headers, etag_text) => parse_range(value, size),
        _ => RangeRequest::Full,
    };
    // Sized for every header below: growing the map costs reallocations on each request.
    let mut out = HeaderMap::with_capacity(16);
    out.insert(header::ETAG, etag);
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content never changes under a content address.
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    // Uploaded bytes are the uploader's, not ours: a browser must neither sniff them into
    // something executable nor run an uploaded page's script in the store's origin.
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOWNLOAD_CSP),
    );
    if not_modified {
        return Ok(answer(StatusCode::NOT_MODIFIED, out, Body::empty()));
    }
    let (status, range) = match range {
        RangeRequest::Full => (StatusCode::OK, 0..size),
        RangeRequest::Partial(r) => {
            let content_range =
                header_value(format_args!("bytes {}-{}/{}", r.start, r.end - 1, size))?;
            out.insert(header::CONTENT_RANGE, content_range);
            (StatusCode::PARTIAL_CONTENT, r)
        }
        RangeRequest::Unsatisfiable => {
            return Err(ApiError::RangeNotSatisfiable { size });
        }
    };
    let media_type = HeaderValue::from_str(content.media_type()).map_err(cannot_send)?;
    out.insert(header::CONTENT_TYPE, media_type);
    let length = range.end - range.start;
    if method == Method::HEAD {
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        return Ok(answer(status, out, Body::empty()));
    }
    let body = match content {
        Content::File { file, .. } => Body::new(Download {
            stream: state.registry.read_file(&file, range).await?,
            remaining: length,
            file: file.id,
        }),
        Content::Stored(blob) => {
            let stream = state.registry.read_blob(blob, range).await?;
            Body::from_stream(stream)
        }
        Content::Bytes { bytes, .. } => {
            Body::from(bytes.slice(range.start as usize..range.end as usize))
        }
    };
    Ok(answer(status, out, body))
}

/// A download's bytes as a body of known length: hyper writes `Content-Length` from it
/// (nothing to allocate for the header) and so ends the response where the stream must end.
struct Download {
    stream: ByteStream,
    remaining: u64,
    file: FileId,
}

impl http_body::Body for Download {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match ready!(self.stream.poll_next_unpin(cx)) {
            Some(Ok(bytes)) => {
                self.remaining = self.remaining.saturating_sub(bytes.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Some(Err(e)) => {
                // Past the head an error can only cut the connection: the log is where it shows.
                tracing::error!(file = %self.file, error = %e, "a download failed while streaming");
                Poll::Ready(Some(Err(e)))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A response with `headers` as they are: the tuple form inserts them one by one into the
/// response's own map.
fn answer(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A header value formatted on the stack and copied once into its own exact buffer (a
/// `format!` string grows, and a `String` with room to spare costs `Bytes` a second
/// allocation).
fn header_value(text: std::fmt::Arguments<'_>) -> ApiResult<HeaderValue> {
    use std::io::Write;
    let mut buf = [0u8; 128];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let value = match cursor.write_fmt(text) {
        Ok(()) => {
            let n = cursor.position() as usize;
            HeaderValue::from_bytes(&buf[..n])
        }
        Err(_) => HeaderValue::try_from(text.to_string()),
    };
    value.map_err(cannot_send)
}

fn cannot_send(e: axum::http::header::InvalidHeaderValue) -> ApiError {
    ApiError::BadRequest(format!("cannot send header: {e}"))
}
