//! The route handlers: each parses its request, calls the registry once or twice, and maps
//! the result. No domain logic lives here.

pub mod events;
pub mod files;
pub mod lifecycle;
pub mod packages;
pub mod service;
pub mod tags;
pub mod uploads;

use artifactstore_core::error::Resource;
use artifactstore_core::ids::{Id, IdKind};
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ApiError;

/// The `{id}` segment of a path. One that does not even decode (bad percent-encoding, not
/// UTF-8) names nothing: a `404` problem like any unknown id.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(_) => Err(ApiError::NoRoute(parts.uri.path().to_string())),
        }
    }
}

/// Parses a path id; a malformed one names nothing, so it is a `404` like an absent one.
pub fn parse_id<K: IdKind>(text: &str, resource: Resource) -> Result<Id<K>, ApiError> {
    text.parse().map_err(|_| ApiError::NotFound(resource))
}

/// `201 Created` with `Location` and a JSON body.
pub fn created(location: String, body: &impl Serialize) -> Response {
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Parses the raw query string into pairs (keys may repeat).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A page size or wait: digits, clamped later, so a number past any integer type is simply
/// the largest one.
pub fn clamped<T: std::str::FromStr + Bounded>(field: &str, value: &str) -> Result<T, ApiError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(field, "must be a non-negative integer"));
    }
    Ok(value.parse().unwrap_or(T::MAX))
}

/// The integer types [`clamped`] saturates to.
pub trait Bounded {
    const MAX: Self;
}

impl Bounded for u32 {
    const MAX: Self = u32::MAX;
}

impl Bounded for u64 {
    const MAX: Self = u64::MAX;
}

/// A non-negative integer query parameter.
pub fn number<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::invalid(field, "must be a non-negative integer"))
}
