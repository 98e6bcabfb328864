//! Storage implementations of artifactstore's traits: SQLite metadata ([`SqliteStore`]) and a
//! content-addressed blob directory ([`FsBlobStore`]), the embedded default; PostgreSQL
//! metadata ([`PgStore`]) for replicas that share one database.

mod fs;
mod postgres;
mod rows;
mod sqlite;
mod tail;

pub use fs::FsBlobStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
