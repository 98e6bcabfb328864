//! The single-shot ingest form (`multipart/form-data`): its text parts, read into bounded
//! buffers, and its `file` part, handed on as a stream. Everything before the `file` part
//! (preamble, part headers, text parts) is capped in bytes and in parts, so a body that never
//! reaches a boundary cannot make the server buffer it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use artifactstore_core::NewFile;
use artifactstore_core::storage::ByteStream;
use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};

use crate::error::{ApiError, ApiResult};

/// Bytes of the body before the `file` part's content begins.
pub const MAX_HEAD_BYTES: u64 = 64 * 1024;
/// Parts before the `file` part.
pub const MAX_PARTS_BEFORE_FILE: usize = 16;
/// Largest text part (`path`, `media_type`, `sha256`).
pub const MAX_TEXT_PART_BYTES: usize = 8 * 1024;

/// Reads the form up to its `file` part: the file's description and its byte stream.
pub async fn read_form(content_type: &str, body: Body) -> ApiResult<(NewFile, ByteStream)> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::UnsupportedMediaType(
            "the body must be multipart/form-data with a boundary".into(),
        )
    })?;
    let budget = Arc::new(HeadBudget {
        used: AtomicU64::new(0),
        open: AtomicBool::new(true),
    });
    let stream = Budgeted {
        inner: body.into_data_stream(),
        budget: budget.clone(),
        pending: Bytes::new(),
        handed: false,
    };
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut new = NewFile::default();
    let mut path = None;
    for _ in 0..=MAX_PARTS_BEFORE_FILE {
        let Some(field) = multipart.next_field().await.map_err(multipart_error)? else {
            return Err(ApiError::invalid(
                "file",
                "the multipart body has no part named file",
            ));
        };
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            budget.open.store(false, Ordering::Release);
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
            return Ok((new, stream));
        }
        let text = text_part(field, &name).await?;
        match name.as_str() {
            "path" => path = Some(text),
            "media_type" => new.media_type = Some(text),
            "sha256" => new.sha256 = Some(text),
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown part: the form has path, media_type, sha256 and file",
                ));
            }
        }
    }
    Err(ApiError::MultipartHead(format!(
        "at most {MAX_PARTS_BEFORE_FILE} parts may come before the file part"
    )))
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
    if let multer::Error::StreamReadFailed(source) = &e
        && source.is::<HeadTooLarge>()
    {
        return ApiError::MultipartHead(source.to_string());
    }
    ApiError::BadRequest(format!("malformed multipart body: {e}"))
}

/// How much of the body the parser has taken while the head is still being read.
struct HeadBudget {
    used: AtomicU64,
    /// True until the `file` part begins.
    open: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the parts before the file part (preamble, part headers, text parts) exceed {MAX_HEAD_BYTES} bytes"
)]
struct HeadTooLarge;

/// The body stream, failing once the head has taken more than [`MAX_HEAD_BYTES`]. While the
/// head is read, chunks are handed to the parser in pieces of at most [`PIECE`] bytes, one
/// per poll (multer takes everything a stream has ready in one go, so after each piece the
/// stream says "not yet" and wakes itself): the parser sees the `file` part begin, and the
/// count stops it, within a piece of where it happens, even when one chunk holds the body.
struct Budgeted<S> {
    inner: S,
    budget: Arc<HeadBudget>,
    pending: Bytes,
    /// A piece was just handed over; the next poll yields first.
    handed: bool,
}

const PIECE: usize = 4 * 1024;

impl<S> Stream for Budgeted<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.handed && this.budget.open.load(Ordering::Acquire) {
            this.handed = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if this.pending.is_empty() {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.pending = chunk,
                other => return other.map(|item| item.map(|r| r.map_err(Into::into))),
            }
        }
        if !this.budget.open.load(Ordering::Acquire) {
            return Poll::Ready(Some(Ok(std::mem::take(&mut this.pending))));
        }
        let piece = this.pending.split_to(this.pending.len().min(PIECE));
        let used = this
            .budget
            .used
            .fetch_add(piece.len() as u64, Ordering::AcqRel);
        if used >= MAX_HEAD_BYTES {
            return Poll::Ready(Some(Err(Box::new(HeadTooLarge))));
        }
        this.handed = true;
        Poll::Ready(Some(Ok(piece)))
    }
}
