//! `open`: the one place where a URL picks a storage engine, and where pairings are judged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use artifactstore_core::storage::{BlobStore, MetadataStore, StoreError, Stores};

/// How to open the stores, beyond their URLs.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Recent events the metadata store keeps in memory for tailers (tests use a few).
    pub tail_events: usize,
    /// The grace period garbage collection will run with: on S3 it must be well over the
    /// multipart journal's refresh, or a collection may abort an upload still under way.
    pub gc_grace: Duration,
    /// Longest a query may run before it is stopped (`StoreError::OverBudget`): every
    /// PostgreSQL statement (`statement_timeout`), SQLite's listings (a progress handler).
    pub query_budget: Duration,
}

/// [`OpenOptions::query_budget`]'s default: far beyond any indexed read, short enough that
/// a scan an attacker shaped gives its connection back.
pub const DEFAULT_QUERY_BUDGET: Duration = Duration::from_secs(10);

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            tail_events: crate::tail::TAIL_EVENTS,
            gc_grace: Duration::from_secs(3600),
            query_budget: DEFAULT_QUERY_BUDGET,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("database url {0}: expected sqlite://PATH or postgres://USER@HOST:PORT/DB")]
    DatabaseUrl(String),
    #[error("blob url {0}: expected file://PATH or s3://BUCKET/PREFIX")]
    BlobUrl(String),
    #[error(
        "{what} needs the storage engine `{feature}`, which this build leaves out (cargo feature `{feature}`)"
    )]
    NotBuilt {
        what: &'static str,
        feature: &'static str,
    },
    #[error("cannot create {}: {source}", .path.display())]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the metadata lives, as its URL names it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Meta {
    /// `sqlite://PATH` (or `sqlite:PATH`): one process.
    Sqlite(String),
    /// `postgres://…` or `postgresql://…`: shared by replicas.
    Postgres(String),
}

/// Where the blobs live, as their URL names it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Blobs {
    /// `file://PATH`: a directory of one process.
    Dir(PathBuf),
    /// `s3://BUCKET/PREFIX`: shared by replicas.
    S3(String),
}

/// The engines two URLs name, checked but not opened (configuration checks URLs at start,
/// before anything is opened).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locations {
    meta: Meta,
    blobs: Blobs,
}

/// A URL's scheme alone, for errors: the rest may carry a password.
fn scheme(url: &str) -> String {
    match url.split_once(':') {
        Some((scheme, _)) => format!("{scheme:?}…"),
        None => "without a scheme".to_string(),
    }
}

impl Meta {
    fn parse(url: &str) -> Result<Self, OpenError> {
        let meta = if url.starts_with("sqlite:") {
            Self::Sqlite(url.to_string())
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::Postgres(url.to_string())
        } else {
            return Err(OpenError::DatabaseUrl(scheme(url)));
        };
        match meta {
            Self::Sqlite(_) if !cfg!(feature = "sqlite") => Err(not_built("sqlite://", "sqlite")),
            Self::Postgres(_) if !cfg!(feature = "postgres") => {
                Err(not_built("postgres://", "postgres"))
            }
            meta => Ok(meta),
        }
    }
}

impl Blobs {
    fn parse(url: &str) -> Result<Self, OpenError> {
        let blobs = match url.strip_prefix("file://") {
            Some(path) if !path.is_empty() => Self::Dir(PathBuf::from(path)),
            _ => match url.strip_prefix("s3://") {
                Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {
                    Self::S3(url.to_string())
                }
                _ => return Err(OpenError::BlobUrl(scheme(url))),
            },
        };
        match blobs {
            Self::Dir(_) if !cfg!(feature = "fs") => Err(not_built("file://", "fs")),
            Self::S3(_) if !cfg!(feature = "s3") => Err(not_built("s3://", "s3")),
            blobs => Ok(blobs),
        }
    }
}

fn not_built(what: &'static str, feature: &'static str) -> OpenError {
    OpenError::NotBuilt { what, feature }
}

impl Locations {
    /// Which engines `database_url` and `blob_url` name; an error for any other URL, or for
    /// an engine this build leaves out.
    pub fn parse(database_url: &str, blob_url: &str) -> Result<Self, OpenError> {
        Ok(Self {
            meta: Meta::parse(database_url)?,
            blobs: Blobs::parse(blob_url)?,
        })
    }

    /// Whether several replicas may run on these stores: PostgreSQL and S3, nothing local.
    pub fn replicas_allowed(&self) -> bool {
        matches!((&self.meta, &self.blobs), (Meta::Postgres(_), Blobs::S3(_)))
    }

    /// Opens both stores (creating an embedded database's directory, migrating a database).
    pub async fn open(&self, options: &OpenOptions) -> Result<Stores, OpenError> {
        self.warn_about_pairing(options);
        let meta = open_meta(&self.meta, options).await?;
        let blobs = match open_blob_store(&self.blobs, options).await {
            Ok(blobs) => blobs,
            Err(e) => {
                meta.close().await;
                return Err(e);
            }
        };
        Ok(Stores { meta, blobs })
    }

