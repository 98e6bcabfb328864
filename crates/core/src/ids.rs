//! Typed, prefixed, time-sortable identifiers (`pkg_…`, `file_…`, `upl_…`) built on ULIDs.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::{Generator, Ulid};

/// The kind of resource an [`Id`] names; fixes its prefix.
/// This process's name among the replicas (a ULID drawn at start): who holds a lease.
pub fn instance_id() -> &'static str {
    static ID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| Ulid::new().to_string());
    &ID
}

pub trait IdKind: Send + Sync + 'static {
    const PREFIX: &'static str;
    /// The name of the id's schema in the OpenAPI document.
    const SCHEMA_NAME: &'static str;
}

macro_rules! id_kind {
    ($kind:ident, $alias:ident, $prefix:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $kind {}
        impl IdKind for $kind {
            const PREFIX: &'static str = $prefix;
            const SCHEMA_NAME: &'static str = stringify!($alias);
        }
        pub type $alias = Id<$kind>;
    };
}

id_kind!(PackageKind, PackageId, "pkg_");
id_kind!(FileKind, FileId, "file_");
id_kind!(UploadKind, UploadId, "upl_");

/// An identifier: a prefix naming the resource kind and a ULID (Crockford base32, 26
/// characters). Sorting ids sorts them by creation time.
pub struct Id<K: IdKind> {
    ulid: Ulid,
    _kind: PhantomData<K>,
}

/// One generator per tenant, so a tenant's ids made within the same millisecond still sort in
/// creation order (the ULID "monotonic" mode: the random part counts up by one), while
/// another tenant's ids of that millisecond start from a random part of their own: with one
/// shared counter, a tenant whose two ids differ by two would know the id between them, and
/// that someone else had just made it.
static GENERATORS: Mutex<Option<HashMap<String, Generator>>> = Mutex::new(None);
/// Tenants whose generators are kept; beyond, they start again (only the order of ids made in
/// the same millisecond as a forgotten one could suffer).
const GENERATORS_KEPT: usize = 4096;

impl<K: IdKind> Id<K> {
    /// A fresh id of `tenant`'s, later than every id this process made for it before.
    pub fn generate(tenant: &str) -> Self {
        let mut guard = GENERATORS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let generators = guard.get_or_insert_with(HashMap::new);
        // Looked up before anything is inserted: no allocation for a tenant seen before.
        if !generators.contains_key(tenant) {
            if generators.len() >= GENERATORS_KEPT {
                generators.clear();
            }
            generators.insert(tenant.to_string(), Generator::new());
        }
        let Some(generator) = generators.get_mut(tenant) else {
            return Self::from_ulid(Ulid::new());
        };
        // Overflow needs 2^80 ids in one millisecond; fall back to a random ULID then.
        let ulid = generator.generate().unwrap_or_else(|_| Ulid::new());
        Self::from_ulid(ulid)
    }

    pub fn from_ulid(ulid: Ulid) -> Self {
        Self {
            ulid,
            _kind: PhantomData,
        }
    }

    pub fn ulid(&self) -> Ulid {
        self.ulid
    }
}

/// A string that is not a well-formed id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {prefix}… identifier")]
pub struct InvalidId {
    pub prefix: &'static str,
}

impl<K: IdKind> FromStr for Id<K> {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = InvalidId { prefix: K::PREFIX };
        let rest = s.strip_prefix(K::PREFIX).ok_or(err.clone())?;
        // Ulid::from_string accepts lowercase too; only the canonical form is an id, so
        // that each resource has exactly one spelling.
        if rest.len() != 26 || rest.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(err);
        }
        // The decoder also takes a first digit above 7, dropping the bits past 128: that
        // would be a second spelling of another id.
        if rest.as_bytes()[0] > b'7' {
            return Err(err);
        }
        Ulid::from_string(rest)
            .map(Self::from_ulid)
            .map_err(|_| err)
    }
}

impl<K: IdKind> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", K::PREFIX, self.ulid)
    }
}

impl<K: IdKind> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<K: IdKind> Clone for Id<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: IdKind> Copy for Id<K> {}
impl<K: IdKind> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.ulid == other.ulid
    }
}
impl<K: IdKind> Eq for Id<K> {}
impl<K: IdKind> std::hash::Hash for Id<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.ulid.hash(state)
    }
}
impl<K: IdKind> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: IdKind> Ord for Id<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.ulid.cmp(&other.ulid)
    }
}

impl<K: IdKind> Serialize for Id<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de, K: IdKind> Deserialize<'de> for Id<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_prefix() {
        let id = PackageId::generate("acme");
        let text = id.to_string();
        assert!(text.starts_with("pkg_"));
        assert_eq!(text.len(), 4 + 26);
        assert_eq!(text.parse::<PackageId>().unwrap(), id);
        assert!(text.parse::<FileId>().is_err());
        assert!(text.to_lowercase().parse::<PackageId>().is_err());
        assert!("pkg_".parse::<PackageId>().is_err());
        assert!(
            "pkg_01ARZ3NDEKTSV4RRFFQ69G5FAVX"
                .parse::<PackageId>()
                .is_err()
        );
        assert!(
            "pkg_01ARZ3NDEKTSV4RRFFQ69G5FAV"
                .parse::<PackageId>()
                .is_ok()
        );
    }

    #[test]
    fn ids_of_two_tenants_in_one_millisecond_are_not_neighbours() {
        // Interleaved, as two tenants' requests would be: each tenant's ids count up by one
        // within a millisecond, the other's lie nowhere near.
        let mut acme = Vec::new();
        let mut beta = Vec::new();
        for _ in 0..1000 {
            acme.push(UploadId::generate("acme").ulid());
            beta.push(UploadId::generate("beta").ulid());
        }
        let mut same_ms = 0;
        for (a, b) in acme.iter().zip(&beta) {
            if a.timestamp_ms() == b.timestamp_ms() {
                same_ms += 1;
                let gap = (a.random() as i128 - b.random() as i128).unsigned_abs();
                assert!(gap > 1 << 20, "{a} and {b} are neighbours");
            }
        }
        assert!(same_ms > 0, "no two ids in the same millisecond");
    }

    #[test]
    fn ids_sort_in_creation_order() {
        let ids: Vec<UploadId> = (0..1000).map(|_| UploadId::generate("acme")).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let mut sorted_texts = texts.clone();
        sorted_texts.sort();
        assert_eq!(texts, sorted_texts);
    }
}
