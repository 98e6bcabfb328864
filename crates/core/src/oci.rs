//! The OCI distribution face's rules that know nothing of HTTP: references, media types, and
//! the deterministic OCI artifact manifest every finalized package is served as.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::digest::Sha256Digest;
use crate::ids::PackageId;
use crate::manifest::Manifest;
use crate::model::{FileRecord, StoredManifest};
use crate::validate;

pub const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The `artifactType` of a package served as an OCI artifact.
pub const PACKAGE_ARTIFACT: &str = "application/vnd.artifactstore.package.v1";
/// The media type of its config: the package's CBOR manifest.
pub const PACKAGE_CONFIG: &str = "application/vnd.artifactstore.manifest.v1+cbor";
/// The empty descriptor's media type and bytes (image-spec, "Guidance for an empty
/// descriptor").
pub const EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_JSON_BYTES: &[u8] = b"{}";
/// Where a package's own fields go among its artifact manifest's annotations.
pub const ANNOTATION_PREFIX: &str = "dev.artifactstore.";
pub const TITLE: &str = "org.opencontainers.image.title";
pub const CREATED: &str = "org.opencontainers.image.created";

/// What follows `/manifests/` in a request: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Sha256Digest),
}

impl Reference {
    /// A `sha256:` digest or a tag; `None` for anything else (it names nothing).
    pub fn parse(text: &str) -> Option<Self> {
        if text.contains(':') {
            return Sha256Digest::from_content_address(text).map(Self::Digest);
        }
        validate::tag(text).ok()?;
        Some(Self::Tag(text.to_string()))
    }
}

/// A blob served under `/v2/`: the bytes of a file, or bytes the store holds in its
/// metadata (a package's CBOR manifest, the empty JSON object).
#[derive(Clone, Debug)]
pub enum Blob {
    File(FileRecord),
    Bytes(Bytes),
}

/// A manifest as served under `/v2/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Sha256Digest,
    pub package: PackageId,
}

/// The digest of [`EMPTY_JSON_BYTES`].
pub fn empty_json_digest() -> Sha256Digest {
    Sha256Digest::of(EMPTY_JSON_BYTES)
}

/// The OCI artifact manifest of a finalized package: its CBOR manifest as config, its files
/// as layers in the manifest's path order, each titled with its path, and the package's
/// fields as annotations; JCS-serialized, so the same package gives the same bytes (and
/// digest) on every replica. A package without files has the empty descriptor as its one
/// layer, as the image specification asks.
pub fn artifact_manifest(manifest: &Manifest, stored: &StoredManifest) -> Vec<u8> {
    let mut layers: Vec<Value> = manifest
        .files
        .iter()
        .map(|f| {
            json!({
                "mediaType": f.media_type,
                "digest": f.content_address.to_string(),
                "size": f.size,
                "annotations": { TITLE: f.path },
            })
        })
        .collect();
    if layers.is_empty() {
        layers.push(json!({
            "mediaType": EMPTY_JSON,
            "digest": empty_json_digest().content_address(),
            "size": EMPTY_JSON_BYTES.len(),
        }));
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(CREATED.to_string(), manifest.finalized_at.to_string());
    let own = |key: &str| format!("{ANNOTATION_PREFIX}{key}");
    annotations.insert(own("package_id"), manifest.package_id.clone());
    annotations.insert(own("producer"), manifest.producer.clone());
    annotations.insert(own("subject"), manifest.subject.clone());
    annotations.insert(own("retention_class"), manifest.retention_class.clone());
    for (key, value) in &manifest.metadata {
        annotations.insert(own(&format!("metadata.{key}")), value.clone());
    }
    let value = json!({
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "artifactType": PACKAGE_ARTIFACT,
        "config": {
            "mediaType": PACKAGE_CONFIG,
            "digest": stored.digest.content_address(),
            "size": stored.cbor.len(),
        },
        "layers": layers,
        "annotations": annotations,
    });
    // Our own JSON values only: canonicalization cannot fail.
    serde_json_canonicalizer::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_tags_or_sha256_digests() {
        let digest = Sha256Digest::of(b"x");
        assert_eq!(
            Reference::parse(&digest.content_address()),
            Some(Reference::Digest(digest))
        );
        assert_eq!(
            Reference::parse("v1.0"),
            Some(Reference::Tag("v1.0".into()))
        );
        for bad in ["", "sha512:00", "sha256:zz", "a/b", ".x", "sha256:"] {
            assert_eq!(Reference::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_empty_descriptor_has_its_published_digest() {
        assert_eq!(
            empty_json_digest().hex(),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
