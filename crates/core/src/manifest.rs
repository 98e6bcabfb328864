//! The manifest: one value, encoded as deterministic CBOR (RFC 8949 §4.2.1) and projected to
//! JCS JSON (RFC 8785). Its digest is the SHA-256 of the CBOR bytes.
//!
//! CBOR comes from the `cbor2` crate's `to_canonical_vec` (map keys ordered by the bytes of
//! their encoding, shortest integers, definite lengths); JCS from `serde_json_canonicalizer`
//! (keys ordered by UTF-16 code units, ECMAScript number and string forms). Both sort every map
//! themselves, so the struct field order below does not matter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::model::{ContentAddress, Digests, FileRecord, Package, StoredManifest};
use crate::timestamp::Timestamp;

pub const SCHEMA: &str = "artifactstore.manifest/v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    pub package_id: String,
    pub tenant: String,
    pub producer: String,
    pub subject: String,
    pub retention_class: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at: Timestamp,
    pub finalized_at: Timestamp,
    pub file_count: u64,
    pub total_size: u64,
    pub files: Vec<ManifestFile>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    pub media_type: String,
    pub digests: Digests,
    pub content_address: ContentAddress,
}

/// Encoding failed: only possible for values the manifest never holds (duplicate keys).
#[derive(Debug, thiserror::Error)]
#[error("manifest encoding failed: {0}")]
pub struct EncodeError(String);

impl Manifest {
    /// The manifest of `package` with `files` (in any order), frozen at `finalized_at`.
    pub fn new(
        package: &Package,
        finalized_at: Timestamp,
        files: impl IntoIterator<Item = FileRecord>,
    ) -> Self {
        let mut files: Vec<ManifestFile> = files
            .into_iter()
            .map(|f| ManifestFile {
                path: f.path,
                size: f.size,
                media_type: f.media_type,
                digests: f.digests,
                content_address: f.content_address,
            })
            .collect();
        // `str`'s order is the order of its UTF-8 bytes, which is what the contract asks.
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Self {
            schema: SCHEMA.to_string(),
            package_id: package.id.to_string(),
            tenant: package.tenant.clone(),
            producer: package.producer.clone(),
            subject: package.subject.clone(),
            retention_class: package.retention_class.clone(),
            metadata: package.metadata.clone(),
            created_at: package.created_at,
            finalized_at,
            file_count: files.len() as u64,
            total_size: files.iter().map(|f| f.size).sum(),
            files,
        }
    }

    pub fn to_cbor(&self) -> Result<Vec<u8>, EncodeError> {
        cbor2::to_canonical_vec(self).map_err(|e| EncodeError(e.to_string()))
    }

    pub fn to_jcs(&self) -> Result<String, EncodeError> {
        serde_json_canonicalizer::to_string(self).map_err(|e| EncodeError(e.to_string()))
    }

    /// Both encodings and the digest, as the metadata store keeps them.
    pub fn encode(&self) -> Result<StoredManifest, EncodeError> {
        let cbor = self.to_cbor()?;
        Ok(StoredManifest {
            digest: Sha256Digest::of(&cbor),
            json: self.to_jcs()?,
            cbor,
        })
    }
}

/// Deterministic CBOR of any serializable value (events use it too).
pub fn to_deterministic_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    cbor2::to_canonical_vec(value).map_err(|e| EncodeError(e.to_string()))
}

