//! Server configuration: flags override environment (`ARTIFACTSTORE_*`), which overrides the
//! TOML file named by `--config` / `ARTIFACTSTORE_CONFIG`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use artifactstore_core::lifecycle::{Quota, Quotas, RetentionRule, RetentionRules, parse_duration};
use artifactstore_core::limits::{DEFAULT_MAX_FILE_BYTES, DEFAULT_UPLOAD_TTL_SECS};
use artifactstore_core::{INLINE_FILE_BYTES, Scope, validate};
use serde::Deserialize;

use crate::auth::{Auth, TokenEntry};
use crate::edge::EdgeLimits;

/// Largest JSON request body, by default.
pub const DEFAULT_MAX_JSON_BYTES: usize = 1024 * 1024;

#[derive(Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "ARTIFACTSTORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ARTIFACTSTORE_LISTEN")]
    pub listen: Option<String>,
    /// Directory of the embedded stores (SQLite database and blob directory)
    /// [default: ./artifactstore-data].
    #[arg(long, env = "ARTIFACTSTORE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Metadata store: sqlite://PATH, or postgres://USER:PASSWORD@HOST:PORT/DB for replicas
    /// sharing one database [default: the data dir's meta.db].
    #[arg(long, env = "ARTIFACTSTORE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Blob store: file://PATH, or s3://BUCKET/PREFIX shared by replicas (endpoint, region and
    /// keys from AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_ALLOW_HTTP) [default: the data dir's blobs/].
    #[arg(long, env = "ARTIFACTSTORE_BLOB_URL")]
    pub blob_url: Option<String>,
    /// Bearer tokens: comma-separated tenant:token or tenant:token:ro.
    #[arg(long, env = "ARTIFACTSTORE_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// Allow reads without a token (development only).
    #[arg(long, env = "ARTIFACTSTORE_ANON_READ")]
    pub anon_read: Option<bool>,
    /// The tenant anonymous reads see [default: the only configured tenant].
    #[arg(long, env = "ARTIFACTSTORE_ANON_TENANT")]
    pub anon_tenant: Option<String>,
    /// Largest file, single-shot or through an upload session, in bytes [default: 64 GiB].
    #[arg(long, env = "ARTIFACTSTORE_MAX_FILE_BYTES")]
    pub max_file_bytes: Option<u64>,
    /// Largest JSON request body in bytes [default: 1 MiB].
    #[arg(long, env = "ARTIFACTSTORE_MAX_JSON_BYTES")]
    pub max_json_bytes: Option<usize>,
    /// Seconds an upload session lives after its last change [default: 86400].
    #[arg(long, env = "ARTIFACTSTORE_UPLOAD_TTL_SECS")]
    pub upload_ttl_secs: Option<u64>,
    /// Accepted retention classes, comma-separated [default: any].
    #[arg(long, env = "ARTIFACTSTORE_RETENTION_CLASSES")]
    pub retention_classes: Option<String>,
    /// Retention rules per class, `;`-separated: CLASS:max_age=14d,keep_last=5,open_max_age=2d
    /// (durations in s, m, h, d or w). A class with no rule keeps its packages forever.
    /// [default: none]
    #[arg(long, env = "ARTIFACTSTORE_RETENTION")]
    pub retention: Option<String>,
    /// Quotas per tenant, `;`-separated: TENANT:max_bytes=100GiB,max_open_uploads=50 (bytes
    /// as a number or with KiB, MiB, GiB, TiB, KB, MB, GB, TB) [default: none].
    #[arg(long, env = "ARTIFACTSTORE_QUOTAS")]
    pub quotas: Option<String>,
    /// Seconds between two retention sweeps (one replica sweeps at a time) [default: 60].
    #[arg(long, env = "ARTIFACTSTORE_RETENTION_INTERVAL_SECS")]
    pub retention_interval_secs: Option<u64>,
    /// Seconds between two garbage collections (one replica collects at a time)
    /// [default: 600].
    #[arg(long, env = "ARTIFACTSTORE_GC_INTERVAL_SECS")]
    pub gc_interval_secs: Option<u64>,
    /// Seconds unused bytes are kept after their last write or claim before garbage
    /// collection may delete them; must exceed the longest write [default: 3600].
    #[arg(long, env = "ARTIFACTSTORE_GC_GRACE_SECS")]
    pub gc_grace_secs: Option<u64>,
    /// PEM certificate chain: serve HTTPS instead of HTTP (needs --tls-key).
    #[arg(long, env = "ARTIFACTSTORE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ARTIFACTSTORE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a request head (and TLS handshake) may take from its first byte [default: 10].
    #[arg(long, env = "ARTIFACTSTORE_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Seconds a connection may stay open with no request in flight [default: 75].
    #[arg(long, env = "ARTIFACTSTORE_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds a request body may send nothing, or a response write nothing, before the
    /// connection is cut [default: 60].
    #[arg(long, env = "ARTIFACTSTORE_BODY_TIMEOUT_SECS")]
    pub body_timeout_secs: Option<u64>,
    /// Open connections at most; at the cap the one idle longest is closed [default: 8192].
    #[arg(long, env = "ARTIFACTSTORE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Concurrent streams per HTTP/2 connection [default: 128].
    #[arg(long, env = "ARTIFACTSTORE_H2_MAX_STREAMS")]
    pub h2_max_streams: Option<u32>,
    /// Seconds shutdown waits for in-flight requests [default: 30].
    #[arg(long, env = "ARTIFACTSTORE_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Longest long-poll wait a request may ask for, in seconds, 1 to 60 [default: 60].
    #[arg(long, env = "ARTIFACTSTORE_MAX_WAIT_SECS")]
    pub max_wait_secs: Option<u64>,
    /// Long-polls waiting at once, in all [default: 4096].
    #[arg(long, env = "ARTIFACTSTORE_MAX_POLLERS")]
    pub max_pollers: Option<usize>,
    /// Long-polls waiting at once, per tenant [default: 1024].
    #[arg(long, env = "ARTIFACTSTORE_MAX_POLLERS_PER_TENANT")]
    pub max_pollers_per_tenant: Option<usize>,
    /// Single-shot files of at most this many bytes keep their bytes in the metadata store,
    /// durable with their record in one commit; 0 to 65536 [default: 65536].
    #[arg(long, env = "ARTIFACTSTORE_INLINE_MAX_BYTES")]
    pub inline_max_bytes: Option<u64>,
    /// Pin each connection thread to its own CPU when there is one thread per allowed CPU
    /// [default: true]; turn off on a host whose cores other busy processes share.
    #[arg(long, env = "ARTIFACTSTORE_PIN_THREADS")]
    pub pin_threads: Option<bool>,
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

