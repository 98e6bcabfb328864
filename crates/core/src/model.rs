//! The resources of the contract (packages, files, uploads, events) and the queries over them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::Sha256Digest;
use crate::ids::{FileId, PackageId, UploadId};
use crate::timestamp::Timestamp;

/// A content address, `sha256:<hex>` on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ContentAddress(pub Sha256Digest);

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Sha256Digest::PREFIX)?;
        f.write_str(self.0.hex_in(&mut [0u8; 64]))
    }
}

impl Serialize for ContentAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContentAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Sha256Digest::from_content_address(&s)
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom("not a sha256: content address"))
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageState {
    Open,
    Finalized,
}

impl PackageState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Finalized => "finalized",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(Self::Open),
            "finalized" => Some(Self::Finalized),
            _ => None,
        }
    }
}

/// A package resource, exactly as the contract's JSON shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub id: PackageId,
    pub tenant: String,
    pub producer: String,
    pub subject: String,
    pub retention_class: String,
    pub metadata: BTreeMap<String, String>,
    pub state: PackageState,
    pub created_at: Timestamp,
    pub finalized_at: Option<Timestamp>,
    pub file_count: u64,
    pub total_size: u64,
    pub manifest_digest: Option<ContentAddress>,
    /// A held package is deleted neither by request nor by retention.
    pub held: bool,
    /// When a retention rule will delete the package; `None` while held or with no such
    /// rule. Not stored: the registry derives it from its rules.
    pub expires_at: Option<Timestamp>,
}

/// What a producer sends to create a package.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPackage {
    pub producer: String,
    pub subject: String,
    pub retention_class: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    pub sha256: Sha256Digest,
}

/// A file resource. `digests` and `content_address` always name the same digest; build one
/// with [`FileRecord::new`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub id: FileId,
    pub package_id: PackageId,
    /// The owning tenant; not part of the wire resource, which is only ever shown to it.
    #[serde(skip)]
    pub tenant: String,
    pub path: String,
    pub size: u64,
    pub media_type: String,
    pub digests: Digests,
    pub content_address: ContentAddress,
    pub created_at: Timestamp,
    /// Where the bytes live, recorded when the file is added (never guessed from its size):
    /// with the record in the metadata store (a small single-shot file), or in the blob store.
    #[serde(skip)]
    pub inline: bool,
}

impl FileRecord {
    pub fn new(
        tenant: &str,
        package_id: PackageId,
        path: String,
        size: u64,
        media_type: String,
        sha256: Sha256Digest,
    ) -> Self {
        Self {
            id: FileId::generate(tenant),
            package_id,
            tenant: tenant.to_string(),
            path,
            size,
            media_type,
            digests: Digests { sha256 },
            content_address: ContentAddress(sha256),
            created_at: Timestamp::now(),
            inline: false,
        }
    }

    pub fn sha256(&self) -> Sha256Digest {
        self.digests.sha256
    }
}

/// What a producer says about a file besides its bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewFile {
    pub path: String,
    /// `None`: guessed from the path's extension.
    pub media_type: Option<String>,
    /// Expected lowercase hex SHA-256, checked against the bytes received.
    pub sha256: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    Open,
    Completed,
    Cancelled,
}

impl UploadState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(Self::Open),
            "completed" => Some(Self::Completed),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// An upload session as clients see it (the server adds `upload_url`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub id: UploadId,
    pub offset: u64,
    pub size: Option<u64>,
    pub state: UploadState,
    pub expires_at: Timestamp,
}

/// An upload session as stored: the resource plus what resuming needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRecord {
    pub upload: Upload,
    pub tenant: String,
    pub created_at: Timestamp,
    /// [`Sha256Hasher::save`](crate::Sha256Hasher::save) of the bytes up to `offset`.
    pub hash_state: Vec<u8>,
    /// The file the upload became, once completed.
    pub file_id: Option<FileId>,
    /// Where the blob store keeps the staged bytes up to `offset`.
    pub staging: Staging,
}

