//! `/tags…`: set (create or move), read, list and delete a tenant's tags.

use artifactstore_core::*;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{clamped, created, query_pairs};
use crate::AppState;
use crate::auth::{Reader, Writer};
use crate::error::{ApiError, ApiResult, Problem};
use crate::http::ApiJson;

/// The body of `PUT /tags/{repository}/{tag}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTag {
    pub package_id: String,
}

/// `repository/…/tag` of a tag's path: the last segment is the tag. One that does not even
/// decode names nothing (`404`); one without a `/` breaks the rules (`422`).
pub struct TagPath {
    repository: String,
    tag: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TagPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let Ok(Path(name)) = Path::<String>::from_request_parts(parts, state).await else {
            return Err(ApiError::NoRoute(parts.uri.path().to_string()));
        };
        match name.rsplit_once('/') {
            Some((repository, tag)) => Ok(Self {
                repository: repository.to_string(),
                tag: tag.to_string(),
            }),
            None => Err(ApiError::invalid(
                "repository",
                "a tag's path is /tags/{repository}/{tag}",
            )),
        }
    }
}

/// The tenant a tag request reads: the caller's; an anonymous reader whose reads span every
/// tenant names one with `tenant=` (a token's caller naming another sees nothing).
fn tenant_of(scope: &Scope, named: Option<String>) -> Result<Option<String>, ApiError> {
    match (scope, named) {
        (Scope::Tenant(own), Some(named)) if *own != named => Ok(None),
        (Scope::Tenant(own), _) => Ok(Some(own.clone())),
        (Scope::All, Some(named)) => Ok(Some(named)),
        (Scope::All, None) => Err(ApiError::BadRequest(
            "anonymous reads here span every tenant: name one with tenant=NAME".into(),
        )),
    }
}

/// The `tenant` query parameter, if any.
fn named_tenant(raw: Option<&str>) -> Option<String> {
    query_pairs(raw)
        .into_iter()
        .find_map(|(k, v)| (k == "tenant").then_some(v))
}

#[utoipa::path(put, path = "/tags/{*name}", tag = "tags", request_body = SetTag,
    security(("bearer" = [])),
    params(("name" = String, Path, description = "repository/tag: the repository (OCI name syntax, may hold /), then the tag")),
    responses((status = 201, description = "A new tag", body = Tag,
               headers(("Location" = String, description = "/tags/{repository}/{tag}"))),
              (status = 200, description = "Moved, or it named that package already (no event)", body = Tag),
              (status = 404, description = "No such package in the tenant", body = Problem),
              (status = 409, description = "The package is not finalized", body = Problem),
              (status = 422, description = "A bad name or body", body = Problem)))]
pub async fn set_tag(
    State(state): State<AppState>,
    Writer(caller): Writer,
    TagPath { repository, tag }: TagPath,
    ApiJson(body): ApiJson<SetTag>,
) -> ApiResult<Response> {
    let change = state
        .registry
        .set_tag(&caller.tenant, &repository, &tag, &body.package_id)
        .await?;
    Ok(match change {
        TagChange::Created(tag) => created(format!("/tags/{}/{}", tag.repository, tag.tag), &tag),
        TagChange::Moved { tag, .. } | TagChange::Unchanged(tag) => Json(tag).into_response(),
    })
}

#[utoipa::path(get, path = "/tags/{*name}", tag = "tags", security(("bearer" = [])),
    params(("name" = String, Path, description = "repository/tag"),
           ("tenant" = Option<String>, Query, description = "The tenant, for an anonymous reader whose reads span several")),
    responses((status = 200, description = "The tag", body = Tag),
              (status = 404, description = "No such tag", body = Problem)))]
pub async fn get_tag(
    State(state): State<AppState>,
    Reader(scope): Reader,
    TagPath { repository, tag }: TagPath,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Tag>> {
    let Some(tenant) = tenant_of(&scope, named_tenant(raw.as_deref()))? else {
        return Err(ApiError::NotFound(artifactstore_core::error::Resource::Tag));
    };
    Ok(Json(state.registry.tag(&tenant, &repository, &tag).await?))
}

#[utoipa::path(delete, path = "/tags/{*name}", tag = "tags", security(("bearer" = [])),
    params(("name" = String, Path, description = "repository/tag")),
    responses((status = 204, description = "Deleted (`tag.deleted`, reason `request`); the package stays"),
              (status = 404, description = "No such tag", body = Problem)))]
pub async fn delete_tag(
    State(state): State<AppState>,
    Writer(caller): Writer,
    TagPath { repository, tag }: TagPath,
) -> ApiResult<StatusCode> {
    state
        .registry
        .delete_tag(&caller.tenant, &repository, &tag)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/tags", tag = "tags", security(("bearer" = [])),
    params(("repository" = Option<String>, Query, description = "Only this repository's tags"),
           ("tenant" = Option<String>, Query, description = "The tenant, for an anonymous reader whose reads span several"),
           ("limit" = Option<u32>, Query, description = "Page size (default 50, clamped to 1000)"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, description = "Tags by repository, then tag, in byte order", body = Page<Tag>),
              (status = 400, description = "An anonymous reader spanning several tenants named none", body = Problem)))]
pub async fn list_tags(
    State(state): State<AppState>,
    Reader(scope): Reader,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Page<Tag>>> {
    let (mut repository, mut cursor, mut limit) = (None, None, None);
    for (key, value) in query_pairs(raw.as_deref()) {
        match key.as_str() {
            "repository" => repository = Some(value),
            "limit" => limit = Some(clamped("limit", &value)?),
            "cursor" => cursor = Some(value),
            _ => {}
        }
    }
    let Some(tenant) = tenant_of(&scope, named_tenant(raw.as_deref()))? else {
        return Ok(Json(Page {
            items: Vec::new(),
            next_cursor: None,
        }));
    };
    let page = state
        .registry
        .list_tags(&tenant, repository.as_deref(), cursor.as_deref(), limit)
        .await?;
    Ok(Json(page))
}