/// The TOML file. Tokens may be given as `token` or as the hex SHA-256 of the token.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub blob_url: Option<String>,
    pub anon_read: Option<bool>,
    pub anon_tenant: Option<String>,
    pub max_file_bytes: Option<u64>,
    pub max_json_bytes: Option<usize>,
    pub upload_ttl_secs: Option<u64>,
    pub retention_classes: Option<Vec<String>>,
    /// `[retention.CLASS]` tables.
    #[serde(default)]
    pub retention: BTreeMap<String, FileRetention>,
    pub retention_interval_secs: Option<u64>,
    /// `[quotas.TENANT]` tables.
    #[serde(default)]
    pub quotas: BTreeMap<String, FileQuota>,
    pub gc_interval_secs: Option<u64>,
    pub gc_grace_secs: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub header_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub body_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub h2_max_streams: Option<u32>,
    pub shutdown_grace_secs: Option<u64>,
    pub max_wait_secs: Option<u64>,
    pub max_pollers: Option<usize>,
    pub max_pollers_per_tenant: Option<usize>,
    pub inline_max_bytes: Option<u64>,
    pub pin_threads: Option<bool>,
    #[serde(default)]
    pub tokens: Vec<FileToken>,
}

/// One `[retention.CLASS]` table: durations as strings (`"14d"`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetention {
    pub max_age: Option<String>,
    pub keep_last: Option<u32>,
    pub open_max_age: Option<String>,
}

/// One `[quotas.TENANT]` table: bytes as a number or a string (`"100GiB"`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuota {
    pub max_bytes: Option<toml::Value>,
    pub max_open_uploads: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileToken {
    pub tenant: String,
    pub token: Option<String>,
    pub sha256: Option<String>,
    #[serde(default)]
    pub read_only: bool,
}

