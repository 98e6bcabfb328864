//! The HTTP client every command uses: connection settings, requests with the bearer token,
//! and one error type whose variants are the CLI's exit codes.

use std::path::PathBuf;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Exit codes, one per kind of failure a script may want to tell apart.
pub mod exit {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const AUTH: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const INTEGRITY: u8 = 6;
    pub const NETWORK: u8 = 7;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    /// The server answered with a problem document.
    #[error("{title}: {detail}")]
    Server {
        status: StatusCode,
        kind: String,
        title: String,
        detail: String,
    },
    #[error("cannot reach {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("integrity: {0}")]
    Integrity(String),
    #[error("{0}")]
    Io(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Network { .. } => exit::NETWORK,
            Self::Integrity(_) => exit::INTEGRITY,
            Self::Io(_) => exit::OTHER,
            Self::Server { status, kind, .. } => match status.as_u16() {
                401 | 403 => exit::AUTH,
                404 => exit::NOT_FOUND,
                409 => exit::CONFLICT,
                _ if kind.ends_with("/digest-mismatch") => exit::INTEGRITY,
                400..=499 => exit::USAGE,
                _ => exit::OTHER,
            },
        }
    }

    pub fn io(context: &str, e: impl std::fmt::Display) -> Self {
        Self::Io(format!("{context}: {e}"))
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// `~/.config/artifactstore/config.toml` (or under `$XDG_CONFIG_HOME`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    url: Option<String>,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
}

/// What the flags and environment say about the server to talk to.
#[derive(Default)]
pub struct Connection {
    pub url: Option<String>,
    pub token: Option<String>,
    /// Extra CA certificates (PEM) for https://, besides the system's roots.
    pub ca_cert: Option<PathBuf>,
}

pub fn config_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("artifactstore").join("config.toml"))
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// Flags, then environment (clap fills both in), then the config file, then localhost.
    pub fn new(connection: Connection) -> CliResult<Self> {
        let file = match config_path() {
            Some(path) if path.exists() => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| CliError::io(&path.display().to_string(), e))?;
                toml::from_str::<ConfigFile>(&text)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
            }
            _ => ConfigFile::default(),
        };
        let base = connection
            .url
            .or(file.url)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(CliError::Usage(format!(
                "server url {base:?}: expected http:// or https://"
            )));
        }
        let mut http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true);
        if let Some(path) = connection.ca_cert.or(file.ca_cert) {
            let pem =
                std::fs::read(&path).map_err(|e| CliError::io(&path.display().to_string(), e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| {
                    CliError::Usage(format!("{}: no PEM certificate in it", path.display()))
                })?;
            http = http.tls_certs_merge(certs);
        }
        let http = http.build().map_err(|e| CliError::Io(e.to_string()))?;
        Ok(Self {
            base,
            token: connection.token.or(file.token),
            http,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => r.bearer_auth(token),
            None => r,
        }
    }

    /// Sends, and turns transport failures and problem documents into [`CliError`]s.
    pub async fn send(&self, request: RequestBuilder) -> CliResult<Response> {
        let response = request.send().await.map_err(|e| self.network(e))?;
        check(response).await
    }

    pub async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> CliResult<T> {
        let response = self.send(request).await?;
        response.json().await.map_err(|e| self.network(e))
    }

    pub fn network(&self, e: reqwest::Error) -> CliError {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        CliError::Network {
            url: self.base.clone(),
            reason,
        }
    }
}

/// Passes a success through; reads a problem document out of a failure.
pub async fn check(response: Response) -> CliResult<Response> {
    let status = response.status();
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        return Ok(response);
    }
    #[derive(Deserialize, Default)]
    struct Problem {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        title: String,
        #[serde(default)]
        detail: String,
    }
    let text = response.text().await.unwrap_or_default();
    let problem: Problem = serde_json::from_str(&text).unwrap_or_default();
    let title = if problem.title.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        problem.title
    };
    let detail = if problem.detail.is_empty() {
        text.trim().chars().take(200).collect()
    } else {
        problem.detail
    };
    Err(CliError::Server {
        status,
        kind: problem.kind,
        title,
        detail,
    })
}
