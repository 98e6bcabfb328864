//! The route handlers: each parses its request, calls the registry once or twice, and maps
//! the result. No domain logic lives here.

pub mod events;
pub mod files;
pub mod packages;
pub mod service;
pub mod uploads;

use artifactstore_core::error::Resource;
use artifactstore_core::ids::{Id, IdKind};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ApiError;

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

/// A non-negative integer query parameter.
pub fn number<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::invalid(field, "must be a non-negative integer"))
}