    /// The pairings that are allowed but guarantee less than they might seem to, said once
    /// at start (ARCHITECTURE.md, "Deployments").
    #[cfg_attr(not(feature = "s3"), allow(unused_variables))]
    fn warn_about_pairing(&self, options: &OpenOptions) {
        if let (Meta::Postgres(_), Blobs::Dir(dir)) = (&self.meta, &self.blobs) {
            tracing::warn!(
                blobs = %dir.display(),
                "PostgreSQL with a local blob directory: run ONE replica on it; a second \
                 replica would neither see these blobs nor be fenced from them (use s3:// \
                 for replicas)"
            );
        }
        #[cfg(feature = "s3")]
        if matches!(self.blobs, Blobs::S3(_))
            && options.gc_grace < 2 * crate::S3BlobStore::JOURNAL_REFRESH
        {
            tracing::warn!(
                grace_secs = options.gc_grace.as_secs(),
                "a garbage collection grace under {} s may abort S3 multipart uploads still \
                 under way",
                2 * crate::S3BlobStore::JOURNAL_REFRESH.as_secs()
            );
        }
    }
}

/// Opens the stores `database_url` and `blob_url` name: `sqlite://PATH` or
/// `postgres://…`, and `file://PATH` or `s3://BUCKET/PREFIX`. With [`open_metadata`] and
/// [`open_blobs`], the only place a URL picks an engine.
pub async fn open(
    database_url: &str,
    blob_url: &str,
    options: &OpenOptions,
) -> Result<Stores, OpenError> {
    Locations::parse(database_url, blob_url)?
        .open(options)
        .await
}

/// The metadata store alone (tests that open a second one on the same database).
pub async fn open_metadata(
    database_url: &str,
    options: &OpenOptions,
) -> Result<Arc<dyn MetadataStore>, OpenError> {
    open_meta(&Meta::parse(database_url)?, options).await
}

/// The blob store alone (tests that open a second one on the same blobs).
pub async fn open_blobs(
    blob_url: &str,
    options: &OpenOptions,
) -> Result<Arc<dyn BlobStore>, OpenError> {
    open_blob_store(&Blobs::parse(blob_url)?, options).await
}

async fn open_meta(
    meta: &Meta,
    options: &OpenOptions,
) -> Result<Arc<dyn MetadataStore>, OpenError> {
    match meta {
        #[cfg(feature = "sqlite")]
        Meta::Sqlite(url) => {
            let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
            let path = path.split('?').next().unwrap_or(path);
            if let Some(parent) = std::path::Path::new(path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|source| OpenError::Directory {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            Ok(Arc::new(crate::SqliteStore::open(url, options).await?))
        }
        #[cfg(feature = "postgres")]
        Meta::Postgres(url) => Ok(Arc::new(crate::PgStore::open(url, options).await?)),
        #[allow(unreachable_patterns)]
        _ => unreachable!("Locations::parse refuses engines left out of the build"),
    }
}

#[cfg_attr(not(feature = "s3"), allow(unused_variables))]
async fn open_blob_store(
    blobs: &Blobs,
    options: &OpenOptions,
) -> Result<Arc<dyn BlobStore>, OpenError> {
    match blobs {
        #[cfg(feature = "fs")]
        Blobs::Dir(dir) => Ok(Arc::new(crate::FsBlobStore::open(dir).await?)),
        #[cfg(feature = "s3")]
        Blobs::S3(url) => Ok(Arc::new(crate::S3BlobStore::open(url, options.gc_grace)?)),
        #[allow(unreachable_patterns)]
        _ => unreachable!("Locations::parse refuses engines left out of the build"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_engines_and_errors_never_quote_credentials() {
        let l = Locations::parse("postgres://u:secret@db/x", "s3://bucket/prefix").unwrap();
        assert!(l.replicas_allowed());
        let l = Locations::parse("sqlite:///var/lib/meta.db", "file:///var/lib/blobs").unwrap();
        assert!(!l.replicas_allowed());
        assert_eq!(l.blobs, Blobs::Dir("/var/lib/blobs".into()));
        let l = Locations::parse("postgresql://db/x", "file:///b").unwrap();
        assert!(!l.replicas_allowed(), "a local directory is one process's");
        let e = Locations::parse("mysql://u:secret@db/x", "file:///b").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("\"mysql\""), "{e}");
        for bad in ["s3://", "s3:///prefix", "file://", "/plain/path", "gs://b"] {
            let e = Locations::parse("sqlite://m.db", bad).unwrap_err();
            assert!(matches!(e, OpenError::BlobUrl(_)), "{bad}: {e}");
        }
    }
}
