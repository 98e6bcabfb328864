//! OpenAPI schemas of the types that serialize by hand (ids, timestamps, digests); compiled
//! only with the `openapi` feature, which the server turns on.

use std::borrow::Cow;

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::digest::Sha256Digest;
use crate::ids::{Id, IdKind};
use crate::model::ContentAddress;
use crate::timestamp::Timestamp;

fn string(description: &str, pattern: Option<&str>, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(pattern)
        .examples([serde_json::Value::from(example)])
        .into()
}

impl<K: IdKind> PartialSchema for Id<K> {
    fn schema() -> RefOr<Schema> {
        string(
            "Opaque, URL-safe, time-sortable identifier.",
            Some(&format!("^{}[0-9A-Z]{{26}}$", K::PREFIX)),
            &format!("{}01JZ3NDEKTSV4RRFFQ69G5FAVA", K::PREFIX),
        )
    }
}

impl<K: IdKind> ToSchema for Id<K> {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed(K::SCHEMA_NAME)
    }
}

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "RFC 3339 UTC timestamp with millisecond precision and a Z suffix.",
            ))
            .examples([serde_json::Value::from("2026-05-15T12:00:00.123Z")])
            .into()
    }
}

impl ToSchema for Timestamp {}

impl PartialSchema for Sha256Digest {
    fn schema() -> RefOr<Schema> {
        string(
            "SHA-256 as 64 lowercase hex digits.",
            Some("^[0-9a-f]{64}$"),
            &"0".repeat(64),
        )
    }
}

impl ToSchema for Sha256Digest {}

impl PartialSchema for ContentAddress {
    fn schema() -> RefOr<Schema> {
        string(
            "Content address: sha256: and 64 lowercase hex digits.",
            Some("^sha256:[0-9a-f]{64}$"),
            &format!("sha256:{}", "0".repeat(64)),
        )
    }
}

impl ToSchema for ContentAddress {}
