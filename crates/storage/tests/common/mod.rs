//! Shared set-up for the registry tests: a registry on SQLite and a blob directory in a
//! temporary folder, and byte streams that behave like request bodies.

#![allow(dead_code)]

pub use artifactstore_testkit::bytes;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use artifactstore_core::storage::ByteStream;
use artifactstore_core::{NewPackage, Package, Registry, RegistryConfig};
use artifactstore_storage::{FsBlobStore, SqliteStore};
use bytes::Bytes;
use futures::StreamExt;

pub const TENANT: &str = "acme";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub registry: Arc<Registry>,
    pub meta: Arc<SqliteStore>,
}

impl Env {
    pub async fn new() -> Self {
        Self::with_config(RegistryConfig::default()).await
    }

    pub async fn with_config(config: RegistryConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (registry, meta) = open(dir.path(), config).await;
        Self {
            dir,
            registry,
            meta,
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
        } = self;
        drop(registry);
        meta.close().await;
        drop(meta);
        let (registry, meta) = open(dir.path(), RegistryConfig::default()).await;
        Self {
            dir,
            registry,
            meta,
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

async fn open(dir: &Path, config: RegistryConfig) -> (Arc<Registry>, Arc<SqliteStore>) {
    let meta = Arc::new(
        SqliteStore::open(dir.join("meta.db").to_str().unwrap())
            .await
            .unwrap(),
    );
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
