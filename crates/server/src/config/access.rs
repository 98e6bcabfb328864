//! Who may use the server: bearer tokens (from the environment and the file) and
//! anonymous reads.

use artifactstore_core::{Scope, validate};
use serde::Deserialize;

use super::{ConfigError, err};
use crate::auth::{Auth, TokenEntry};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileToken {
    pub tenant: String,
    pub token: Option<String>,
    pub sha256: Option<String>,
    #[serde(default)]
    pub read_only: bool,
}

/// The tokens and anonymous access the settings give: refused when nobody could use the
/// server, or when a token is empty or configured twice.
pub(super) fn resolve(
    env_tokens: Option<&str>,
    file_tokens: &[FileToken],
    anon_read: bool,
    anon_tenant: Option<String>,
) -> Result<Auth, ConfigError> {
    let mut tokens = Vec::new();
    if let Some(list) = env_tokens {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            tokens.push(parse_env_token(item)?);
        }
    }
    for t in file_tokens {
        validate::slug(&t.tenant).map_err(|m| err(format!("tenant {:?} {m}", t.tenant)))?;
        let entry = match (&t.token, &t.sha256) {
            (Some(token), None) if token.is_empty() => {
                return Err(err(format!("empty token for tenant {:?}", t.tenant)));
            }
            (Some(token), None) => TokenEntry::new(&t.tenant, token, t.read_only),
            (None, Some(hex)) => {
                TokenEntry::from_hash(&t.tenant, hex, t.read_only).ok_or_else(|| {
                    err(format!(
                        "token sha256 for {:?} is not 64 hex digits",
                        t.tenant
                    ))
                })?
            }
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
    let anon = match (anon_read, anon_tenant) {
        (false, _) => None,
        (true, Some(tenant)) => {
            validate::slug(&tenant).map_err(|m| err(format!("anonymous tenant {tenant:?} {m}")))?;
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
    Ok(Auth::new(tokens, anon))
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

pub(super) fn parse_env_token(item: &str) -> Result<TokenEntry, ConfigError> {
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
