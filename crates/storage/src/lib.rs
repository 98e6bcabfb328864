//! Storage implementations of artifactstore's traits: SQLite metadata ([`SqliteStore`]) and a
//! content-addressed blob directory ([`FsBlobStore`]), the embedded default; PostgreSQL
//! metadata ([`PgStore`]) and S3-compatible object storage ([`S3BlobStore`]) for replicas that
//! share one database and one bucket.

mod fs;
mod postgres;
mod reads;
mod rows;
mod s3;
mod sqlite;
mod tail;

pub use fs::FsBlobStore;
pub use postgres::PgStore;
pub use s3::S3BlobStore;
pub use sqlite::SqliteStore;