/// What a blob store needs to find an upload's staged bytes (for an object store, the list of
/// staged objects), opaque above it. The metadata store saves it with the offset and the hash
/// state in one compare-and-set, so the three always describe the same bytes. Empty for a
/// store that finds them by the upload's id alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Staging(pub String);

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "package.created")]
    PackageCreated,
    #[serde(rename = "file.added")]
    FileAdded,
    #[serde(rename = "package.finalized")]
    PackageFinalized,
    #[serde(rename = "package.deleted")]
    PackageDeleted,
    #[serde(rename = "package.held")]
    PackageHeld,
    #[serde(rename = "package.released")]
    PackageReleased,
    #[serde(rename = "tag.set")]
    TagSet,
    #[serde(rename = "tag.deleted")]
    TagDeleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PackageCreated => "package.created",
            Self::FileAdded => "file.added",
            Self::PackageFinalized => "package.finalized",
            Self::PackageDeleted => "package.deleted",
            Self::PackageHeld => "package.held",
            Self::PackageReleased => "package.released",
            Self::TagSet => "tag.set",
            Self::TagDeleted => "tag.deleted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "package.created" => Some(Self::PackageCreated),
            "file.added" => Some(Self::FileAdded),
            "package.finalized" => Some(Self::PackageFinalized),
            "package.deleted" => Some(Self::PackageDeleted),
            "package.held" => Some(Self::PackageHeld),
            "package.released" => Some(Self::PackageReleased),
            "tag.set" => Some(Self::TagSet),
            "tag.deleted" => Some(Self::TagDeleted),
            _ => None,
        }
    }
}

/// An event of the append-only log. `sequence` is assigned by the metadata store when the
/// change that caused it commits.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub sequence: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub occurred_at: Timestamp,
    pub tenant: String,
    pub package_id: PackageId,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}

/// An event before the store has given it a sequence number.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub kind: EventType,
    pub occurred_at: Timestamp,
    pub tenant: String,
    pub package_id: PackageId,
    pub data: serde_json::Value,
}

/// Builds the event of a change from the package as the change left it (or, for a deletion,
/// as it was last): the metadata store calls it inside the change's transaction.
pub type EventFor = Box<dyn FnOnce(&Package) -> NewEvent + Send>;

/// Why a package was deleted (`data.reason` of `package.deleted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    Request,
    Retention,
}

impl DeleteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Retention => "retention",
        }
    }
}

/// A tag: a stable, movable name (`repository:tag`) for one finalized package of a tenant.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub tenant: String,
    pub repository: String,
    pub tag: String,
    pub package_id: PackageId,
    /// The package's CBOR manifest digest.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub manifest_digest: ContentAddress,
    pub updated_at: Timestamp,
}

/// What [`MetadataStore::set_tag`](crate::storage::MetadataStore::set_tag) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagChange {
    /// The tag is new.
    Created(Tag),
    /// The tag named another package (`previous`) and now names this one.
    Moved { tag: Tag, previous: PackageId },
    /// The tag already named this package: nothing changed, no event.
    Unchanged(Tag),
}

impl TagChange {
    pub fn tag(&self) -> &Tag {
        match self {
            Self::Created(tag) | Self::Unchanged(tag) | Self::Moved { tag, .. } => tag,
        }
    }

    /// Its `tag.set` event; none when nothing changed.
    pub fn event(&self) -> Option<NewEvent> {
        match self {
            Self::Created(tag) => Some(tag.set_event(None)),
            Self::Moved { tag, previous } => Some(tag.set_event(Some(*previous))),
            Self::Unchanged(_) => None,
        }
    }
}

/// Why a tag was deleted (`data.reason` of `tag.deleted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagDeleteReason {
    Request,
    PackageDeleted,
}

