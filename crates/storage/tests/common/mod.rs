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

use artifactstore_core::gc::Collector;
use artifactstore_core::retention::Retention;
use artifactstore_core::storage::ByteStream;
use artifactstore_core::storage::{BlobStore, MetadataStore};
use artifactstore_core::{NewPackage, Package, Registry, RegistryConfig};
use artifactstore_storage::{OpenOptions, Stores};
use bytes::Bytes;
use futures::StreamExt;

pub const TENANT: &str = "acme";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub registry: Arc<Registry>,
    pub meta: Arc<dyn MetadataStore>,
    /// The stores under `registry`, for the services beside it.
    pub stores: Stores,
    pub config: RegistryConfig,
    /// The metadata store's URL: SQLite in `dir`, or this test's PostgreSQL database.
    pub database_url: String,
    /// This test's `s3://bucket/prefix`, or `None`: blobs in `dir`.
    pub blob_url: Option<String>,
}

impl Env {
    pub async fn new() -> Self {
        Self::with_config(RegistryConfig::default()).await
    }

    /// On SQLite and the blob directory whatever the environment says: for tests of those
    /// engines themselves.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("meta.db").display());
        Self::on(dir, url, None, RegistryConfig::default()).await
    }

    pub async fn with_config(config: RegistryConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = database_url(dir.path()).await;
        Self::on(dir, url, artifactstore_testkit::fresh_s3(), config).await
    }

    async fn on(
        dir: tempfile::TempDir,
        database_url: String,
        blob_url: Option<String>,
        config: RegistryConfig,
    ) -> Self {
        let stores = artifactstore_storage::open(
            &database_url,
            &self::blob_url(dir.path(), blob_url.as_deref()),
            &options(4096),
        )
        .await
        .unwrap();
        let registry = Arc::new(Registry::new(stores.clone(), config.clone()));
        Self {
            dir,
            registry,
            meta: stores.meta.clone(),
            stores,
            config,
            database_url,
            blob_url,
        }
    }

    /// A new open package of [`TENANT`].
    pub async fn package(&self) -> Package {
        self.registry
            .create_package(TENANT, new_package())
            .await
            .unwrap()
    }

    /// Closes the stores and opens them again on the same data, as a restart would.
    pub async fn reopen(self) -> Self {
        let Env {
            dir,
            registry,
            meta,
            stores,
            database_url,
            blob_url,
            ..
        } = self;
        drop((registry, stores));
        meta.close().await;
        drop(meta);
        Self::on(dir, database_url, blob_url, RegistryConfig::default()).await
    }

    /// Garbage collection on this test's stores.
    pub fn collector(&self) -> Collector {
        Collector::new(self.stores.clone())
    }

    /// Retention with this test's rules.
    pub fn retention(&self) -> Retention {
        Retention::new(self.stores.meta.clone(), self.config.retention.clone())
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }

    /// Every blob in the store, by name (files of the blob directory; pointers in S3).
    pub async fn blob_files(&self) -> Vec<String> {
        match &self.blob_url {
            None => names(files_under(&self.blobs_dir().join("blobs"))),
            Some(url) => objects(url, "blobs").await,
        }
    }

    /// Bytes kept that belong to no blob and no upload: temp files of the blob directory;
    /// in S3, data objects that no pointer names.
    pub async fn temp_files(&self) -> Vec<String> {
        match &self.blob_url {
            None => names(files_under(&self.blobs_dir().join("tmp"))),
            Some(url) => {
                let named: Vec<_> = json_objects(url, "blobs", |_| true)
                    .await
                    .iter()
                    .map(|pointer| pointer["key"].as_str().unwrap().to_string())
                    .collect();
                objects(url, "data")
                    .await
                    .into_iter()
                    .filter(|key| !named.contains(key))
                    .collect()
            }
        }
    }

    /// Every staged upload's bytes (files of the blob directory's `uploads/`; objects under
    /// `uploads/` in S3).
    pub async fn staged_files(&self) -> Vec<String> {
        match &self.blob_url {
            None => names(files_under(&self.blobs_dir().join("uploads"))),
            Some(url) => objects(url, "uploads").await,
        }
    }
}

