//! Storage engines behind core's traits, and [`open`], the one place a URL picks one:
//! SQLite metadata ([`SqliteStore`]) and a content-addressed blob directory
//! ([`FsBlobStore`]), the embedded default; PostgreSQL metadata ([`PgStore`]) and
//! S3-compatible object storage ([`S3BlobStore`]) for replicas that share one database and
//! one bucket. Each engine is a cargo feature, all on by default.

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("artifactstore-storage needs a metadata engine: feature `sqlite` or `postgres`");
#[cfg(not(any(feature = "fs", feature = "s3")))]
compile_error!("artifactstore-storage needs a blob engine: feature `fs` or `s3`");

#[cfg(feature = "fs")]
mod fs;
mod open;
#[cfg(feature = "postgres")]
mod postgres;
mod reads;
mod rows;
#[cfg(feature = "s3")]
mod s3;
#[cfg(feature = "sqlite")]
mod sqlite;
mod tail;

pub use artifactstore_core::storage::Stores;
#[cfg(feature = "fs")]
pub use fs::FsBlobStore;
pub use open::{
    DEFAULT_QUERY_BUDGET, Locations, OpenError, OpenOptions, open, open_blobs, open_metadata,
};
#[cfg(feature = "postgres")]
pub use postgres::PgStore;
#[cfg(feature = "s3")]
pub use s3::S3BlobStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