/// `url` with the password of its user part, if any, replaced by `***` (for logs).
pub fn redact_url(url: &str) -> String {
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
                toml::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?
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

        let mut tokens = Vec::new();
        if let Some(list) = &self.tokens {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                tokens.push(parse_env_token(item)?);
            }
        }
        for t in &file.tokens {
            validate::slug(&t.tenant).map_err(|m| err(format!("tenant {:?} {m}", t.tenant)))?;
            let entry = match (&t.token, &t.sha256) {
                (Some(token), None) if token.is_empty() => {
                    return Err(err(format!("empty token for tenant {:?}", t.tenant)));
                }
                (Some(token), None) => TokenEntry::new(&t.tenant, token, t.read_only),
                (None, Some(hex)) => TokenEntry::from_hash(&t.tenant, hex, t.read_only)
                    .ok_or_else(|| {
                        err(format!(
                            "token sha256 for {:?} is not 64 hex digits",
                            t.tenant
                        ))
                    })?,
                _ => {
                    return Err(err(format!(
                        "token of {:?}: give exactly one of token, sha256",
                        t.tenant
                    )));
                }
            };
            tokens.push(entry);
        }
        check_tokens(&tokens)?;
        let anon_read = self.anon_read.or(file.anon_read).unwrap_or(false);
        let anon = match (anon_read, self.anon_tenant.or(file.anon_tenant)) {
            (false, _) => None,
            (true, Some(tenant)) => {
                validate::slug(&tenant)
                    .map_err(|m| err(format!("anonymous tenant {tenant:?} {m}")))?;
                Some(Scope::Tenant(tenant))
            }
            (true, None) => Some(Scope::All),
        };
        if tokens.is_empty() && anon.is_none() {
            return Err(err(
                "no token is configured, so nobody could use this server. Set ARTIFACTSTORE_TOKENS, \
                 e.g. ARTIFACTSTORE_TOKENS=acme:$(openssl rand -hex 16), or add [[tokens]] to the \
                 file named by ARTIFACTSTORE_CONFIG (or, for development only, \
                 ARTIFACTSTORE_ANON_READ=true)",
            ));
        }
        let retention_classes: Option<BTreeSet<String>> = match self.retention_classes {
            Some(list) => Some(
                list.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            ),
            None => file.retention_classes.map(|v| v.into_iter().collect()),
        };
        let retention = match &self.retention {
            Some(text) => parse_retention_env(text)?,
            None => file
                .retention
                .iter()
                .map(|(class, r)| {
                    let age = |what: &str, v: &Option<String>| {
                        v.as_deref()
                            .map(|t| duration(&format!("{class}.{what}"), t))
                            .transpose()
                    };
                    Ok((
                        class.clone(),
                        RetentionRule {
                            max_age: age("max_age", &r.max_age)?,
                            keep_last: r.keep_last,
                            open_max_age: age("open_max_age", &r.open_max_age)?,
                        },
                    ))
                })
                .collect::<Result<_, ConfigError>>()?,
        };
        for class in retention.keys() {
            validate::slug(class).map_err(|m| err(format!("retention class {class:?} {m}")))?;
            if let Some(allowed) = &retention_classes
                && !allowed.contains(class)
            {
                return Err(err(format!(
                    "retention rule for {class:?}, which is not an accepted retention class"
                )));
            }
        }
        let quotas = match &self.quotas {
            Some(text) => parse_quotas_env(text)?,
            None => file
                .quotas
                .iter()
                .map(|(tenant, q)| {
                    let max_bytes = match &q.max_bytes {
                        None => None,
                        Some(toml::Value::Integer(n)) if *n >= 0 => Some(*n as u64),
                        Some(toml::Value::String(text)) => {
                            Some(byte_size(&format!("{tenant}.max_bytes"), text)?)
                        }
                        Some(other) => {
                            return Err(err(format!(
                                "quotas.{tenant}.max_bytes = {other:?}: expected bytes (e.g. \"100GiB\")"
                            )));
                        }
                    };
                    let quota = Quota {
                        max_bytes,
                        max_open_uploads: q.max_open_uploads,
                    };
                    Ok((tenant.clone(), quota))
                })
                .collect::<Result<_, ConfigError>>()?,
        };
        for tenant in quotas.keys() {
            validate::slug(tenant).map_err(|m| err(format!("quota tenant {tenant:?} {m}")))?;
        }
        Ok(Settings {
            listen,
            database_url,
            blob_url,
            auth: Auth::new(tokens, anon),
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

/// A retention duration (`14d`), named `what` in the error.
fn duration(what: &str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).ok_or_else(|| {
        err(format!(
            "{what} = {text:?}: expected a number and s, m, h, d or w (e.g. 14d)"
        ))
    })
}

/// `ARTIFACTSTORE_RETENTION`: `CLASS:key=value,…;CLASS:…`.
fn parse_retention_env(text: &str) -> Result<RetentionRules, ConfigError> {
    let mut rules = RetentionRules::new();
    for (class, pairs) in rule_list("retention", text)? {
        let mut rule = RetentionRule::default();
        for (key, value) in pairs {
            let what = format!("{class}.{key}");
            match key.as_str() {
                "max_age" => rule.max_age = Some(duration(&what, &value)?),
                "open_max_age" => rule.open_max_age = Some(duration(&what, &value)?),
                "keep_last" => rule.keep_last = Some(whole(&what, &value)?),
                _ => {
                    return Err(err(format!(
                        "retention {class}: unknown rule {key:?} (max_age, keep_last, open_max_age)"
                    )));
                }
            }
        }
        rules.insert(class, rule);
    }
    Ok(rules)
}

/// A whole number (named `what` in the error).
fn whole<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|_| err(format!("{what} = {value:?}: expected a whole number")))
}

