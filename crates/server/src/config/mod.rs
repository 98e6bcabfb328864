//! Server configuration: flags override environment (`ARTIFACTSTORE_*`), which overrides the
//! TOML file named by `--config` / `ARTIFACTSTORE_CONFIG`. Every setting is declared once
//! (`settings!` below: its key, variable, default and help); `declare.rs` turns that into the
//! flags, the file and the table the README is checked against.

#[macro_use]
mod declare;
mod access;
mod lifecycle;

pub use access::FileToken;
pub use lifecycle::{FileQuota, FileRetention};

pub use declare::Declared;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use artifactstore_core::INLINE_FILE_BYTES;
use artifactstore_core::limits::{DEFAULT_MAX_FILE_BYTES, DEFAULT_UPLOAD_TTL_SECS};
use artifactstore_core::quota::Quotas;
use artifactstore_core::retention::RetentionRules;
use serde::Deserialize;

use crate::auth::Auth;
use crate::edge::EdgeLimits;
use crate::throttle::{Throttle, TrustedProxies};

/// Largest JSON request body, by default.
pub const DEFAULT_MAX_JSON_BYTES: usize = 1024 * 1024;

settings! {
    listen: String, String, "ARTIFACTSTORE_LISTEN", "127.0.0.1:8080",
        "Address to listen on.";
    data_dir: PathBuf, PathBuf, "ARTIFACTSTORE_DATA_DIR", "./artifactstore-data",
        "Directory of the embedded stores (SQLite database and blob directory).";
    database_url: String, String, "ARTIFACTSTORE_DATABASE_URL", "sqlite://DATA_DIR/meta.db",
        "Metadata store: sqlite://PATH, or postgres://USER:PASSWORD@HOST:PORT/DB for replicas \
         sharing one database.", [hide_env_values = true];
    blob_url: String, String, "ARTIFACTSTORE_BLOB_URL", "file://DATA_DIR/blobs",
        "Blob store: file://PATH, or s3://BUCKET/PREFIX shared by replicas (endpoint, region \
         and keys from AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
         AWS_ALLOW_HTTP).";
    tokens: String, Vec<FileToken>, "ARTIFACTSTORE_TOKENS", "none",
        "Bearer tokens: comma-separated tenant:token or tenant:token:ro (in the file: \
         [[tokens]] tables).", [hide_env_values = true];
    anon_read: bool, bool, "ARTIFACTSTORE_ANON_READ", "false",
        "Allow reads without a token (development only).";
    anon_tenant: String, String, "ARTIFACTSTORE_ANON_TENANT", "every tenant",
        "The one tenant anonymous reads see.";
    max_file_bytes: u64, u64, "ARTIFACTSTORE_MAX_FILE_BYTES", "64 GiB",
        "Largest file, single-shot or through an upload session, in bytes.";
    max_json_bytes: usize, usize, "ARTIFACTSTORE_MAX_JSON_BYTES", "1 MiB",
        "Largest JSON request body in bytes.";
    upload_ttl_secs: u64, u64, "ARTIFACTSTORE_UPLOAD_TTL_SECS", "86400",
        "Seconds an upload session lives after its last change.";
    retention_classes: String, Vec<String>, "ARTIFACTSTORE_RETENTION_CLASSES", "any",
        "Accepted retention classes, comma-separated (in the file: a list).";
    retention: String, BTreeMap<String, FileRetention>, "ARTIFACTSTORE_RETENTION",
        "none (keep forever)",
        "Retention rules per class, `;`-separated: \
         CLASS:max_age=14d,keep_last=5,open_max_age=2d (durations in s, m, h, d or w; in the \
         file: [retention.CLASS] tables). A class with no rule keeps its packages forever.";
    retention_interval_secs: u64, u64, "ARTIFACTSTORE_RETENTION_INTERVAL_SECS", "60",
        "Seconds between two retention sweeps (one replica sweeps at a time).";
    quotas: String, BTreeMap<String, FileQuota>, "ARTIFACTSTORE_QUOTAS", "none",
        "Quotas per tenant, `;`-separated: TENANT:max_bytes=100GiB,max_open_uploads=50 (bytes \
         as a number or with KiB, MiB, GiB, TiB, KB, MB, GB, TB; in the file: \
         [quotas.TENANT] tables).";
    gc_interval_secs: u64, u64, "ARTIFACTSTORE_GC_INTERVAL_SECS", "600",
        "Seconds between two garbage collections (one replica collects at a time).";
    gc_grace_secs: u64, u64, "ARTIFACTSTORE_GC_GRACE_SECS", "3600",
        "Seconds unused bytes are kept after their last write or claim before garbage \
         collection may delete them; must exceed the longest write.";
    tls_cert: PathBuf, PathBuf, "ARTIFACTSTORE_TLS_CERT", "none",
        "PEM certificate chain: serve HTTPS instead of HTTP (needs --tls-key).",
        [requires = "tls_key"];
    tls_key: PathBuf, PathBuf, "ARTIFACTSTORE_TLS_KEY", "none",
        "PEM private key of --tls-cert.", [requires = "tls_cert"];
    header_timeout_secs: u64, u64, "ARTIFACTSTORE_HEADER_TIMEOUT_SECS", "10",
        "Seconds a request head (and TLS handshake) may take from its first byte.";
    idle_timeout_secs: u64, u64, "ARTIFACTSTORE_IDLE_TIMEOUT_SECS", "75",
        "Seconds a connection may stay open with no request in flight.";
    body_timeout_secs: u64, u64, "ARTIFACTSTORE_BODY_TIMEOUT_SECS", "60",
        "Seconds a request body may send nothing, or a response write nothing, before the \
         connection is cut; also the window --min-body-rate is measured over.";
    min_body_rate: u64, u64, "ARTIFACTSTORE_MIN_BODY_RATE", "500",
        "Bytes per second a request or response body must move, on average over each window \
         of --body-timeout-secs, or it is cut (0: only a body that moves nothing for a window \
         is).";
    max_connections: usize, usize, "ARTIFACTSTORE_MAX_CONNECTIONS", "8192",
        "Open connections at most; at the cap the one idle longest is closed.";
    h2_max_streams: u32, u32, "ARTIFACTSTORE_H2_MAX_STREAMS", "128",
        "Concurrent streams per HTTP/2 connection.";
    shutdown_grace_secs: u64, u64, "ARTIFACTSTORE_SHUTDOWN_GRACE_SECS", "30",
        "Seconds shutdown waits for in-flight requests.";
    max_wait_secs: u64, u64, "ARTIFACTSTORE_MAX_WAIT_SECS", "60",
        "Longest long-poll wait a request may ask for, in seconds, 1 to 60.";
    max_pollers: usize, usize, "ARTIFACTSTORE_MAX_POLLERS", "4096",
        "Long-polls waiting at once, in all.";
    max_pollers_per_tenant: usize, usize, "ARTIFACTSTORE_MAX_POLLERS_PER_TENANT", "1024",
        "Long-polls waiting at once, per tenant.";
    requests_per_sec_per_address: u32, u32, "ARTIFACTSTORE_REQUESTS_PER_SEC_PER_ADDRESS", "0",
        "Requests per second each client address may make (twice that in a burst); beyond, \
         429 with Retry-After. 0: off.";
    requests_per_sec_per_tenant: u32, u32, "ARTIFACTSTORE_REQUESTS_PER_SEC_PER_TENANT", "0",
        "Requests per second each tenant's tokens may make together (twice that in a burst); \
         beyond, 429 with Retry-After. 0: off.";
    max_connections_per_address: usize, usize, "ARTIFACTSTORE_MAX_CONNECTIONS_PER_ADDRESS", "0",
        "Open connections each client address may hold; beyond, a new one is answered 429 \
         and closed. 0: off.";
    trusted_proxies: String, Vec<String>, "ARTIFACTSTORE_TRUSTED_PROXIES", "none",
        "Load balancers (addresses or networks, comma-separated: 10.0.0.0/8,::1) whose \
         X-Forwarded-For names the real client, which the limits per address then count; \
         their own connections are not counted.";
    max_listings_per_tenant: usize, usize, "ARTIFACTSTORE_MAX_LISTINGS_PER_TENANT", "8",
        "Package listings (GET /packages, whose filters set their cost) one tenant may run at \
         once; beyond them 429 with Retry-After.";
    max_files_per_package: u64, u64, "ARTIFACTSTORE_MAX_FILES_PER_PACKAGE", "100000",
        "Files one package may hold (409 beyond): a bound on its manifest.";
    max_manifest_bytes: usize, usize, "ARTIFACTSTORE_MAX_MANIFEST_BYTES", "67108864",
        "Largest manifest finalize stores, CBOR or JSON (422 beyond, nothing changed).";
    max_oci_manifest_bytes: usize, usize, "ARTIFACTSTORE_MAX_OCI_MANIFEST_BYTES", "4194304",
        "Largest manifest a push through /v2/ may store (413 beyond, nothing stored).";
    query_timeout_secs: u64, u64, "ARTIFACTSTORE_QUERY_TIMEOUT_SECS", "10",
        "Seconds a database query may run before it is stopped and answered 503 with \
         Retry-After: every PostgreSQL statement (statement_timeout; migrations excepted), \
         SQLite's package listings. Long-polls and downloads are not queries.";
    inline_max_bytes: u64, u64, "ARTIFACTSTORE_INLINE_MAX_BYTES", "65536",
        "Single-shot files of at most this many bytes keep their bytes in the metadata store, \
         durable with their record in one commit; 0 to 65536.";
    pin_threads: bool, bool, "ARTIFACTSTORE_PIN_THREADS", "true",
        "Pin each connection thread to its own CPU when there is one thread per allowed CPU; \
         turn off on a host whose cores other busy processes share.";
}

