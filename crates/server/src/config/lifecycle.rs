//! What the lifecycle settings say: accepted retention classes, retention rules and quotas,
//! each from the environment's one-line form or the file's tables.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use artifactstore_core::quota::{Quota, Quotas};
use artifactstore_core::retention::{RetentionRule, RetentionRules, parse_duration};
use artifactstore_core::validate;
use serde::Deserialize;

use super::{ConfigError, err};

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

/// Accepted classes, rules and quotas; the environment's form wins over the file's.
#[allow(clippy::type_complexity)]
pub(super) fn resolve(
    env_classes: Option<String>,
    file_classes: Option<Vec<String>>,
    env_retention: Option<&str>,
    file_retention: BTreeMap<String, FileRetention>,
    env_quotas: Option<&str>,
    file_quotas: BTreeMap<String, FileQuota>,
) -> Result<(Option<BTreeSet<String>>, RetentionRules, Quotas), ConfigError> {
    let retention_classes: Option<BTreeSet<String>> = match env_classes {
        Some(list) => Some(
            list.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        ),
        None => file_classes.map(|v| v.into_iter().collect()),
    };
    let retention = match env_retention {
        Some(text) => parse_retention_env(text)?,
        None => file_retention
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
    let quotas = match env_quotas {
        Some(text) => parse_quotas_env(text)?,
        None => file_quotas
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
    Ok((retention_classes, retention, quotas))
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
