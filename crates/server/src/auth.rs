//! Bearer-token authentication and the two extractors handlers use: [`Reader`] and
//! [`Writer`]. Tokens are kept only as SHA-256 hashes and compared in constant time.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use artifactstore_core::Scope;

use crate::AppState;
use crate::error::ApiError;

#[derive(Clone)]
pub struct TokenEntry {
    pub tenant: String,
    hash: [u8; 32],
    pub read_only: bool,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenEntry {{ tenant: {:?}, read_only: {} }}",
            self.tenant, self.read_only
        )
    }
}

impl TokenEntry {
    pub fn new(tenant: &str, token: &str, read_only: bool) -> Self {
        Self {
            tenant: tenant.into(),
            hash: Sha256::digest(token.as_bytes()).into(),
            read_only,
        }
    }

    /// From the hex SHA-256 of a token, as a config file may hold it.
    /// Whether two entries hold the same token.
    pub fn same_token(&self, other: &TokenEntry) -> bool {
        self.hash == other.hash
    }

    pub fn from_hash(tenant: &str, hex_hash: &str, read_only: bool) -> Option<Self> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hex_hash.to_ascii_lowercase(), &mut hash).ok()?;
        Some(Self {
            tenant: tenant.into(),
            hash,
            read_only,
        })
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub read_only: bool,
}

#[derive(Clone, Debug)]
pub struct Auth {
    tokens: Vec<TokenEntry>,
    /// What a request without credentials may read; `None` when anonymous reads are off.
    anon: Option<Scope>,
    /// Each tenant's request rate, counted once its token is known.
    throttle: std::sync::Arc<crate::throttle::Throttle>,
}

impl Auth {
    pub fn new(tokens: Vec<TokenEntry>, anon: Option<Scope>) -> Self {
        Self {
            tokens,
            anon,
            throttle: Default::default(),
        }
    }

    /// The same, counting each tenant's requests against `throttle`'s rate.
    pub fn with_throttle(self, throttle: std::sync::Arc<crate::throttle::Throttle>) -> Self {
        Self { throttle, ..self }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn anonymous(&self) -> Option<&Scope> {
        self.anon.as_ref()
    }

    /// One line for the start-up log: what a reader without a token can see.
    pub fn describe_anonymous(&self) -> String {
        match &self.anon {
            None => "off: every request needs a token".into(),
            Some(Scope::All) => {
                let tenants: std::collections::BTreeSet<&str> =
                    self.tokens.iter().map(|t| t.tenant.as_str()).collect();
                format!(
                    "ON for every tenant ({}): anyone who can reach this address reads all \
                     packages, files and events; development only",
                    tenants.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
            Some(Scope::Tenant(t)) => format!(
                "ON for tenant {t:?}: anyone who can reach this address reads its packages, \
                 files and events; development only"
            ),
        }
    }

    /// The caller a token belongs to. Every entry is compared, each in constant time, so the
    /// time taken says nothing about which token came close.
    fn lookup(&self, token: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.tokens {
            let diff = entry
                .hash
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(Caller {
                    tenant: entry.tenant.clone(),
                    read_only: entry.read_only,
                });
            }
        }
        found
    }

    /// What the caller of a request with `headers` may read (see [`Reader`]).
    pub fn reader(&self, headers: &HeaderMap) -> Result<Scope, ApiError> {
        match self.caller(headers)? {
            Some(caller) => Ok(Scope::Tenant(caller.tenant)),
            None => self.anon.clone().ok_or(ApiError::Unauthorized),
        }
    }

    /// The caller of a request: `Ok(None)` when it carries no credentials.
    fn caller(&self, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
        self.caller_by(headers, Schemes::Bearer)
    }

    /// The caller of a request under `/v2/`, where clients also send the store token as the
    /// password of HTTP Basic (any user name).
    pub fn oci_caller(&self, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
        self.caller_by(headers, Schemes::BearerOrBasic)
    }

    fn caller_by(&self, headers: &HeaderMap, schemes: Schemes) -> Result<Option<Caller>, ApiError> {
        let token = match presented(headers, schemes) {
            Presented::None => return Ok(None),
            Presented::Malformed => return Err(ApiError::Unauthorized),
            Presented::Token(token) => token,
        };
        let caller = match self.lookup(&token) {
            Some(caller) => caller,
            // What the token endpoint hands a client without credentials when anonymous
            // reads are on: as good as no credentials.
            None if schemes == Schemes::BearerOrBasic
                && self.anon.is_some()
                && token == ANONYMOUS_TOKEN =>
            {
                return Ok(None);
            }
            None => return Err(ApiError::Unauthorized),
        };
        self.throttle
            .tenant(&caller.tenant)
            .map_err(|wait| ApiError::throttled("tenant", wait))?;
        Ok(Some(caller))
    }
}

/// The token `/v2/token` answers a client without credentials when anonymous reads are on
/// (clients that found a challenge always ask for one); `/v2/` takes it as no credentials.
pub const ANONYMOUS_TOKEN: &str = "anonymous";

/// Which `Authorization` schemes a route takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Schemes {
    Bearer,
    BearerOrBasic,
}

enum Presented {
    None,
    Malformed,
    Token(String),
}

/// The token a request presents, as Bearer or (under `/v2/`) as a Basic password.
fn presented(headers: &HeaderMap, schemes: Schemes) -> Presented {
    use base64::Engine;
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Presented::None;
    };
    let Some((scheme, credentials)) = value.to_str().ok().and_then(|v| v.split_once(' ')) else {
        return Presented::Malformed;
    };
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Token(credentials.to_string());
    }
    if schemes == Schemes::BearerOrBasic && scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(credentials);
        let pair = decoded.ok().and_then(|d| String::from_utf8(d).ok());
        if let Some((_, password)) = pair.as_deref().and_then(|p| p.split_once(':')) {
            return Presented::Token(password.to_string());
        }
    }
    Presented::Malformed
}

/// The store token a `/v2/` request presents, as Bearer or Basic password.
pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    match presented(headers, Schemes::BearerOrBasic) {
        Presented::Token(token) => Some(token),
        _ => None,
    }
}

/// A caller allowed to read, and what it may see: its token's tenant, or what anonymous
/// reads are configured to show.
pub struct Reader(pub Scope);

/// A caller allowed to change things: a valid token that is not read-only.
pub struct Writer(pub Caller);

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.auth.reader(&parts.headers).map(Reader)
    }
}

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match state.auth.caller(&parts.headers)? {
            Some(caller) if caller.read_only => Err(ApiError::Forbidden),
            Some(caller) => Ok(Writer(caller)),
            None => Err(ApiError::Unauthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_their_tenant() {
        let auth = Auth::new(
            vec![
                TokenEntry::new("acme", "tok1", false),
                TokenEntry::new("acme", "tok2", true),
                TokenEntry::from_hash(
                    "beta",
                    "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
                    false,
                )
                .unwrap(),
            ],
            None,
        );
        assert_eq!(
            auth.lookup("tok1"),
            Some(Caller {
                tenant: "acme".into(),
                read_only: false
            })
        );
        assert_eq!(
            auth.lookup("tok2"),
            Some(Caller {
                tenant: "acme".into(),
                read_only: true
            })
        );
        // sha256("test")
        assert_eq!(auth.lookup("test").map(|c| c.tenant), Some("beta".into()));
        assert_eq!(auth.lookup("tok3"), None);
        assert_eq!(auth.lookup(""), None);
    }
}