/// Never prints the tokens: the only place they could leak from into a log.
impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeArgs")
            .field("config", &self.config)
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("tokens", &self.tokens.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// `url` with the password of its user part, if any, replaced by `***` (for logs).
pub fn redact_url(url: &str) -> String {
    let url = redact_user_password(url);
    // libpq's `?password=` (and `sslpassword=`) carry secrets too.
    match url.split_once('?') {
        Some((base, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{base}?{}", pairs.join("&"))
        }
        None => url,
    }
}

/// `url` with the password of its user part, if any, replaced by `***`.
fn redact_user_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority = rest.split('/').next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or("");
            let path = &rest[authority.len()..];
            format!("{scheme}://{name}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

/// Everything the server runs with, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: String,
    /// `file://PATH` or `s3://BUCKET/PREFIX` (checked by `artifactstore_storage::Locations`).
    pub blob_url: String,
    pub auth: Auth,
    pub max_file_bytes: u64,
    pub max_json_bytes: usize,
    pub upload_ttl: Duration,
    pub retention_classes: Option<BTreeSet<String>>,
    pub retention: RetentionRules,
    pub retention_interval: Duration,
    pub quotas: Quotas,
    pub gc_interval: Duration,
    pub gc_grace: Duration,
    /// Certificate chain and key files, when serving HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub edge: EdgeLimits,
    /// Long-poll waits are clamped to this.
    pub max_wait: Duration,
    pub max_pollers: usize,
    pub max_pollers_per_tenant: usize,
    pub max_listings_per_tenant: usize,
    pub max_files_per_package: u64,
    pub max_manifest_bytes: usize,
    pub max_oci_manifest_bytes: usize,
    pub query_timeout: Duration,
    pub inline_max_bytes: u64,
    /// Connection threads pinned one per CPU ([`crate::edge::Workers::start`]).
    pub pin_threads: bool,
}

/// Default caps on waiting long-polls.
pub const DEFAULT_MAX_POLLERS: usize = 4096;
pub const DEFAULT_MAX_POLLERS_PER_TENANT: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn err(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

impl ServeArgs {
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let defaults = EdgeLimits::default();
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str(&text).map_err(|e| file_error(path, &text, &e))?
            }
            None => FileConfig::default(),
        };
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| err(format!("listen address {listen:?} is not host:port")))?;
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| "artifactstore-data".into());
        let database_url = self
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("meta.db").display()));
        let blob_url = self
            .blob_url
            .or(file.blob_url)
            .unwrap_or_else(|| format!("file://{}", data_dir.join("blobs").display()));
        // Checked now, opened later: a wrong URL stops the start before anything is bound.
        artifactstore_storage::Locations::parse(&database_url, &blob_url)
            .map_err(|e| err(e.to_string()))?;

        let trusted = match (self.trusted_proxies.as_deref(), file.trusted_proxies) {
            (Some(list), _) => list.split(',').map(str::to_string).collect(),
            (None, Some(list)) => list,
            (None, None) => Vec::new(),
        };
        let trusted = trusted
            .iter()
            .map(|net| net.trim())
            .filter(|net| !net.is_empty())
            .map(|net| {
                net.parse()
                    .map_err(|e| err(format!("trusted_proxies: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let throttle = std::sync::Arc::new(Throttle::new(
            self.requests_per_sec_per_address
                .or(file.requests_per_sec_per_address)
                .unwrap_or(0),
            self.requests_per_sec_per_tenant
                .or(file.requests_per_sec_per_tenant)
                .unwrap_or(0),
            self.max_connections_per_address
                .or(file.max_connections_per_address)
                .unwrap_or(0),
            TrustedProxies(trusted),
        ));
        let auth = access::resolve(
            self.tokens.as_deref(),
            file.tokens.as_deref().unwrap_or_default(),
            self.anon_read.or(file.anon_read).unwrap_or(false),
            self.anon_tenant.or(file.anon_tenant),
        )?
        .with_throttle(throttle.clone());
        let (retention_classes, retention, quotas) = lifecycle::resolve(
            self.retention_classes,
            file.retention_classes,
            self.retention.as_deref(),
            file.retention.unwrap_or_default(),
            self.quotas.as_deref(),
            file.quotas.unwrap_or_default(),
        )?;
        Ok(Settings {
            listen,
            database_url,
            blob_url,
            auth,
            max_file_bytes: self
                .max_file_bytes
                .or(file.max_file_bytes)
                .unwrap_or(DEFAULT_MAX_FILE_BYTES),
            max_json_bytes: self
                .max_json_bytes
                .or(file.max_json_bytes)
                .unwrap_or(DEFAULT_MAX_JSON_BYTES),
            upload_ttl: Duration::from_secs(
                self.upload_ttl_secs
                    .or(file.upload_ttl_secs)
                    .unwrap_or(DEFAULT_UPLOAD_TTL_SECS),
            ),
            retention_classes,
            retention,
            quotas,
            retention_interval: secs(
                self.retention_interval_secs
                    .or(file.retention_interval_secs),
                Duration::from_secs(60),
            )?,
            gc_interval: secs(
                self.gc_interval_secs.or(file.gc_interval_secs),
                Duration::from_secs(600),
            )?,
            gc_grace: secs(
                self.gc_grace_secs.or(file.gc_grace_secs),
                Duration::from_secs(3600),
            )?,
            tls: match (
                self.tls_cert.or(file.tls_cert),
                self.tls_key.or(file.tls_key),
            ) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err(err("TLS needs both tls_cert and tls_key")),
            },
            edge: EdgeLimits {
                header_timeout: secs(
                    self.header_timeout_secs.or(file.header_timeout_secs),
                    defaults.header_timeout,
                )?,
                idle_timeout: secs(
                    self.idle_timeout_secs.or(file.idle_timeout_secs),
                    defaults.idle_timeout,
                )?,
                body_timeout: secs(
                    self.body_timeout_secs.or(file.body_timeout_secs),
                    defaults.body_timeout,
                )?,
                min_body_rate: self
                    .min_body_rate
                    .or(file.min_body_rate)
                    .unwrap_or(defaults.min_body_rate),
                max_connections: positive(
                    "max_connections",
                    self.max_connections.or(file.max_connections),
                    defaults.max_connections,
                )?,
                h2_max_streams: positive(
                    "h2_max_streams",
                    self.h2_max_streams.or(file.h2_max_streams),
                    defaults.h2_max_streams,
                )?,
                throttle,
                shutdown_grace: Duration::from_secs(
                    self.shutdown_grace_secs
                        .or(file.shutdown_grace_secs)
                        .unwrap_or(defaults.shutdown_grace.as_secs()),
                ),
            },
            max_wait: match self.max_wait_secs.or(file.max_wait_secs) {
                Some(n @ 1..=60) => Duration::from_secs(n),
                Some(_) => return Err(err("max_wait_secs is 1 to 60")),
                None => Duration::from_secs(60),
            },
            max_pollers: positive(
                "max_pollers",
                self.max_pollers.or(file.max_pollers),
                DEFAULT_MAX_POLLERS,
            )?,
            max_pollers_per_tenant: positive(
                "max_pollers_per_tenant",
                self.max_pollers_per_tenant.or(file.max_pollers_per_tenant),
                DEFAULT_MAX_POLLERS_PER_TENANT,
            )?,
            max_listings_per_tenant: positive(
                "max_listings_per_tenant",
                self.max_listings_per_tenant
                    .or(file.max_listings_per_tenant),
                artifactstore_core::limits::DEFAULT_MAX_READS_PER_TENANT,
            )?,
            max_files_per_package: positive(
                "max_files_per_package",
                self.max_files_per_package.or(file.max_files_per_package),
                artifactstore_core::limits::DEFAULT_MAX_FILES_PER_PACKAGE,
            )?,
            max_manifest_bytes: positive(
                "max_manifest_bytes",
                self.max_manifest_bytes.or(file.max_manifest_bytes),
                artifactstore_core::limits::DEFAULT_MAX_MANIFEST_BYTES,
            )?,
            max_oci_manifest_bytes: positive(
                "max_oci_manifest_bytes",
                self.max_oci_manifest_bytes.or(file.max_oci_manifest_bytes),
                artifactstore_core::limits::DEFAULT_MAX_OCI_MANIFEST_BYTES,
            )?,
            query_timeout: secs(
                self.query_timeout_secs.or(file.query_timeout_secs),
                artifactstore_storage::DEFAULT_QUERY_BUDGET,
            )?,
            inline_max_bytes: match self.inline_max_bytes.or(file.inline_max_bytes) {
                Some(n) if n > INLINE_FILE_BYTES => {
                    return Err(err(format!("inline_max_bytes is 0 to {INLINE_FILE_BYTES}")));
                }
                Some(n) => n,
                None => INLINE_FILE_BYTES,
            },
            pin_threads: self.pin_threads.or(file.pin_threads).unwrap_or(true),
        })
    }
}