/// JCS JSON of any serializable value.
pub fn to_jcs<T: Serialize>(value: &T) -> Result<String, EncodeError> {
    serde_json_canonicalizer::to_string(value).map_err(|e| EncodeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PackageId;
    use crate::model::PackageState;
    use proptest::prelude::*;
    use serde_json::json;

    fn hex(bytes: &[u8]) -> String {
        hex::encode(bytes)
    }

    fn cbor<T: Serialize>(v: &T) -> String {
        hex(&to_deterministic_cbor(v).unwrap())
    }

    /// RFC 8949 Appendix A vectors for the types a manifest or an event uses: unsigned and
    /// negative integers, text strings, arrays, maps, booleans and null.
    #[test]
    fn rfc8949_appendix_a_vectors() {
        let unsigned: &[(u64, &str)] = &[
            (0, "00"),
            (1, "01"),
            (10, "0a"),
            (23, "17"),
            (24, "1818"),
            (25, "1819"),
            (100, "1864"),
            (1000, "1903e8"),
            (1_000_000, "1a000f4240"),
            (1_000_000_000_000, "1b000000e8d4a51000"),
            (18_446_744_073_709_551_615, "1bffffffffffffffff"),
        ];
        for (v, want) in unsigned {
            assert_eq!(cbor(v), *want, "{v}");
        }
        for (v, want) in [
            (-1i64, "20"),
            (-10, "29"),
            (-100, "3863"),
            (-1000, "3903e7"),
        ] {
            assert_eq!(cbor(&v), want, "{v}");
        }
        let texts = [
            ("", "60"),
            ("a", "6161"),
            ("IETF", "6449455446"),
            ("\"\\", "62225c"),
            ("\u{00fc}", "62c3bc"),
            ("\u{6c34}", "63e6b0b4"),
            ("\u{10151}", "64f0908591"),
        ];
        for (v, want) in texts {
            assert_eq!(cbor(&v), want, "{v:?}");
        }
        assert_eq!(cbor(&false), "f4");
        assert_eq!(cbor(&true), "f5");
        assert_eq!(cbor(&()), "f6");
        assert_eq!(cbor(&Vec::<u8>::new()), "80");
        assert_eq!(cbor(&json!([1, 2, 3])), "83010203");
        assert_eq!(cbor(&json!([1, [2, 3], [4, 5]])), "8301820203820405");
        let v25: Vec<u32> = (1..=25).collect();
        assert_eq!(
            cbor(&v25),
            "98190102030405060708090a0b0c0d0e0f101112131415161718181819"
        );
        assert_eq!(cbor(&json!({})), "a0");
        assert_eq!(cbor(&json!({"a": 1, "b": [2, 3]})), "a26161016162820203");
        assert_eq!(cbor(&json!(["a", {"b": "c"}])), "826161a161626163");
        assert_eq!(
            cbor(&json!({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"})),
            "a56161614161626142616361436164614461656145"
        );
    }

    /// §4.2.1 orders keys by their encoded bytes: shorter text keys first (their length is in
    /// the head byte), then bytewise — not the plain string order a BTreeMap would give.
    #[test]
    fn map_keys_in_encoded_byte_order() {
        let value = json!({"aa": 1, "b": 2, "a": 3, "ab": 4, "z": 5});
        // a, b, z (1-byte keys), then aa, ab.
        assert_eq!(cbor(&value), "a5616103616202617a056261610162616204");
    }

    /// RFC 8785 §3.2.3 sorts by UTF-16 code units; its example object.
    #[test]
    fn rfc8785_key_order() {
        let value = json!({
            "\u{20ac}": "Euro Sign",
            "\r": "Carriage Return",
            "\u{fb33}": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\u{1f600}": "Emoji: Grinning Face",
            "\u{0080}": "Control",
            "\u{00f6}": "Latin Small Letter O With Diaeresis"
        });
        let got = to_jcs(&value).unwrap();
        let keys: Vec<&str> = [
            "\r",
            "1",
            "\u{0080}",
            "\u{00f6}",
            "\u{20ac}",
            "\u{1f600}",
            "\u{fb33}",
        ]
        .to_vec();
        let mut last = 0;
        for k in keys {
            let escaped = serde_json::to_string(k)
                .unwrap()
                .replace("\\u0080", "\u{0080}");
            let pos = got
                .find(&format!("{escaped}:"))
                .unwrap_or_else(|| panic!("{k:?} in {got}"));
            assert!(pos >= last, "{k:?} out of order in {got}");
            last = pos;
        }
    }

    /// RFC 8785 §3.2.2 number and string vectors.
    #[test]
    fn rfc8785_numbers_and_strings() {
        let value: serde_json::Value = serde_json::from_str(
            r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
                "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
                "literals": [null, true, false]}"#,
        )
        .unwrap();
        assert_eq!(
            to_jcs(&value).unwrap(),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        assert_eq!(to_jcs(&json!(-0.0)).unwrap(), "0");
        assert_eq!(
            to_jcs(&json!(9007199254740991u64)).unwrap(),
            "9007199254740991"
        );
    }

    fn package() -> Package {
        Package {
            id: "pkg_01ARZ3NDEKTSV4RRFFQ69G5FAV"
                .parse::<PackageId>()
                .unwrap(),
            tenant: "acme".into(),
            producer: "ci/build-42".into(),
            subject: "app@1.2.3".into(),
            retention_class: "standard".into(),
            metadata: [("git.sha".to_string(), "abc123".to_string())]
                .into_iter()
                .collect(),
            state: PackageState::Open,
            created_at: Timestamp::from_millis(1_778_846_400_123),
            finalized_at: None,
            file_count: 0,
            total_size: 0,
            manifest_digest: None,
            held: false,
            expires_at: None,
        }
    }

    fn file(path: &str, size: u64) -> FileRecord {
        let digest = Sha256Digest::of(path.as_bytes());
        FileRecord::new(
            "acme",
            package().id,
            path.into(),
            size,
            "text/plain".into(),
            digest,
        )
    }

    #[test]
    fn manifest_shape_and_projection_agree() {
        let m = Manifest::new(
            &package(),
            Timestamp::from_millis(1_778_846_500_000),
            vec![file("b", 2), file("a/x", 1)],
        );
        let stored = m.encode().unwrap();
        assert_eq!(stored.digest, Sha256Digest::of(&stored.cbor));
        let json: serde_json::Value = serde_json::from_str(&stored.json).unwrap();
        assert_eq!(json["schema"], SCHEMA);
        assert_eq!(json["files"][0]["path"], "a/x");
        assert_eq!(json["file_count"], 2);
        assert_eq!(json["total_size"], 3);
        assert_eq!(json["created_at"], "2026-05-15T12:00:00.123Z");
        assert_eq!(
            json["files"][0]["content_address"],
            format!(
                "sha256:{}",
                json["files"][0]["digests"]["sha256"].as_str().unwrap()
            )
        );
        // The CBOR and JSON encode one value: decoding the CBOR with an independent decoder
        // gives the same JSON value.
        let decoded: serde_json::Value = ciborium::from_reader(&stored.cbor[..]).unwrap();
        assert_eq!(decoded, json);
        // And the CBOR decodes back into the manifest itself.
        let back: Manifest = ciborium::from_reader(&stored.cbor[..]).unwrap();
        assert_eq!(back, m);
    }

    /// Checks that every map in a CBOR item has its keys in strictly increasing bytewise order
    /// of their encodings, using ciborium (an independent decoder) to walk the item.
    fn assert_deterministic(bytes: &[u8]) {
        fn check(v: &ciborium::Value) {
            match v {
                ciborium::Value::Map(entries) => {
                    let keys: Vec<Vec<u8>> = entries
                        .iter()
                        .map(|(k, _)| {
                            let mut out = Vec::new();
                            ciborium::into_writer(k, &mut out).unwrap();
                            out
                        })
                        .collect();
                    assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys not in order");
                    entries.iter().for_each(|(_, v)| check(v));
                }
                ciborium::Value::Array(items) => items.iter().for_each(check),
                _ => {}
            }
        }
        let v: ciborium::Value = ciborium::from_reader(bytes).unwrap();
        check(&v);
        // ciborium writes shortest integer heads and definite lengths, so re-encoding the
        // decoded value must give the same bytes.
        let mut again = Vec::new();
        ciborium::into_writer(&v, &mut again).unwrap();
        assert_eq!(again, bytes);
    }

    proptest! {
        #[test]
        fn same_package_in_any_order_is_byte_identical(
            entries in proptest::collection::btree_map(
                "[a-zA-Z0-9_./\u{e9}\u{4e2d}-]{1,24}", 0u64..5_000_000_000, 0..40),
            metadata in proptest::collection::btree_map("[a-z][a-z0-9.]{0,12}", ".{0,16}", 0..8),
            seed in any::<u64>(),
        ) {
            let mut pkg = package();
            pkg.metadata = metadata;
            let files: Vec<FileRecord> = entries.iter().map(|(p, s)| file(p, *s)).collect();
            let mut shuffled = files.clone();
            // A deterministic shuffle driven by the generated seed.
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let at = Timestamp::from_millis(1_778_846_500_000);
            let a = Manifest::new(&pkg, at, files).encode().unwrap();
            let b = Manifest::new(&pkg, at, shuffled).encode().unwrap();
            prop_assert_eq!(&a.cbor, &b.cbor);
            prop_assert_eq!(&a.json, &b.json);
            assert_deterministic(&a.cbor);
            let back: Manifest = ciborium::from_reader(&a.cbor[..]).unwrap();
            prop_assert_eq!(back.files.len(), entries.len());
            let paths: Vec<&String> = back.files.iter().map(|f| &f.path).collect();
            let mut sorted = paths.clone();
            sorted.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
            prop_assert_eq!(paths, sorted);
        }
    }
}
