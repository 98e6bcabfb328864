//! The server's error type and the one place where every error becomes an RFC 7807 problem
//! document (`application/problem+json`).

use artifactstore_core::error::Resource;
use artifactstore_core::storage::StoreError;
use artifactstore_core::{FieldError, RegistryError};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Everything a request can fail with, in HTTP terms.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("this token is read-only")]
    Forbidden,
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// A resource id that cannot exist (malformed) is as absent as one that does not.
    #[error("{} not found", .0.as_str())]
    NotFound(Resource),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    NotAcceptable(String),
    /// The server is at its connection cap with every connection busy.
    #[error("the server is at its connection limit; retry shortly")]
    Overloaded,
    /// The client address or the tenant is over its request rate (or the address over its
    /// connections); retry after the seconds given.
    #[error("too many requests from this {0}; retry after the time in Retry-After")]
    Throttled(&'static str, u64),
    /// The parts before the `file` part of a multipart body are too large or too many.
    #[error("{0}")]
    MultipartHead(String),
    #[error("the range is not satisfiable for a file of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// A bug (a panic) or an unexpected failure; details go to the log only.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("invalid request: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
}

impl ApiError {
    /// A refusal by the [`Throttle`](crate::throttle::Throttle): `what` is over its rate, for
    /// `wait` (sent as whole seconds, at least one).
    pub fn throttled(what: &'static str, wait: std::time::Duration) -> Self {
        Self::Throttled(what, wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    pub fn http_status_code(&self) -> StatusCode {
        use RegistryError as R;
        match self {
            Self::Registry(e) => match e {
                R::Invalid(_) | R::DigestMismatch { .. } | R::ManifestTooLarge { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                R::NotFound(_) => StatusCode::NOT_FOUND,
                R::PackageFinalized
                | R::PackageHeld
                | R::NotFinalized
                | R::PathTaken(_)
                | R::UploadCompleted
                | R::UploadIncomplete { .. }
                | R::TooManyFiles { .. }
                | R::ConcurrentUpdate => StatusCode::CONFLICT,
                R::OffsetMismatch { .. } | R::BeyondDeclaredSize { .. } => {
                    StatusCode::RANGE_NOT_SATISFIABLE
                }
                R::LengthMismatch { .. }
                | R::SizeMismatch { .. }
                | R::Body(_)
                | R::ManifestBlobUnknown(_) => StatusCode::BAD_REQUEST,
                R::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                R::QuotaExceeded { .. } => StatusCode::INSUFFICIENT_STORAGE,
                R::TooManyWaiting { .. } | R::TooManyReads => StatusCode::TOO_MANY_REQUESTS,
                R::Storage(StoreError::Unavailable(_) | StoreError::OverBudget) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                R::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NoRoute(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Throttled(..) => StatusCode::TOO_MANY_REQUESTS,
            Self::MultipartHead(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable name of the problem (the last part of `type`).
    fn slug(&self) -> &'static str {
        use RegistryError as R;
        match self {
            Self::Registry(e) => match e {
                R::Invalid(_) => "invalid-request",
                R::NotFound(_) => "not-found",
                R::PackageFinalized => "package-finalized",
                R::PackageHeld => "package-held",
                R::NotFinalized => "package-not-finalized",
                R::PathTaken(_) => "path-taken",
                R::ManifestBlobUnknown(_) => "manifest-blob-unknown",
                R::UploadCompleted => "upload-completed",
                R::TooManyFiles { .. } => "too-many-files",
                R::ManifestTooLarge { .. } => "manifest-too-large",
                R::UploadIncomplete { .. } => "upload-incomplete",
                R::OffsetMismatch { .. } => "offset-mismatch",
                R::BeyondDeclaredSize { .. } => "beyond-declared-size",
                R::LengthMismatch { .. } => "length-mismatch",
                R::SizeMismatch { .. } => "size-mismatch",
                R::DigestMismatch { .. } => "digest-mismatch",
                R::TooLarge { .. } => "too-large",
                R::QuotaExceeded { .. } => "quota-exceeded",
                R::ConcurrentUpdate => "concurrent-update",
                R::TooManyWaiting { .. } => "too-many-pollers",
                R::TooManyReads => "too-many-listings",
                R::Body(_) => "body-failed",
                R::Storage(StoreError::Unavailable(_)) => "store-unavailable",
                R::Storage(StoreError::OverBudget) => "query-over-budget",
                R::Storage(_) => "internal",
            },
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "read-only-token",
            Self::NoRoute(_) => "no-route",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::NotFound(_) => "not-found",
            Self::BadRequest(_) => "bad-request",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::TooLarge { .. } => "too-large",
            Self::NotAcceptable(_) => "not-acceptable",
            Self::Overloaded => "overloaded",
            Self::Throttled(..) => "rate-limited",
            Self::MultipartHead(_) => "multipart-head-too-large",
            Self::RangeNotSatisfiable { .. } => "range-not-satisfiable",
            Self::Invalid(_) => "invalid-request",
            Self::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self.http_status_code() {
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
            StatusCode::NOT_ACCEPTABLE => "Not acceptable",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "Content too large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported media type",
            StatusCode::RANGE_NOT_SATISFIABLE => "Range not satisfiable",
            StatusCode::UNPROCESSABLE_ENTITY => "Unprocessable content",
            StatusCode::TOO_MANY_REQUESTS => "Too many requests",
            StatusCode::SERVICE_UNAVAILABLE => "Service unavailable",
            StatusCode::INSUFFICIENT_STORAGE => "Insufficient storage",
            _ => "Internal server error",
        }
    }
}

/// An RFC 7807 problem document.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Validation failures, by the field name the client sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// The upload's current offset, on a chunk that did not start there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The quota a write would pass (`max_bytes`, `max_open_uploads`), with its `limit` and
    /// what is `used` now (`507`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
}

pub const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");

impl ApiError {
    /// The status and the problem document's bytes, for answers written outside the router
    /// (a connection refused at the cap).
    pub fn problem_bytes(&self) -> (StatusCode, Vec<u8>) {
        (
            self.http_status_code(),
            serde_json::to_vec(&self.problem()).unwrap_or_default(),
        )
    }

    fn problem(&self) -> Problem {
        let status = self.http_status_code();
        let detail = match self {
            Self::Registry(RegistryError::Storage(e @ StoreError::Unavailable(_))) => {
                tracing::warn!(error = %e, "store unavailable");
                e.to_string()
            }
            // Internal details go to the log, not to the client.
            Self::Registry(RegistryError::Storage(e)) => {
                tracing::error!(error = %e, "storage failure");
                "the server could not complete the request; it has been logged".to_string()
            }
            Self::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                "the server could not complete the request; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        let errors = match self {
            Self::Invalid(errors) | Self::Registry(RegistryError::Invalid(errors)) => {
                Some(errors.clone())
            }
            _ => None,
        };
        let offset = match self {
            Self::Registry(
                RegistryError::OffsetMismatch { offset, .. }
                | RegistryError::BeyondDeclaredSize { offset, .. },
            ) => Some(*offset),
            _ => None,
        };
        let (quota, limit, used) = match self {
            Self::Registry(RegistryError::QuotaExceeded { quota, limit, used }) => {
                (Some(quota.to_string()), Some(*limit), Some(*used))
            }
            _ => (None, None, None),
        };
        Problem {
            kind: format!("tag:artifactstore,2026:problem/{}", self.slug()),
            title: self.title().to_string(),
            status: status.as_u16(),
            detail,
            errors,
            offset,
            quota,
            limit,
            used,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.problem_bytes();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            Self::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"artifactstore\""),
                );
            }
            Self::Throttled(_, seconds) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
            }
            Self::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            Self::Overloaded
            | Self::Registry(
                RegistryError::TooManyWaiting { .. }
                | RegistryError::TooManyReads
                | RegistryError::Storage(StoreError::Unavailable(_) | StoreError::OverBudget),
            ) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Registry(
                RegistryError::OffsetMismatch { offset, .. }
                | RegistryError::BeyondDeclaredSize { offset, .. },
            ) => {
                headers.insert(UPLOAD_OFFSET, HeaderValue::from(*offset));
            }
            _ => {}
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
