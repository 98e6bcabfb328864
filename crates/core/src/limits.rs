//! Every input limit of the store in one place. The README's "Limits" table mirrors this file.

/// A file path inside a package, in UTF-8 bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// `producer` and `subject`, in UTF-8 bytes (at least one).
pub const MAX_PRODUCER_BYTES: usize = 256;
pub const MAX_SUBJECT_BYTES: usize = 256;
/// `retention_class` and tenant names: `[a-z0-9][a-z0-9_-]{0,63}`.
pub const MAX_CLASS_BYTES: usize = 64;
/// A tag's repository (the OCI name syntax), in bytes.
pub const MAX_REPOSITORY_BYTES: usize = 200;
/// A tag (the OCI tag syntax), in bytes.
pub const MAX_TAG_BYTES: usize = 128;
/// Entries in a package's metadata map.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// A metadata key: `[A-Za-z0-9][A-Za-z0-9._:/-]*`, at most this many bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 128;
/// A metadata value, in UTF-8 bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;
/// All keys and values of one package's metadata together, in UTF-8 bytes.
pub const MAX_METADATA_TOTAL_BYTES: usize = 16 * 1024;
/// A media type such as `application/vnd.acme+json; charset=utf-8`.
pub const MAX_MEDIA_TYPE_BYTES: usize = 255;
/// Files one package may hold by default: a bound on its manifest (and on what finalize builds
/// in memory).
pub const DEFAULT_MAX_FILES_PER_PACKAGE: u64 = 100_000;
/// The largest manifest by default (its CBOR or its JSON, whichever is longer): finalize
/// refuses a package whose manifest would be larger (`422`), before storing anything.
pub const DEFAULT_MAX_MANIFEST_BYTES: usize = 64 * 1024 * 1024;
/// Largest manifest a push through `/v2/` may store, by default (what OCI clients must
/// support at least).
pub const DEFAULT_MAX_OCI_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// `metadata.KEY=VALUE` and `has_metadata=KEY` filters of one `GET /packages`, together: each
/// costs the listing a lookup per candidate package.
pub const MAX_LIST_FILTERS: usize = 16;
/// Listings (`GET /packages`, a package's files) one tenant may run at once.
pub const DEFAULT_MAX_READS_PER_TENANT: usize = 8;

/// Page sizes of package and file listings.
pub const DEFAULT_PAGE_LIMIT: u32 = 50;
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// Page sizes of the event stream.
pub const DEFAULT_EVENT_LIMIT: u32 = 100;
pub const MAX_EVENT_LIMIT: u32 = 1000;

/// Default largest file (single-shot body or whole upload session): 64 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Default lifetime of an upload session without activity.
pub const DEFAULT_UPLOAD_TTL_SECS: u64 = 24 * 60 * 60;

/// Bodies of at most this many bytes are gathered whole, hashed in memory and handed to the
/// blob store in one piece (`BlobStore::store_small`): for small files the trips between
/// threads, not the bytes, are the cost.
pub const SMALL_BLOB_BYTES: u64 = 128 * 1024;

/// How many times finalize builds a package's manifest again because a file landed while it
/// was being built; past that the request is answered `Unavailable` (`503` + `Retry-After`)
/// instead of spinning while a producer keeps adding files.
pub const FINALIZE_ATTEMPTS: usize = 32;

/// Clamps a requested page size to `1..=max`, using `default` when none was asked for.
pub fn clamp_limit(requested: Option<u32>, default: u32, max: u32) -> u32 {
    requested.unwrap_or(default).clamp(1, max)
}
