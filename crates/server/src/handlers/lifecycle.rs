//! The end of a package's life: `DELETE /packages/{id}`, holds, the retention rules in force
//! (`GET /retention`), and what a tenant uses against its quotas (`GET /usage`).

use std::collections::BTreeMap;

use artifactstore_core::Package;
use artifactstore_core::error::Resource;
use artifactstore_core::retention::format_duration;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::{PathId, parse_id};
use crate::AppState;
use crate::auth::{Reader, Writer};
use crate::error::{ApiError, ApiResult, Problem};

#[utoipa::path(delete, path = "/packages/{id}", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id")),
    responses((status = 204, description = "Deleted: the package, its files and their downloads answer 404 from now on"),
              (status = 404, description = "Not found", body = Problem),
              (status = 409, description = "The package is held", body = Problem)))]
pub async fn delete_package(
    State(state): State<AppState>,
    Writer(caller): Writer,
    PathId(id): PathId,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, Resource::Package)?;
    state.registry.delete_package(&caller.tenant, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/packages/{id}/hold", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id")),
    responses((status = 200, description = "The package, held: deleted neither by request nor by retention", body = Package)))]
pub async fn hold(
    State(state): State<AppState>,
    Writer(caller): Writer,
    PathId(id): PathId,
) -> ApiResult<Json<Package>> {
    let id = parse_id(&id, Resource::Package)?;
    Ok(Json(
        state.registry.set_hold(&caller.tenant, id, true).await?,
    ))
}

#[utoipa::path(delete, path = "/packages/{id}/hold", tag = "packages", security(("bearer" = [])),
    params(("id" = String, Path, description = "Package id")),
    responses((status = 200, description = "The package, released", body = Package)))]
pub async fn release(
    State(state): State<AppState>,
    Writer(caller): Writer,
    PathId(id): PathId,
) -> ApiResult<Json<Package>> {
    let id = parse_id(&id, Resource::Package)?;
    Ok(Json(
        state.registry.set_hold(&caller.tenant, id, false).await?,
    ))
}

/// One class's rule as configured; absent parts delete nothing.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RetentionRuleView {
    /// A finalized package is deleted this long after `finalized_at` (`14d`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Only the newest N finalized packages of one tenant, class and subject are kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// An open package not finalized this long after `created_at` is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_max_age: Option<String>,
}

/// The retention rules in force; a class not listed keeps its packages forever.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RetentionView {
    pub rules: BTreeMap<String, RetentionRuleView>,
}

#[utoipa::path(get, path = "/retention", tag = "packages", security(("bearer" = [])),
    responses((status = 200, description = "The retention rules by class", body = RetentionView)))]
pub async fn retention(State(state): State<AppState>, _reader: Reader) -> Json<RetentionView> {
    let rules = state
        .registry
        .config()
        .retention
        .iter()
        .map(|(class, rule)| {
            let view = RetentionRuleView {
                max_age: rule.max_age.map(format_duration),
                keep_last: rule.keep_last,
                open_max_age: rule.open_max_age.map(format_duration),
            };
            (class.clone(), view)
        })
        .collect();
    Json(RetentionView { rules })
}

/// A tenant's quotas; `null` is no limit.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LimitsView {
    pub max_bytes: Option<u64>,
    pub max_open_uploads: Option<u64>,
}

/// What the caller's tenant uses: `bytes` are the sizes of its files plus the offsets of its
/// open uploads.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct UsageView {
    pub tenant: String,
    pub bytes: u64,
    pub packages: u64,
    pub open_uploads: u64,
    pub limits: LimitsView,
}

#[utoipa::path(get, path = "/usage", tag = "packages", security(("bearer" = [])),
    responses((status = 200, description = "The tenant's usage and quotas", body = UsageView)))]
pub async fn usage(
    State(state): State<AppState>,
    Reader(scope): Reader,
) -> ApiResult<Json<UsageView>> {
    let Some(tenant) = scope.tenant() else {
        return Err(ApiError::BadRequest(
            "usage is per tenant: send a token (anonymous reads here see every tenant)".into(),
        ));
    };
    let (usage, quota) = state.registry.usage(tenant).await?;
    Ok(Json(UsageView {
        tenant: tenant.to_string(),
        bytes: usage.bytes,
        packages: usage.packages,
        open_uploads: usage.open_uploads,
        limits: LimitsView {
            max_bytes: quota.max_bytes,
            max_open_uploads: quota.max_open_uploads,
        },
    }))
}