impl Env {
    /// The multipart uploads the S3 store journals as under way, of blobs and of appends:
    /// (key, upload id) each.
    pub async fn multipart_journals(&self) -> Vec<(String, String)> {
        let url = self.blob_url.as_deref().expect("an S3 store");
        let mut journals = json_objects(url, "multipart", |_| true).await;
        let of_appends = |name: &str| name.starts_with("journal-");
        journals.extend(json_objects(url, "uploads", of_appends).await);
        journals
            .iter()
            .map(|journal| {
                let field = |name: &str| journal[name].as_str().unwrap().to_string();
                (field("key"), field("id"))
            })
            .collect()
    }

    /// Whether the S3 server still takes a (last, small) part into the multipart upload `id`
    /// at `key`: it does until the upload is completed or aborted.
    pub async fn multipart_upload_exists(&self, key: &str, id: &str) -> bool {
        use object_store::multipart::MultipartStore;
        let (s3, _) = s3(self.blob_url.as_deref().expect("an S3 store"));
        let part = object_store::PutPayload::from_static(b"one more part");
        s3.put_part(&key.into(), &id.to_string(), 9, part)
            .await
            .is_ok()
    }
}

fn names(paths: Vec<PathBuf>) -> Vec<String> {
    paths.into_iter().map(|p| p.display().to_string()).collect()
}

/// An object store client for `s3://bucket/prefix`, and the prefix.
pub fn s3(url: &str) -> (object_store::aws::AmazonS3, String) {
    let rest = url.strip_prefix("s3://").unwrap();
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .unwrap();
    (store, prefix.to_string())
}

/// The keys of every object under `url`'s prefix and then `under`.
async fn objects(url: &str, under: &str) -> Vec<String> {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let (store, prefix) = s3(url);
    let path = object_store::path::Path::from(format!("{prefix}/{under}"));
    store
        .list(Some(&path))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// The JSON of every object under `url`'s prefix and then `under` whose name `pick` takes.
async fn json_objects(
    url: &str,
    under: &str,
    pick: impl Fn(&str) -> bool,
) -> Vec<serde_json::Value> {
    use object_store::ObjectStoreExt;
    let (s3, _) = s3(url);
    let mut values = Vec::new();
    for key in objects(url, under).await {
        if !pick(key.rsplit('/').next().unwrap_or_default()) {
            continue;
        }
        let got = s3.get(&key.as_str().into()).await.unwrap();
        values.push(serde_json::from_slice(&got.bytes().await.unwrap()).unwrap());
    }
    values
}

/// A new metadata store's URL: a database of its own on PostgreSQL, or SQLite in `dir`.
pub async fn database_url(dir: &Path) -> String {
    match artifactstore_testkit::fresh_postgres().await {
        Some(url) => url,
        None => format!("sqlite://{}", dir.join("meta.db").display()),
    }
}

/// The options tests open stores with, keeping `tail` events in memory.
pub fn options(tail: usize) -> OpenOptions {
    OpenOptions {
        tail_events: tail,
        ..OpenOptions::default()
    }
}

/// The metadata store at `url`, keeping `tail` events in memory.
pub async fn open_meta(url: &str, tail: usize) -> Arc<dyn MetadataStore> {
    artifactstore_storage::open_metadata(url, &options(tail))
        .await
        .unwrap()
}

/// The blob URL of a test: `url` (S3), or the directory `blobs/` in `dir`.
pub fn blob_url(dir: &Path, url: Option<&str>) -> String {
    url.map_or_else(
        || format!("file://{}", dir.join("blobs").display()),
        str::to_string,
    )
}

/// The blob store at `url` (S3), or the directory `blobs/` in `dir`.
pub async fn open_blobs(dir: &Path, url: Option<&str>) -> Arc<dyn BlobStore> {
    artifactstore_storage::open_blobs(&blob_url(dir, url), &options(16))
        .await
        .unwrap()
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
