//! The OpenAPI document's frame (info, security scheme, tags); the paths come from the
//! handlers' `#[utoipa::path]` annotations as the router is built.

use utoipa::Modify;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "artifactstore",
        description = "Content-addressed artifact store: packages, files, upload sessions, \
                       manifests and the event stream. Wire contract: HTTP API v1."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "packages", description = "Create, list, ingest into and finalize packages"),
        (name = "files", description = "File metadata and downloads"),
        (name = "uploads", description = "Resumable upload sessions"),
        (name = "events", description = "The append-only event stream"),
        (name = "service", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