impl Tag {
    /// `tag.set`: the tag resource plus `previous_package_id`.
    pub fn set_event(&self, previous: Option<PackageId>) -> NewEvent {
        let previous = previous.map(|p| p.to_string());
        self.event(EventType::TagSet, ("previous_package_id", previous.into()))
    }

    /// `tag.deleted`: the tag resource plus `reason`.
    pub fn deleted_event(&self, reason: TagDeleteReason) -> NewEvent {
        let reason = match reason {
            TagDeleteReason::Request => "request",
            TagDeleteReason::PackageDeleted => "package_deleted",
        };
        self.event(EventType::TagDeleted, ("reason", reason.into()))
    }

    fn event(&self, kind: EventType, (key, value): (&str, serde_json::Value)) -> NewEvent {
        let mut event = new_event(kind, &self.tenant, self.package_id, self);
        if let serde_json::Value::Object(data) = &mut event.data {
            data.insert(key.to_string(), value);
        }
        event
    }
}

/// A tenant's use of the store (`GET /usage`): bytes are the sizes of its files plus the
/// offsets of its open uploads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub packages: u64,
    pub open_uploads: u64,
}

/// What a retention rule of one class deletes, at one moment: finalized packages finalized
/// before `finalized_before`, finalized packages beyond the newest `keep_last` of their tenant
/// and subject, and open packages created before `open_created_before`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionQuery {
    pub class: String,
    pub finalized_before: Option<Timestamp>,
    pub keep_last: Option<u32>,
    pub open_created_before: Option<Timestamp>,
}

/// Filters of `GET /packages`, all ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackageQuery {
    pub producer: Option<String>,
    pub subject: Option<String>,
    pub retention_class: Option<String>,
    pub state: Option<PackageState>,
    /// `metadata.KEY=VALUE` pairs, exact match.
    pub metadata: Vec<(String, String)>,
    /// `has_metadata=KEY`.
    pub has_metadata: Vec<String>,
    /// Packages holding a file with this digest.
    pub contains: Option<Sha256Digest>,
    /// Exclusive bounds on `created_at`.
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
}

/// One page of a listing; `next_cursor` is `None` on the last page.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A manifest as stored at finalize time: the deterministic CBOR bytes, their JCS projection,
/// and the digest of the CBOR bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredManifest {
    pub digest: Sha256Digest,
    pub cbor: Vec<u8>,
    pub json: String,
}

/// Whose data a read may see: one tenant's (every token), or every tenant's (anonymous reads
/// on a server that names no anonymous tenant). Writes always belong to one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Tenant(String),
    All,
}

impl Scope {
    /// The one tenant, if the scope is narrowed to one.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Self::Tenant(t) => Some(t),
            Self::All => None,
        }
    }

    /// Whether a row of `tenant` is visible in this scope.
    pub fn admits(&self, tenant: &str) -> bool {
        match self {
            Self::Tenant(t) => t == tenant,
            Self::All => true,
        }
    }
}

impl From<&str> for Scope {
    fn from(tenant: &str) -> Self {
        Self::Tenant(tenant.to_string())
    }
}

impl From<&String> for Scope {
    fn from(tenant: &String) -> Self {
        Self::Tenant(tenant.clone())
    }
}

impl From<&Scope> for Scope {
    fn from(scope: &Scope) -> Self {
        scope.clone()
    }
}

/// An event of `kind` about `resource` (its JSON is the event's data), happening now.
pub(crate) fn new_event<T: serde::Serialize>(
    kind: EventType,
    tenant: &str,
    package_id: PackageId,
    resource: &T,
) -> NewEvent {
    NewEvent {
        kind,
        occurred_at: Timestamp::now(),
        tenant: tenant.to_string(),
        package_id,
        // Serializing our own resource types to JSON cannot fail (string keys only).
        data: serde_json::to_value(resource).unwrap_or(serde_json::Value::Null),
    }
}
