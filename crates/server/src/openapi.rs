//! The OpenAPI document: its frame (info, security scheme, tags), the paths from the
//! handlers' `#[utoipa::path]` annotations, and [`complete`], which adds what every operation
//! shares — the problem responses each can answer (one `Problem` schema, served as
//! `application/problem+json`), their headers, and the constraints the server enforces on
//! ids, cursors and bodies — so that a client generator can rely on the document.

use serde_json::{Map, Value, json};
use utoipa::Modify;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use crate::Settings;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "artifactstore",
        description = "Content-addressed artifact store: packages, files, upload sessions, \
                       manifests and the event stream. Wire contract: HTTP API v1. Every \
                       4xx/5xx answer is an RFC 7807 problem document \
                       (application/problem+json)."
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

/// Crockford base32 as the id parser takes it: 26 upper-case digits, the first at most 7.
const ULID: &str = "[0-7][0-9A-HJKMNP-TV-Z]{25}";

/// What each problem status means, wherever it is answered.
const MEANINGS: &[(&str, &str)] = &[
    (
        "400",
        "Malformed request (JSON, Content-Range, multipart framing)",
    ),
    ("401", "Missing or unknown bearer token"),
    ("403", "The token is read-only"),
    (
        "404",
        "Not found (also another tenant's resource, and an undecodable id)",
    ),
    ("406", "Accept allows none of the representations served"),
    ("409", "Conflict with the resource's state"),
    ("413", "Body larger than its limit"),
    ("415", "Unsupported Content-Type"),
    ("416", "Range not satisfiable"),
    (
        "422",
        "A field or parameter breaks its rules; `errors` names them",
    ),
    (
        "429",
        "Too many long-polls are waiting; retry after Retry-After",
    ),
    ("500", "Internal error (details are in the server's log)"),
    (
        "507",
        "A quota of the tenant would be passed (`quota`, `limit`, `used`); nothing was stored",
    ),
    (
        "503",
        "At the connection cap, or a store is unreachable; retry after Retry-After",
    ),
];

/// The document served at `/openapi.json`, completed for `settings`.
pub fn document(api: utoipa::openapi::OpenApi, settings: &Settings) -> Value {
    let mut doc = serde_json::to_value(api).unwrap_or_else(|_| json!({}));
    complete(&mut doc, settings);
    doc
}

/// Adds the shared responses and constraints to every operation of `doc`.
pub fn complete(doc: &mut Value, settings: &Settings) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    spell_tag_paths(paths);
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            if let Some(operation) = operation.as_object_mut() {
                complete_operation(path, method, operation);
                // GET and HEAD share a handler, and so its name; ids must be unique.
                if method == "head"
                    && let Some(Value::String(id)) = operation.get_mut("operationId")
                {
                    id.push_str("_head");
                }
            }
        }
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        constrain_schemas(schemas, settings);
    }
}

/// The router's `/tags/{*name}` (one capture: the repository holds `/`) as the contract spells
/// it, `/tags/{repository}/{tag}`, with a parameter for each half.
fn spell_tag_paths(paths: &mut Map<String, Value>) {
    const ROUTED: &str = "/tags/{*name}";
    let Some(mut item) = paths.remove(ROUTED) else {
        return;
    };
    let halves = json!([
        {"name": "repository", "in": "path", "required": true,
         "description": "The repository (OCI name syntax; may hold `/`)",
         "schema": {"type": "string", "pattern": REPOSITORY_PATTERN, "maxLength": 200}},
        {"name": "tag", "in": "path", "required": true, "description": "The tag",
         "schema": {"type": "string", "pattern": TAG_PATTERN}},
    ]);
    for op in item
        .as_object_mut()
        .into_iter()
        .flat_map(|m| m.values_mut())
    {
        let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
            continue;
        };
        params.retain(|p| p["name"] != "name");
        params.splice(0..0, halves.as_array().cloned().unwrap_or_default());
    }
    paths.insert("/tags/{repository}/{tag}".into(), item);
}

/// The OCI name syntax of a tag's repository.
const REPOSITORY_PATTERN: &str =
    "^[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*$";
/// The OCI tag syntax.
const TAG_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$";

