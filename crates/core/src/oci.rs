//! The OCI distribution face's rules that know nothing of HTTP: references, media types, and
//! the deterministic OCI artifact manifest every finalized package is served as.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::digest::Sha256Digest;
use crate::ids::PackageId;
use crate::manifest::Manifest;
use crate::model::{FileRecord, StoredManifest};
use crate::storage::BlobInfo;
use crate::validate;

pub const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The artifact manifest of image-spec 1.1's release candidates, which some clients push.
pub const ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The manifest types a push may store.
pub const PUSHABLE: [&str; 5] = [
    IMAGE_MANIFEST,
    IMAGE_INDEX,
    ARTIFACT_MANIFEST,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];
/// Descriptors one pushed manifest may reference (blobs and manifests together).
pub const MAX_REFERENCES: usize = 10_000;
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

/// A blob served under `/v2/`: the bytes of a file, bytes pushed and not referenced yet, or
/// bytes the store holds in its metadata (a package's CBOR manifest, the empty JSON object).
#[derive(Clone, Debug)]
pub enum Blob {
    File(FileRecord),
    Stored(BlobInfo),
    Bytes(Bytes),
}

/// A descriptor of a pushed manifest: what it references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Sha256Digest,
    pub size: u64,
    /// `org.opencontainers.image.title`, if any.
    pub title: Option<String>,
}

/// What a pushed manifest references, read from its JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Blobs: the config (unless it is the empty descriptor) and the layers (or an artifact
    /// manifest's blobs).
    pub blobs: Vec<Descriptor>,
    /// Manifests an index names.
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (referrers API).
    pub subject: Option<Sha256Digest>,
    /// `artifactType`, else the config's media type.
    pub artifact_type: Option<String>,
}

/// Reads a pushed manifest of `media_type` (`Content-Type`, parameters dropped); the reason it
/// is not a manifest the store can keep, if it is not.
pub fn parse(media_type: &str, bytes: &[u8]) -> Result<Parsed, String> {
    if !PUSHABLE.contains(&media_type) {
        return Err(format!(
            "Content-Type {media_type:?} is not a manifest type this store keeps ({})",
            PUSHABLE.join(", ")
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    if let Some(declared) = object.get("mediaType")
        && declared.as_str() != Some(media_type)
    {
        return Err(format!(
            "mediaType {declared} differs from the Content-Type {media_type:?}"
        ));
    }
    let schema = object.get("schemaVersion").and_then(Value::as_u64);
    if media_type != ARTIFACT_MANIFEST && schema != Some(2) {
        return Err("schemaVersion must be 2".into());
    }
    let list = |key: &str| -> Result<Vec<Descriptor>, String> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(|d| descriptor(d, key)).collect(),
            Some(_) => Err(format!("{key} must be an array")),
        }
    };
    let mut parsed = Parsed::default();
    match media_type {
        IMAGE_INDEX | DOCKER_MANIFEST_LIST => parsed.manifests = list("manifests")?,
        ARTIFACT_MANIFEST => parsed.blobs = list("blobs")?,
        _ => {
            let config = object.get("config").ok_or("a manifest needs a config")?;
            let config = descriptor(config, "config")?;
            parsed.artifact_type = Some(config.media_type.clone());
            if config.digest != empty_json_digest() {
                parsed.blobs.push(config);
            }
            parsed.blobs.extend(list("layers")?);
        }
    }
    if let Some(kind) = object.get("artifactType").and_then(Value::as_str) {
        parsed.artifact_type = Some(kind.to_string());
    }
    if let Some(subject) = object.get("subject") {
        parsed.subject = Some(descriptor(subject, "subject")?.digest);
    }
    if parsed.blobs.len() + parsed.manifests.len() > MAX_REFERENCES {
        return Err(format!(
            "references more than {MAX_REFERENCES} blobs and manifests"
        ));
    }
    Ok(parsed)
}

/// One descriptor (`mediaType`, a `sha256:` `digest`, `size`), found at `at`.
fn descriptor(value: &Value, at: &str) -> Result<Descriptor, String> {
    let field = |name: &str| value.get(name);
    let media_type = field("mediaType").and_then(Value::as_str);
    let digest = field("digest").and_then(Value::as_str);
    let size = field("size").and_then(Value::as_u64);
    let (Some(media_type), Some(digest), Some(size)) = (media_type, digest, size) else {
        return Err(format!(
            "{at}: a descriptor needs mediaType, digest and size"
        ));
    };
    let digest = Sha256Digest::from_content_address(digest)
        .ok_or_else(|| format!("{at}: digest {digest:?} is not a sha256: digest"))?;
    let title = field("annotations")
        .and_then(|a| a.get(TITLE))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        title,
    })
}

