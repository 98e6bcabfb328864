//! The registry's error type: what went wrong, in domain terms. The server maps each variant
//! to a status code and problem document in one place.

use crate::digest::Sha256Digest;
use crate::storage::StoreError;

/// One invalid field, named as the client sent it (`path`, `producer`, `metadata`, …).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// The kind of resource a [`RegistryError::NotFound`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Package,
    File,
    Upload,
    Tag,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Package => "package",
            Self::File => "file",
            Self::Upload => "upload",
            Self::Tag => "tag",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// One or more fields break the rules; nothing was changed.
    #[error("invalid input: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// Absent, or belongs to another tenant (the two are never told apart).
    #[error("{} not found", .0.as_str())]
    NotFound(Resource),
    #[error("the package is finalized and accepts no more files")]
    PackageFinalized,
    #[error("the package is held; release its hold first")]
    PackageHeld,
    #[error("the package is not finalized yet, so it has no manifest")]
    NotFinalized,
    #[error("the package already has a file at path {0:?}")]
    PathTaken(String),
    /// A pushed manifest references blobs or manifests the tenant does not have; nothing
    /// was stored.
    #[error("the manifest references what this repository does not have: {}", .0.iter().map(|d| d.content_address()).collect::<Vec<_>>().join(", "))]
    ManifestBlobUnknown(Vec<Sha256Digest>),
    #[error("the upload is already completed")]
    UploadCompleted,
    /// The package holds the most files a package may; nothing was added.
    #[error("the package already holds {limit} files, the most a package may")]
    TooManyFiles { limit: u64 },
    /// The package's manifest would be larger than a manifest may be; nothing changed.
    #[error("the manifest would be {size} bytes, more than the {limit} a manifest may be")]
    ManifestTooLarge { size: usize, limit: usize },
    #[error("the upload has {offset} of its declared {size} bytes")]
    UploadIncomplete { offset: u64, size: u64 },
    /// A chunk that does not start at the upload's offset; nothing was written.
    #[error("the chunk starts at byte {start} but the upload is at offset {offset}")]
    OffsetMismatch { offset: u64, start: u64 },
    /// A chunk that would go past the upload's declared size; nothing was written.
    #[error("the chunk would end past the upload's declared size of {size} bytes")]
    BeyondDeclaredSize { size: u64, offset: u64 },
    /// The body was not as long as the request said; nothing was written.
    #[error("the body is not {declared} bytes long as declared")]
    LengthMismatch { declared: u64 },
    /// The declared total of a chunk disagrees with the upload's size.
    #[error("the declared total {declared} disagrees with the upload's size {size}")]
    SizeMismatch { declared: u64, size: u64 },
    /// The bytes received do not hash to what the client expected; nothing was stored.
    #[error("sha256 of the bytes received is {actual}, not the expected {expected}")]
    DigestMismatch {
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// A write would pass one of the tenant's quotas; nothing was stored.
    #[error("quota {quota} exceeded: {used} of {limit} used")]
    QuotaExceeded {
        quota: &'static str,
        limit: u64,
        used: u64,
    },
    /// Another request changed the same upload at the same moment.
    #[error("the upload was changed by a concurrent request; fetch its offset and retry")]
    ConcurrentUpdate,
    /// Too many long-polls wait already, in all or in this scope; nothing waits.
    #[error("too many long-polls are waiting{}; retry shortly, or poll with wait=0", if *.scope { " for this tenant" } else { "" })]
    TooManyWaiting { scope: bool },
    /// The tenant runs as many package listings as it may at once; this one did not start.
    #[error("too many listings of this tenant are running; retry shortly")]
    TooManyReads,
    /// The request body failed before its end (client went away, bad framing).
    #[error("reading the request body failed: {0}")]
    Body(std::io::Error),
    #[error(transparent)]
    Storage(StoreError),
}

impl RegistryError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Body(e) => Self::Body(e),
            StoreError::DigestMismatch { expected, actual } => {
                Self::DigestMismatch { expected, actual }
            }
            StoreError::TooLarge { limit } => Self::TooLarge { limit },
            StoreError::PackageFinalized => Self::PackageFinalized,
            StoreError::NotFinalized => Self::NotFinalized,
            StoreError::Held => Self::PackageHeld,
            StoreError::PathTaken(path) => Self::PathTaken(path),
            StoreError::QuotaExceeded { limit, used } => Self::QuotaExceeded {
                quota: "max_bytes",
                limit,
                used,
            },
            StoreError::TooManyOpenUploads { limit, used } => Self::QuotaExceeded {
                quota: "max_open_uploads",
                limit,
                used,
            },
            other => Self::Storage(other),
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