/// A size in bytes: `1000`, `10KB`, `100GiB` (named `what` in the error).
fn byte_size(what: &str, text: &str) -> Result<u64, ConfigError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => u64::MAX,
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|_| unit != u64::MAX)
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| err(format!("{what} = {text:?}: expected bytes, e.g. 100GiB")))
}

/// `ARTIFACTSTORE_QUOTAS`: `TENANT:key=value,…;TENANT:…`.
fn parse_quotas_env(text: &str) -> Result<Quotas, ConfigError> {
    let mut quotas = Quotas::new();
    for (tenant, pairs) in rule_list("quotas", text)? {
        let mut quota = Quota::default();
        for (key, value) in pairs {
            let what = format!("{tenant}.{key}");
            match key.as_str() {
                "max_bytes" => quota.max_bytes = Some(byte_size(&what, &value)?),
                "max_open_uploads" => quota.max_open_uploads = Some(whole(&what, &value)?),
                _ => {
                    return Err(err(format!(
                        "quotas {tenant}: unknown quota {key:?} (max_bytes, max_open_uploads)"
                    )));
                }
            }
        }
        quotas.insert(tenant, quota);
    }
    Ok(quotas)
}

/// `NAME:key=value,…;NAME:…` (the form of `ARTIFACTSTORE_RETENTION` and `_QUOTAS`).
#[allow(clippy::type_complexity)]
fn rule_list(what: &str, text: &str) -> Result<Vec<(String, Vec<(String, String)>)>, ConfigError> {
    let mut rules = Vec::new();
    for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, parts) = item.split_once(':').unwrap_or((item, ""));
        let mut pairs = Vec::new();
        for part in parts.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| err(format!("{what} {name}: {part:?} is not key=value")))?;
            pairs.push((key.trim().to_string(), value.trim().to_string()));
        }
        rules.push((name.trim().to_string(), pairs));
    }
    Ok(rules)
}

/// A timeout in whole seconds; 0 would cut every client at once.
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

/// No token may be empty or configured twice: a token names exactly one tenant and one
/// access level. Messages name the tenants, never the token.
fn check_tokens(tokens: &[TokenEntry]) -> Result<(), ConfigError> {
    for (i, a) in tokens.iter().enumerate() {
        if let Some(b) = tokens[..i].iter().find(|b| b.same_token(a)) {
            return Err(err(format!(
                "one token is configured twice (tenants {:?} and {:?}): a token must name \
                 exactly one tenant and access level",
                b.tenant, a.tenant
            )));
        }
    }
    Ok(())
}

fn parse_env_token(item: &str) -> Result<TokenEntry, ConfigError> {
    let parts: Vec<&str> = item.split(':').collect();
    let (tenant, token, read_only) = match parts.as_slice() {
        [tenant, token] => (*tenant, *token, false),
        [tenant, token, "ro"] => (*tenant, *token, true),
        _ => {
            return Err(err(
                "ARTIFACTSTORE_TOKENS entries are tenant:token or tenant:token:ro",
            ));
        }
    };
    validate::slug(tenant).map_err(|m| err(format!("tenant {tenant:?} {m}")))?;
    if token.is_empty() {
        return Err(err(format!("empty token for tenant {tenant:?}")));
    }
    Ok(TokenEntry::new(tenant, token, read_only))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tokens: Option<&str>) -> ServeArgs {
        ServeArgs {
            tokens: tokens.map(str::to_string),
            ..Default::default()
        }
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
