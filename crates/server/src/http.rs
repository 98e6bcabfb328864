//! HTTP details the handlers share: the JSON body extractor with its size limit, conditional
//! requests (`If-None-Match`, `If-Range`), `Range` and `Accept` parsing.

use std::ops::Range;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

/// A JSON body of at most the configured size. Malformed JSON is a `400`; well-formed JSON
/// that does not fit the expected shape is a `422` naming the field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = read_limited(body, state.settings.max_json_bytes).await?;
        if bytes.is_empty() {
            // An empty body is the empty object: optional bodies such as POST /uploads.
            return parse_json::<T>(b"{}").map(ApiJson);
        }
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let is_json = content_type.is_some_and(|ct| {
            let essence = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON (Content-Type: application/json)".into(),
            ));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut too_large = false;
        while let Some(s) = source {
            too_large |= s.is::<http_body_util::LengthLimitError>();
            source = s.source();
        }
        if too_large {
            ApiError::TooLarge {
                limit: limit as u64,
            }
        } else {
            ApiError::BadRequest(format!("reading the body failed: {e}"))
        }
    })
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::BadRequest(format!("malformed JSON: {inner}"));
        }
        let message = inner.to_string();
        let path = e.path().to_string();
        let field = if path == "." {
            // serde names a missing field only in its message: "missing field `producer`".
            message.split('`').nth(1).unwrap_or("body").to_string()
        } else {
            path
        };
        ApiError::invalid(&field, message)
    })
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    Full,
    Partial(Range<u64>),
    Unsatisfiable,
}

/// Parses a single `bytes=` range (RFC 9110 §14.1.2). Anything else we do not serve as a
/// range — other units, several ranges, malformed text — is answered with the whole body.
pub fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    // Digits only; a number past u64 is past any file, so it saturates rather than failing.
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            Some(s.parse().unwrap_or(u64::MAX))
        }
    };
    match (first.is_empty(), last.is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match number(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(size.saturating_sub(n)..size),
            None => RangeRequest::Full,
        },
        // bytes=a-
        (false, true) => match number(first) {
            Some(a) if a < size => RangeRequest::Partial(a..size),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        // bytes=a-b
        (false, false) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a > b => RangeRequest::Full,
            (Some(a), Some(_)) if a >= size => RangeRequest::Unsatisfiable,
            (Some(a), Some(b)) => RangeRequest::Partial(a..b.min(size - 1) + 1),
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

/// Whether `If-None-Match` matches `etag` (weak comparison, lists, `*`).
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',').any(|candidate| {
                let candidate = candidate.trim();
                candidate == "*" || opaque(candidate) == opaque(etag)
            })
        })
}

/// Whether a `Range` may be honoured given `If-Range` (strong comparison; a date never
/// matches, since files have no modification time to compare it with).
pub fn if_range_allows(headers: &HeaderMap, etag: &str) -> bool {
    match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(value) => value.trim() == etag,
    }
}

/// Whether the request's `Accept` allows `media_type` (absent means anything).
pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return true;
    }
    let (kind, _) = media_type.split_once('/').unwrap_or((media_type, ""));
    values.iter().flat_map(|v| v.split(',')).any(|item| {
        let mut params = item.split(';');
        let range = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = params.any(|p| {
            let p = p.trim().replace(' ', "");
            p.strip_prefix("q=")
                .is_some_and(|q| q.parse::<f32>().map(|q| q <= 0.0).unwrap_or(false))
        });
        !refused && (range == "*/*" || range == media_type || range == format!("{kind}/*"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial(0..10));
        assert_eq!(parse_range("bytes=90-200", 100), Partial(90..100));
        assert_eq!(parse_range("bytes=99-", 100), Partial(99..100));
        assert_eq!(parse_range("bytes=-10", 100), Partial(90..100));
        assert_eq!(parse_range("bytes=-1000", 100), Partial(0..100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("bytes=5-1", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=+1-2", 100), Full);
        let huge = "99999999999999999999999999";
        assert_eq!(parse_range(&format!("bytes={huge}-"), 100), Unsatisfiable);
        assert_eq!(
            parse_range(&format!("bytes={huge}-{huge}"), 100),
            Unsatisfiable
        );
        assert_eq!(
            parse_range(&format!("bytes=5-{huge}"), 100),
            Partial(5..100)
        );
        assert_eq!(parse_range(&format!("bytes=-{huge}"), 100), Partial(0..100));
    }

    #[test]
    fn conditional_and_accept() {
        let mut h = HeaderMap::new();
        let etag = "\"sha256:ab\"";
        assert!(!if_none_match(&h, etag));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"sha256:ab\""),
        );
        assert!(if_none_match(&h, etag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&h, etag));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"sha256:ac\""),
        );
        assert!(!if_none_match(&h, etag));

        let mut a = HeaderMap::new();
        assert!(accepts(&a, "application/cbor"));
        a.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!accepts(&a, "application/cbor"));
        a.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, */*;q=0.1"),
        );
        assert!(accepts(&a, "application/cbor"));
        a.insert(header::ACCEPT, HeaderValue::from_static("application/*"));
        assert!(accepts(&a, "application/cbor"));
        a.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/cbor;q=0"),
        );
        assert!(!accepts(&a, "application/cbor"));
    }
}