fn complete_operation(path: &str, method: &str, op: &mut Map<String, Value>) {
    let secured = op.contains_key("security");
    let writes = matches!(method, "post" | "put" | "patch" | "delete");
    let body = op
        .get("requestBody")
        .and_then(|b| b.get("content"))
        .and_then(Value::as_object)
        .map(|c| c.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    let has_query = op
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
    let mut statuses = vec!["500", "503"];
    if secured {
        statuses.push("401");
    }
    if secured && writes {
        statuses.push("403");
    }
    if path.contains("{id}") {
        statuses.push("404");
    }
    if has_query {
        statuses.push("422");
    }
    if !body.is_empty() {
        statuses.extend(["400", "413", "415", "422"]);
    }
    if path == "/events" {
        statuses.extend(["406", "429"]);
    }
    if path.starts_with("/uploads/{id}") && writes {
        statuses.push("409");
    }
    // The writes that store bytes or open an upload count against the tenant's quotas.
    if matches!(
        (method, path),
        ("post", "/packages/{id}/files") | ("post", "/uploads") | ("patch", "/uploads/{id}")
    ) {
        statuses.push("507");
    }
    constrain_parameters(path, op);
    if path == "/files/{id}/download" {
        // The bytes go out as the file's own media type, whatever it is.
        for status in ["200", "206"] {
            if let Some(response) = op.get_mut("responses").and_then(|r| r.get_mut(status)) {
                response["content"] =
                    json!({"*/*": {"schema": {"type": "string", "format": "binary"}}});
            }
        }
    }
    if let Some(body) = op.get_mut("requestBody") {
        if let Some(form) = body.pointer_mut("/content/multipart~1form-data") {
            form["schema"] = json!({"$ref": "#/components/schemas/FileForm"});
        }
        // Only POST /uploads may come without a body (it is then {}).
        body["required"] = json!(path != "/uploads");
    }
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(responses) = responses else { return };
    for status in statuses {
        responses.entry(status.to_string()).or_insert_with(|| {
            json!({"description": MEANINGS.iter().find(|(s, _)| *s == status).map_or("", |m| m.1)})
        });
    }
    for (status, response) in responses.iter_mut() {
        if status.starts_with('4') || status.starts_with('5') {
            problem_response(status, response);
        }
    }
}

/// One problem response: the `Problem` schema as `application/problem+json`, and the headers
/// that come with its status.
fn problem_response(status: &str, response: &mut Value) {
    let Some(response) = response.as_object_mut() else {
        return;
    };
    response.insert(
        "content".into(),
        json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}),
    );
    let header =
        |description: &str| json!({"description": description, "schema": {"type": "string"}});
    let headers = response
        .entry("headers")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(headers) = headers else { return };
    match status {
        "401" => {
            headers.insert(
                "WWW-Authenticate".into(),
                header("Bearer realm=\"artifactstore\""),
            );
        }
        "429" | "503" => {
            headers.insert("Retry-After".into(), header("Seconds to wait"));
        }
        _ => {}
    }
    if headers.is_empty() {
        response.remove("headers");
    }
}

/// Patterns and bounds on the parameters, exactly as the server checks them.
fn constrain_parameters(path: &str, op: &mut Map<String, Value>) {
    let Some(parameters) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
        return;
    };
    let id_prefix = if path.starts_with("/packages") {
        "pkg_"
    } else if path.starts_with("/files") {
        "file_"
    } else {
        "upl_"
    };
    for p in parameters {
        let name = p["name"].as_str().unwrap_or("").to_string();
        let schema = match (p["in"].as_str().unwrap_or(""), name.as_str()) {
            ("path", "id") => {
                Some(json!({"type": "string", "pattern": format!("^{id_prefix}{ULID}$")}))
            }
            ("query", "state") => Some(json!({"type": "string", "enum": ["open", "finalized"]})),
            ("query", "contains") => {
                Some(json!({"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}))
            }
            ("query", "created_after" | "created_before") => {
                Some(json!({"type": "string", "format": "date-time"}))
            }
            // Clamped, never refused for being large (contract).
            ("query", "limit" | "wait") => Some(json!({"type": "integer", "minimum": 0})),
            ("query", "since") => {
                Some(json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}))
            }
            ("query", "cursor") if path == "/packages" => {
                Some(json!({"type": "string", "pattern": format!("^pkg_{ULID}$")}))
            }
            ("query", "cursor") => {
                Some(json!({"type": "string", "pattern": "^([0-9a-fA-F]{2})*$"}))
            }
            ("header", "Content-Range") => Some(json!({
                "type": "string",
                "pattern": "^bytes [0-9]{1,19}-[0-9]{1,19}/([0-9]{1,19}|\\*)$"
            })),
            _ => None,
        };
        if let Some(schema) = schema {
            p["schema"] = schema;
        }
    }
}

