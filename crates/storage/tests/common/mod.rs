//! Shared set-up for the registry tests: a registry on a blob directory in a temporary folder
//! and SQLite there, or a database of its own on PostgreSQL when the environment names a
//! server (see `artifactstore_testkit::fresh_postgres`); and byte streams that behave like
//! request bodies.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use artifactstore_testkit::bytes;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use artifactstore_core::storage::ByteStream;
use artifactstore_core::storage::MetadataStore;
use artifactstore_core::{NewPackage, Package, Registry, RegistryConfig};
use artifactstore_storage::{FsBlobStore, PgStore, SqliteStore};
use bytes::Bytes;
use futures::StreamExt;

pub const TENANT: &str = "acme";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub registry: Arc<Registry>,
    pub meta: Arc<dyn MetadataStore>,
    /// The metadata store's URL: SQLite in `dir`, or this test's PostgreSQL database.
    pub database_url: String,
}

impl Env {
    pub async fn new() -> Self {
        Self::with_config(RegistryConfig::default()).await
    }

    /// On SQLite whatever the environment says: for tests of the SQLite engine itself.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("meta.db").display());
        Self::on(dir, url, RegistryConfig::default()).await
    }

    pub async fn with_config(config: RegistryConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = database_url(dir.path()).await;
        Self::on(dir, url, config).await
    }

    async fn on(dir: tempfile::TempDir, database_url: String, config: RegistryConfig) -> Self {
        let (registry, meta) = open(dir.path(), &database_url, config).await;
        Self {
            dir,
            registry,
            meta,
            database_url,
        }
    }

    /// A new open package of [`TENANT`].
    pub async fn package(&self) -> Package {
        self.registry
            .create_package(TENANT, new_package())
            .await
            .unwrap()
    }

    /// Closes the stores and opens them again on the same directory, as a restart would.
    pub async fn reopen(self) -> Self {
        let Env {
            dir,
            registry,
            meta,
            database_url,
        } = self;
        drop(registry);
        meta.close().await;
        drop(meta);
        let (registry, meta) = open(dir.path(), &database_url, RegistryConfig::default()).await;
        Self {
            dir,
            registry,
            meta,
            database_url,
        }
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }

    /// Every blob file in the store.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        files_under(&self.blobs_dir().join("blobs"))
    }

    /// Every file in the blob store's temporary area.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        files_under(&self.blobs_dir().join("tmp"))
    }
}

/// A new metadata store's URL: a database of its own on PostgreSQL, or SQLite in `dir`.
pub async fn database_url(dir: &Path) -> String {
    match artifactstore_testkit::fresh_postgres().await {
        Some(url) => url,
        None => format!("sqlite://{}", dir.join("meta.db").display()),
    }
}

/// The metadata store at `url`, keeping `tail` events in memory.
pub async fn open_meta(url: &str, tail: usize) -> Arc<dyn MetadataStore> {
    if url.starts_with("postgres") {
        Arc::new(PgStore::open_with_tail(url, tail).await.unwrap())
    } else {
        Arc::new(SqliteStore::open_with_tail(url, tail).await.unwrap())
    }
}

async fn open(
    dir: &Path,
    url: &str,
    config: RegistryConfig,
) -> (Arc<Registry>, Arc<dyn MetadataStore>) {
    let meta = open_meta(url, 4096).await;
    let blobs = Arc::new(FsBlobStore::open(dir.join("blobs")).await.unwrap());
    (Arc::new(Registry::new(meta.clone(), blobs, config)), meta)
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

pub fn new_package() -> NewPackage {
    NewPackage {
        producer: "ci/build-42".into(),
        subject: "app@1.2.3".into(),
        retention_class: "standard".into(),
        metadata: [("git.sha".to_string(), "abc123".to_string())]
            .into_iter()
            .collect(),
    }
}

/// `data` as a body arriving in chunks of `chunk` bytes.
pub fn body(data: &[u8], chunk: usize) -> ByteStream {
    let chunks: Vec<io::Result<Bytes>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

/// A body that delivers `data` and then fails, as a dropped connection does.
pub fn failing_body(data: &[u8]) -> ByteStream {
    let ok = futures::stream::iter(vec![Ok(Bytes::copy_from_slice(data))]);
    let err = futures::stream::iter(vec![Err(io::Error::new(
        io::ErrorKind::ConnectionReset,
        "reset",
    ))]);
    ok.chain(err).boxed()
}

/// A body that delivers `data` and then never ends.
pub fn stalled_body(data: &[u8]) -> ByteStream {
    let ok = futures::stream::iter(vec![Ok(Bytes::copy_from_slice(data))]);
    ok.chain(futures::stream::pending()).boxed()
}

pub async fn collect(stream: ByteStream) -> Vec<u8> {
    let parts: Vec<io::Result<Bytes>> = stream.collect().await;
    parts
        .into_iter()
        .flat_map(|p| p.unwrap().to_vec())
        .collect()
}
