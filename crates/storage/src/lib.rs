//! Storage implementations of artifactstore's traits: SQLite metadata ([`SqliteStore`]) and a
//! content-addressed blob directory ([`FsBlobStore`]), the embedded default.

mod fs;
mod sqlite;

pub use fs::FsBlobStore;
pub use sqlite::SqliteStore;