/// A timeout in whole seconds; 0 would cut every client at once.
/// A configuration file's parse error by line and column, without the line itself: the file
/// holds tokens, and an error message ends up in logs.
fn file_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!(", line {line}, column {column}")
    });
    err(format!(
        "{}{}: {}",
        path.display(),
        at.unwrap_or_default(),
        e.message()
    ))
}

fn secs(value: Option<u64>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        Some(0) => Err(err("timeouts are at least 1 second")),
        Some(n) => Ok(Duration::from_secs(n)),
        None => Ok(default),
    }
}

fn positive<T: Copy + PartialEq + Default>(
    name: &str,
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    match value {
        Some(v) if v == T::default() => Err(err(format!("{name} must be at least 1"))),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use artifactstore_core::Scope;

    fn args(tokens: Option<&str>) -> ServeArgs {
        ServeArgs {
            tokens: tokens.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn a_broken_file_is_named_by_line_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[tokens]]\ntenant = \"acme\"\ntoken = \"s3cr3t-token-value\" read_only = true\n",
        )
        .unwrap();
        let mut a = args(None);
        a.config = Some(path);
        let message = a.resolve().unwrap_err().to_string();
        assert!(!message.contains("s3cr3t"), "{message}");
        assert!(message.contains("line 3"), "{message}");
    }

    #[test]
    fn retention_rules_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "retention_classes = [\"ci\", \"release\"]\n[[tokens]]\ntenant = \"a\"\ntoken = \"t\"\n\
             [retention.ci]\nmax_age = \"14d\"\nkeep_last = 5\nopen_max_age = \"1d\"\n",
        )
        .unwrap();
        let mut a = args(None);
        a.config = Some(path.clone());
        let s = a.clone().resolve().unwrap();
        let ci = &s.retention["ci"];
        assert_eq!(ci.max_age, Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(
            (ci.keep_last, ci.open_max_age),
            (Some(5), Some(Duration::from_secs(86_400)))
        );
        assert!(!s.retention.contains_key("release"));
        // The environment replaces the file's rules.
        a.retention = Some("release:keep_last=3".into());
        let s = a.clone().resolve().unwrap();
        assert_eq!(s.retention.keys().collect::<Vec<_>>(), ["release"]);
        for bad in [
            "ci:max_age=14y",
            "ci:keep_last=x",
            "ci:forever=1",
            "other:keep_last=1",
            "ci:max_age",
        ] {
            a.retention = Some(bad.into());
            assert!(a.clone().resolve().is_err(), "{bad}");
        }
    }

    #[test]
    fn quotas_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[tokens]]\ntenant = \"a\"\ntoken = \"t\"\n[quotas.a]\nmax_bytes = \"2GiB\"\n\
             max_open_uploads = 7\n[quotas.b]\nmax_bytes = 1000\n",
        )
        .unwrap();
        let mut a = args(None);
        a.config = Some(path);
        let s = a.clone().resolve().unwrap();
        assert_eq!(s.quotas["a"].max_bytes, Some(2 << 30));
        assert_eq!(s.quotas["a"].max_open_uploads, Some(7));
        assert_eq!(s.quotas["b"].max_bytes, Some(1000));
        a.quotas = Some("a:max_bytes=10KB;c:max_open_uploads=1".into());
        let s = a.clone().resolve().unwrap();
        assert_eq!(s.quotas["a"].max_bytes, Some(10_000));
        assert_eq!(s.quotas["c"].max_open_uploads, Some(1));
        for bad in [
            "a:max_bytes=10XB",
            "a:max_files=1",
            "A:max_bytes=1",
            "a:max_open_uploads=-1",
        ] {
            a.quotas = Some(bad.into());
            assert!(a.clone().resolve().is_err(), "{bad}");
        }
    }

    #[test]
    fn logged_database_urls_hide_passwords() {
        assert_eq!(
            redact_url("postgres://as:s3cr:et@db.internal:5432/store?sslmode=require"),
            "postgres://as:***@db.internal:5432/store?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://as@db/store"),
            "postgres://as@db/store"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/a@b:c/meta.db"),
            "sqlite:///var/lib/a@b:c/meta.db"
        );
        assert_eq!(
            redact_url("postgres://db/store?user=as&password=s3cret&sslmode=require"),
            "postgres://db/store?user=as&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://as:pw@db/store?sslpassword=k3y"),
            "postgres://as:***@db/store?sslpassword=***"
        );
    }

    #[test]
    fn refuses_to_start_without_tokens() {
        let e = args(None).resolve().unwrap_err();
        assert!(e.0.contains("ARTIFACTSTORE_TOKENS"), "{e}");
    }

    #[test]
    fn parses_env_tokens() {
        let s = args(Some("acme:tok1,acme:tok2:ro, beta:tok3"))
            .resolve()
            .unwrap();
        assert_eq!(s.auth.len(), 3);
        assert!(args(Some("acme")).resolve().is_err());
        assert!(args(Some("ACME:x")).resolve().is_err());
        assert!(args(Some("acme:x:rw")).resolve().is_err());
    }

    #[test]
    fn flags_over_env_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nmax_file_bytes = 10\nupload_ttl_secs = 5\n\
             [[tokens]]\ntenant = \"acme\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n",
        )
        .unwrap();
        let s = ServeArgs {
            config: Some(path.clone()),
            max_file_bytes: Some(20),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.max_file_bytes, 20);
        assert_eq!(s.upload_ttl, Duration::from_secs(5));
        assert!(s.auth.len() == 1);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        assert!(
            ServeArgs {
                config: Some(path),
                ..args(Some("a:b"))
            }
            .resolve()
            .is_err()
        );
    }

    #[test]
    fn anon_read_alone_reads_every_tenant() {
        let anon = |tokens, tenant: Option<&str>| ServeArgs {
            anon_read: Some(true),
            anon_tenant: tenant.map(str::to_string),
            ..args(tokens)
        };
        let two = anon(Some("acme:t,beta:u"), None).resolve().unwrap();
        assert_eq!(two.auth.anonymous(), Some(&Scope::All));
        let narrowed = anon(Some("acme:t,beta:u"), Some("beta")).resolve().unwrap();
        assert_eq!(
            narrowed.auth.anonymous(),
            Some(&Scope::Tenant("beta".into()))
        );
        assert_eq!(
            anon(None, None).resolve().unwrap().auth.anonymous(),
            Some(&Scope::All)
        );
        assert!(anon(None, Some("Not A Tenant")).resolve().is_err());
    }

    #[test]
    fn no_token_is_ever_printed() {
        let a = args(Some("acme:s3cr3t-value"));
        assert!(!format!("{a:?}").contains("s3cr3t"));
        let settings = a.resolve().unwrap();
        assert!(!format!("{settings:?}").contains("s3cr3t"));
        for bad in [
            "acme:s3cr3t-value:rw",
            "Bad:s3cr3t-value",
            "acme:s3cr3t-value,beta:s3cr3t-value",
        ] {
            let e = args(Some(bad)).resolve().unwrap_err();
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn tokens_must_be_unique_and_not_empty() {
        let e = args(Some("acme:same,beta:same")).resolve().unwrap_err();
        assert!(e.0.contains("twice") && !e.0.contains("same"), "{e}");
        assert!(args(Some("acme:x,acme:x:ro")).resolve().is_err());
        assert!(args(Some("acme:")).resolve().is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[[tokens]]\ntenant = \"acme\"\ntoken = \"\"\n").unwrap();
        let e = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.0.contains("empty token"), "{e}");
    }

    #[test]
    fn threads_are_pinned_unless_turned_off() {
        assert!(args(Some("a:b")).resolve().unwrap().pin_threads);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "pin_threads = false\n").unwrap();
        let from_file = ServeArgs {
            config: Some(path),
            ..args(Some("a:b"))
        };
        assert!(!from_file.resolve().unwrap().pin_threads);
        let flag = ServeArgs {
            pin_threads: Some(false),
            ..args(Some("a:b"))
        };
        assert!(!flag.resolve().unwrap().pin_threads);
    }

    #[test]
    fn edge_limits_resolve_and_refuse_zero() {
        let s = ServeArgs {
            header_timeout_secs: Some(3),
            max_connections: Some(10),
            ..args(Some("a:b"))
        }
        .resolve()
        .unwrap();
        assert_eq!(s.edge.header_timeout, Duration::from_secs(3));
        assert_eq!(s.edge.max_connections, 10);
        assert_eq!(s.edge.idle_timeout, EdgeLimits::default().idle_timeout);
        for bad in [
            ServeArgs {
                body_timeout_secs: Some(0),
                ..args(Some("a:b"))
            },
            ServeArgs {
                max_pollers: Some(0),
                ..args(Some("a:b"))
            },
        ] {
            assert!(bad.resolve().is_err());
        }
    }
}