/// The path a referenced blob gets as a file of the manifest's package: its title when that
/// is a valid path used once in the manifest, else `blobs/sha256/<hex>`.
pub fn file_paths(blobs: &[Descriptor]) -> Vec<String> {
    let mut titles: BTreeMap<&str, usize> = BTreeMap::new();
    for title in blobs.iter().filter_map(|b| b.title.as_deref()) {
        *titles.entry(title).or_default() += 1;
    }
    blobs
        .iter()
        .map(|b| match b.title.as_deref() {
            Some(t) if titles.get(t) == Some(&1) && validate::path(t).is_ok() => t.to_string(),
            _ => format!("blobs/sha256/{}", b.digest.hex()),
        })
        .collect()
}

/// What a push stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub digest: Sha256Digest,
    pub package: PackageId,
    pub subject: Option<Sha256Digest>,
}

/// A stored manifest that refers to another (`subject`), as the referrers API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referrer {
    pub digest: Sha256Digest,
    pub media_type: String,
    pub bytes: Bytes,
    pub artifact_type: Option<String>,
}

/// The image index the referrers API answers: one descriptor per referrer, with its
/// `artifactType` and its annotations.
pub fn referrers_index(referrers: &[Referrer]) -> Vec<u8> {
    let manifests: Vec<Value> = referrers
        .iter()
        .map(|r| {
            let mut descriptor = json!({
                "mediaType": r.media_type,
                "digest": r.digest.content_address(),
                "size": r.bytes.len(),
            });
            if let Some(kind) = &r.artifact_type {
                descriptor["artifactType"] = json!(kind);
            }
            let annotations = serde_json::from_slice::<Value>(&r.bytes)
                .ok()
                .and_then(|m| m.get("annotations").cloned());
            if let Some(annotations) = annotations.filter(Value::is_object) {
                descriptor["annotations"] = annotations;
            }
            descriptor
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": IMAGE_INDEX,
        "manifests": manifests,
    });
    serde_json::to_vec(&index).unwrap_or_default()
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
    fn pushed_manifests_are_read_and_refused_with_reasons() {
        let layer = Sha256Digest::of(b"layer");
        let manifest = json!({
            "schemaVersion": 2, "mediaType": IMAGE_MANIFEST,
            "config": {"mediaType": EMPTY_JSON, "digest": empty_json_digest().content_address(), "size": 2},
            "layers": [{"mediaType": "text/plain", "digest": layer.content_address(), "size": 5,
                        "annotations": {TITLE: "a/b.txt"}}],
            "subject": {"mediaType": IMAGE_MANIFEST, "digest": layer.content_address(), "size": 5},
            "artifactType": "application/x-test",
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let parsed = parse(IMAGE_MANIFEST, &bytes).unwrap();
        assert_eq!(parsed.blobs.len(), 1, "the empty config is no blob");
        assert_eq!(parsed.blobs[0].title.as_deref(), Some("a/b.txt"));
        assert_eq!(parsed.subject, Some(layer));
        assert_eq!(parsed.artifact_type.as_deref(), Some("application/x-test"));
        assert!(parse(IMAGE_INDEX, &bytes).unwrap_err().contains("differs"));
        assert!(parse("text/plain", &bytes).is_err());
        assert!(parse(IMAGE_MANIFEST, b"[]").is_err());
        let bad =
            json!({"schemaVersion": 2, "config": {"mediaType": "x", "digest": "md5:1", "size": 1}});
        let bad = serde_json::to_vec(&bad).unwrap();
        assert!(parse(DOCKER_MANIFEST, &bad).unwrap_err().contains("sha256"));
    }

    #[test]
    fn titles_become_paths_only_when_valid_and_unique() {
        let d = |n: u8, title: Option<&str>| Descriptor {
            media_type: "x/y".into(),
            digest: Sha256Digest::of(&[n]),
            size: 1,
            title: title.map(str::to_string),
        };
        let blobs = [
            d(1, Some("a.txt")),
            d(2, Some("../x")),
            d(3, Some("t")),
            d(4, Some("t")),
            d(5, None),
        ];
        let paths = file_paths(&blobs);
        assert_eq!(paths[0], "a.txt");
        for (i, path) in paths.iter().enumerate().skip(1) {
            assert_eq!(*path, format!("blobs/sha256/{}", blobs[i].digest.hex()));
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
