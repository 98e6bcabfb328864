//! `GET /events`: the tenant's slice of the event log, with long-poll; CBOR by default, JCS
//! JSON on `Accept: application/json`.

use std::time::Duration;

use artifactstore_core::Event;
use artifactstore_core::manifest::{to_deterministic_cbor, to_jcs};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{clamped, number, query_pairs};
use crate::AppState;
use crate::auth::Reader;
use crate::error::{ApiError, ApiResult, Problem};
use crate::http::accepts;

/// Default long-poll wait, in seconds (the largest is a setting, at most 60).
pub const DEFAULT_WAIT_SECS: u64 = 30;

#[derive(Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// The last returned sequence, or `since` when none was returned.
    pub next_since: u64,
}

#[utoipa::path(get, path = "/events", tag = "events", security(("bearer" = [])),
    params(("since" = Option<u64>, Query, description = "Return events with a greater sequence (default 0)"),
           ("limit" = Option<u32>, Query, description = "At most this many (default 100, clamped to 1000)"),
           ("wait" = Option<u64>, Query, description = "Seconds to wait for a first event (default 30, clamped to 60 or the server's lower --max-wait-secs; 0 answers at once)")),
    responses((status = 200, description = "Events, oldest first: CBOR by default, JCS JSON with Accept: application/json",
               content((EventPage = "application/cbor"), (EventPage = "application/json"))),
              (status = 406, description = "Accept allows neither", body = Problem)))]
pub async fn events(
    State(state): State<AppState>,
    Reader(scope): Reader,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let max_wait = state.settings.max_wait.as_secs();
    let (mut since, mut limit, mut wait) = (0u64, None, DEFAULT_WAIT_SECS.min(max_wait));
    for (key, value) in query_pairs(raw.as_deref()) {
        match key.as_str() {
            "since" => since = number("since", &value)?,
            "limit" => limit = Some(clamped("limit", &value)?),
            "wait" => wait = clamped::<u64>("wait", &value)?.min(max_wait),
            _ => {}
        }
    }
    // CBOR unless the client asks for JSON and does not also take CBOR.
    let json = !accepts(&headers, "application/cbor");
    if json && !accepts(&headers, "application/json") {
        return Err(ApiError::NotAcceptable(
            "events are served as application/cbor or application/json".into(),
        ));
    }
    let wait = Duration::from_secs(wait);
    let events = tokio::select! {
        events = state.registry.events(&scope, since, limit, wait) => events?,
        // Shutting down: answer now with nothing new; the client polls again elsewhere.
        () = state.stopping() => Vec::new(),
    };
    let next_since = events.last().map_or(since, |e| e.sequence);
    let page = EventPage { events, next_since };
    let encode_error =
        |e: artifactstore_core::manifest::EncodeError| ApiError::Internal(e.to_string());
    let (content_type, body) = if json {
        (
            "application/json",
            to_jcs(&page).map_err(encode_error)?.into_bytes(),
        )
    } else {
        (
            "application/cbor",
            to_deterministic_cbor(&page).map_err(encode_error)?,
        )
    };
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response())
}