/// Field rules of the request bodies (lengths are counted in characters here; the server
/// counts bytes, so a limit is exact for ASCII).
fn constrain_schemas(schemas: &mut Map<String, Value>, settings: &Settings) {
    let printable = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$";
    let segment = "(?:[^./\\\\\\u0000-\\u001F\\u007F-\\u009F][^/\\\\\\u0000-\\u001F\\u007F-\\u009F]*\
                   |\\.[^./\\\\\\u0000-\\u001F\\u007F-\\u009F][^/\\\\\\u0000-\\u001F\\u007F-\\u009F]*\
                   |\\.\\.[^/\\\\\\u0000-\\u001F\\u007F-\\u009F]+)";
    let file_path = json!({
        "type": "string", "minLength": 1, "maxLength": artifactstore_core::limits::MAX_PATH_BYTES,
        "pattern": format!("^{segment}(?:/{segment})*$"),
    });
    let media_type = json!({
        "type": ["string", "null"], "maxLength": artifactstore_core::limits::MAX_MEDIA_TYPE_BYTES,
        "pattern": "^ *[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+ *(;[ -~]*)?$",
    });
    let sha256 = json!({"type": ["string", "null"], "pattern": "^(sha256:)?[0-9a-f]{64}$"});
    let mut class = json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"});
    if let Some(classes) = &settings.retention_classes {
        class["enum"] = json!(classes);
    }
    let set = |schemas: &mut Map<String, Value>, name: &str, field: &str, schema: Value| {
        if let Some(props) = schemas
            .get_mut(name)
            .and_then(|s| s.get_mut("properties"))
            .and_then(Value::as_object_mut)
        {
            props.insert(field.into(), schema);
        }
    };
    for field in ["producer", "subject"] {
        set(
            schemas,
            "NewPackage",
            field,
            json!({"type": "string", "minLength": 1, "maxLength": 256, "pattern": printable}),
        );
    }
    set(schemas, "NewPackage", "retention_class", class);
    set(
        schemas,
        "NewPackage",
        "metadata",
        json!({
            "type": "object",
            "maxProperties": artifactstore_core::limits::MAX_METADATA_ENTRIES,
            "propertyNames": {"pattern": "^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"},
            "additionalProperties": {"type": "string", "maxLength": 1024},
        }),
    );
    // The single-shot form, parts in the order the server wants them (path before file).
    schemas.insert(
        "FileForm".into(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["path", "file"],
            "properties": {
                "path": file_path.clone(),
                "media_type": {"type": "string", "maxLength": artifactstore_core::limits::MAX_MEDIA_TYPE_BYTES,
                               "pattern": media_type["pattern"].clone()},
                "sha256": {"type": "string", "pattern": sha256["pattern"].clone()},
                "file": {"type": "string", "format": "binary"},
            },
        }),
    );
    set(schemas, "CompleteRequest", "path", file_path);
    set(
        schemas,
        "CompleteRequest",
        "package_id",
        json!({"type": "string", "pattern": format!("^pkg_{ULID}$")}),
    );
    set(schemas, "CompleteRequest", "media_type", media_type);
    set(schemas, "CompleteRequest", "sha256", sha256);
    set(
        schemas,
        "NewUpload",
        "size",
        json!({"type": ["integer", "null"], "minimum": 0, "maximum": settings.max_file_bytes}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use artifactstore_core::PackageId;

    /// The documented id pattern and the id parser agree on every character, in every place.
    #[test]
    fn the_id_pattern_is_the_parsers() {
        let digits = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        for byte in 0u8..=255 {
            let c = byte as char;
            for (position, base) in [(0, "0".repeat(26)), (5, "0".repeat(26))] {
                let mut text: Vec<char> = base.chars().collect();
                text[position] = c;
                let id = format!("pkg_{}", text.iter().collect::<String>());
                let documented = if position == 0 {
                    ('0'..='7').contains(&c)
                } else {
                    digits.contains(c)
                };
                assert_eq!(
                    id.parse::<PackageId>().is_ok(),
                    documented,
                    "{c:?} at {position}"
                );
            }
        }
        assert!(ULID.starts_with("[0-7][0-9A-HJKMNP-TV-Z]"));
    }
}
