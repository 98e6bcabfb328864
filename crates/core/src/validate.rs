//! Validation of every client-supplied field, reporting all failures at once by field name.

use std::collections::BTreeMap;

use crate::error::FieldError;
use crate::limits::*;
use crate::model::PackageQuery;

/// Collects field errors so a request reports every problem in one answer.
#[derive(Debug, Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn check(&mut self, field: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.push(field, message);
        }
    }

    pub fn into_result(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

fn is_cc(c: char) -> bool {
    // Unicode general category Cc is exactly these two ranges.
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// A file path in a package: relative, `/`-separated, at most [`MAX_PATH_BYTES`], no empty,
/// `.` or `..` segment, no backslash and no control character.
pub fn path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("must not be empty".into());
    }
    if p.len() > MAX_PATH_BYTES {
        return Err(format!(
            "must be at most {MAX_PATH_BYTES} bytes, got {}",
            p.len()
        ));
    }
    if p.starts_with('/') {
        return Err("must be relative (no leading '/')".into());
    }
    if p.contains('\\') {
        return Err("must not contain a backslash".into());
    }
    if let Some(c) = p.chars().find(|&c| is_cc(c)) {
        return Err(format!(
            "must not contain control character U+{:04X}",
            c as u32
        ));
    }
    for segment in p.split('/') {
        match segment {
            "" => return Err("must not contain an empty segment".into()),
            "." | ".." => return Err(format!("must not contain a '{segment}' segment")),
            _ => {}
        }
    }
    Ok(())
}

/// Free text such as `producer` and `subject`: 1 to `max` bytes, no control character.
pub fn label(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > max {
        return Err(format!("must be at most {max} bytes, got {}", value.len()));
    }
    if value.chars().any(is_cc) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// `[a-z0-9][a-z0-9_-]{0,63}`: retention classes and tenant names.
pub fn slug(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_CLASS_BYTES
        && matches!(bytes[0], b'a'..=b'z' | b'0'..=b'9')
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err("must match [a-z0-9][a-z0-9_-]{0,63}".into())
    }
}

/// The OCI name syntax, at most [`MAX_REPOSITORY_BYTES`]: components of
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`.
pub fn repository(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_REPOSITORY_BYTES
        && value.split('/').all(name_component);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)* \
             and be at most {MAX_REPOSITORY_BYTES} bytes"
        ))
    }
}

/// One component of an OCI name: alphanumeric runs separated by `.`, `_`, `__` or `-+`.
pub fn name_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    let alnum = |b: &u8| matches!(b, b'a'..=b'z' | b'0'..=b'9');
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(&bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let ok = match &bytes[sep..i] {
            b"." | b"_" | b"__" => true,
            dashes => dashes.iter().all(|b| *b == b'-'),
        };
        if !ok {
            return false;
        }
    }
}

/// The OCI tag syntax: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn tag(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_TAG_BYTES
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
    if ok {
        Ok(())
    } else {
        Err("must match [A-Za-z0-9_][A-Za-z0-9._-]{0,127}".into())
    }
}

/// A metadata key: `[A-Za-z0-9][A-Za-z0-9._:/-]*`, at most [`MAX_METADATA_KEY_BYTES`]. The
/// alphabet keeps keys usable in `metadata.KEY=VALUE` query parameters without escaping.
pub fn metadata_key(key: &str) -> Result<(), String> {
    let bytes = key.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_METADATA_KEY_BYTES
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key {key:?} must match [A-Za-z0-9][A-Za-z0-9._:/-]* and be at most \
             {MAX_METADATA_KEY_BYTES} bytes"
        ))
    }
}

/// No U+0000: no store can hold it in text (PostgreSQL refuses it), and no filter could match it.
pub fn no_nul(value: &str) -> Result<(), String> {
    if value.contains('\0') {
        Err("must not contain U+0000 (NUL)".into())
    } else {
        Ok(())
    }
}

/// The filters of a package listing: at most [`MAX_LIST_FILTERS`] metadata ones, keys as
/// stored keys are, no NUL anywhere.
pub fn package_query(q: &PackageQuery) -> Result<(), Vec<FieldError>> {
    let mut errors = Errors::new();
    let filters = q.metadata.len() + q.has_metadata.len();
    if filters > MAX_LIST_FILTERS {
        errors.push(
            "metadata",
            format!(
                "at most {MAX_LIST_FILTERS} metadata.KEY and has_metadata filters together, got \
                 {filters}"
            ),
        );
    }
    for (field, value) in [
        ("producer", &q.producer),
        ("subject", &q.subject),
        ("retention_class", &q.retention_class),
    ] {
        if let Some(value) = value {
            errors.check(field, no_nul(value));
        }
    }
    for (key, value) in &q.metadata {
        errors.check("metadata", metadata_key(key).and_then(|()| no_nul(value)));
    }
    for key in &q.has_metadata {
        errors.check("has_metadata", metadata_key(key));
    }
    errors.into_result()
}

/// The metadata map: entry count, key syntax, value size, total size.
pub fn metadata(map: &BTreeMap<String, String>) -> Result<(), String> {
    if map.len() > MAX_METADATA_ENTRIES {
        return Err(format!(
            "at most {MAX_METADATA_ENTRIES} entries, got {}",
            map.len()
        ));
    }
    let mut total = 0;
    for (key, value) in map {
        metadata_key(key)?;
        no_nul(value).map_err(|e| format!("value of {key:?} {e}"))?;
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(format!(
                "value of {key:?} must be at most {MAX_METADATA_VALUE_BYTES} bytes, got {}",
                value.len()
            ));
        }
        total += key.len() + value.len();
    }
    if total > MAX_METADATA_TOTAL_BYTES {
        return Err(format!(
            "keys and values must total at most {MAX_METADATA_TOTAL_BYTES} bytes, got {total}"
        ));
    }
    Ok(())
}

/// A media type `type/subtype` with optional parameters: printable ASCII, at most
/// [`MAX_MEDIA_TYPE_BYTES`].
pub fn media_type(value: &str) -> Result<(), String> {
    let essence = value.split(';').next().unwrap_or("").trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let well_formed = match essence.split_once('/') {
        Some((t, s)) => token(t) && token(s),
        None => false,
    };
    if value.len() > MAX_MEDIA_TYPE_BYTES {
        return Err(format!("must be at most {MAX_MEDIA_TYPE_BYTES} bytes"));
    }
    if !well_formed || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("must be a media type such as application/octet-stream".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names_and_tags_both_sides() {
        for ok in [
            "a", "app", "acme/app", "a.b", "a_b", "a__b", "a---b", "x/y/z9", "0",
        ] {
            assert_eq!(repository(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(MAX_REPOSITORY_BYTES + 1);
        for bad in [
            "", "A", "a/", "/a", "a//b", "a.", ".a", "a._b", "a___b", "a-", "a b", &long,
        ] {
            assert!(repository(bad).is_err(), "{bad:?}");
        }
        for ok in [
            "latest",
            "v1.2.3",
            "_x",
            "A-b_c.d",
            "pkg_01J0000000000000000000000",
        ] {
            assert_eq!(tag(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(MAX_TAG_BYTES + 1);
        for bad in ["", ".x", "-x", "a/b", "a:b", "é", &long] {
            assert!(tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn path_rules_both_sides() {
        for ok in [
            "a",
            "bin/app",
            "a/b/c.txt",
            "ünïcode/файл",
            "..a",
            "a..",
            ".hidden",
            "a/.b",
        ] {
            assert_eq!(path(ok), Ok(()), "{ok}");
        }
        let bad = [
            "",
            "/abs",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "../a",
            "a/..",
            "a\\b",
            "a\u{0}b",
            "tab\there",
            "del\u{7f}",
            "c1\u{85}",
            "c1\u{9f}",
        ];
        for p in bad {
            assert!(path(p).is_err(), "{p:?} should be rejected");
        }
        assert_eq!(path("\u{a0}nbsp"), Ok(()), "U+00A0 is not Cc");
        assert_eq!(path(&"a".repeat(MAX_PATH_BYTES)), Ok(()));
        assert!(path(&"a".repeat(MAX_PATH_BYTES + 1)).is_err());
        // The limit counts bytes, not characters.
        let two_byte = "é".repeat(MAX_PATH_BYTES / 2);
        assert_eq!(path(&two_byte), Ok(()));
        assert!(path(&format!("{two_byte}a")).is_err());
    }

    #[test]
    fn labels_both_sides() {
        assert_eq!(label("ci/build-42", MAX_PRODUCER_BYTES), Ok(()));
        assert_eq!(
            label(&"x".repeat(MAX_PRODUCER_BYTES), MAX_PRODUCER_BYTES),
            Ok(())
        );
        assert!(label(&"x".repeat(MAX_PRODUCER_BYTES + 1), MAX_PRODUCER_BYTES).is_err());
        assert!(label("", MAX_PRODUCER_BYTES).is_err());
        assert!(label("a\nb", MAX_PRODUCER_BYTES).is_err());
    }

    #[test]
    fn slug_both_sides() {
        for ok in ["standard", "a", "0", "long-term_2", &"a".repeat(64)] {
            assert_eq!(slug(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a b", "a.b", &"a".repeat(65), "é"] {
            assert!(slug(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_both_sides() {
        let mut m = BTreeMap::new();
        m.insert("git.sha".to_string(), "abc".to_string());
        assert_eq!(metadata(&m), Ok(()));
        m.insert("bad key".into(), "x".into());
        assert!(metadata(&m).is_err());

        let full: BTreeMap<_, _> = (0..MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert_eq!(metadata(&full), Ok(()));
        let mut over = full.clone();
        over.insert("one-more".into(), "v".into());
        assert!(metadata(&over).is_err());

        let key_max: BTreeMap<_, _> = [("k".repeat(MAX_METADATA_KEY_BYTES), String::new())]
            .into_iter()
            .collect();
        assert_eq!(metadata(&key_max), Ok(()));
        let key_over: BTreeMap<_, _> = [("k".repeat(MAX_METADATA_KEY_BYTES + 1), String::new())]
            .into_iter()
            .collect();
        assert!(metadata(&key_over).is_err());

        let val_max: BTreeMap<_, _> = [("k".to_string(), "v".repeat(MAX_METADATA_VALUE_BYTES))]
            .into_iter()
            .collect();
        assert_eq!(metadata(&val_max), Ok(()));
        let val_over: BTreeMap<_, _> =
            [("k".to_string(), "v".repeat(MAX_METADATA_VALUE_BYTES + 1))]
                .into_iter()
                .collect();
        assert!(metadata(&val_over).is_err());

        // 16 entries of 1 KiB values (plus keys) cross the 16 KiB total, 15 do not.
        let sized = |n: usize| -> BTreeMap<String, String> {
            (0..n)
                .map(|i| (format!("k{i:02}"), "v".repeat(1020)))
                .collect()
        };
        assert_eq!(metadata(&sized(15)), Ok(()));
        assert!(metadata(&sized(17)).is_err());
        let exact: BTreeMap<_, _> = (0..16)
            .map(|i| (format!("k{i:02}"), "v".repeat(1024 - 3)))
            .collect();
        assert_eq!(
            exact.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(),
            16 * 1024
        );
        assert_eq!(metadata(&exact), Ok(()));
        let mut over_total = exact.clone();
        over_total.insert("x".into(), String::new());
        assert!(metadata(&over_total).is_err());
    }

    #[test]
    fn media_type_both_sides() {
        for ok in [
            "application/octet-stream",
            "text/plain; charset=utf-8",
            "application/vnd.a+json",
        ] {
            assert_eq!(media_type(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "text",
            "/plain",
            "text/",
            "text/pl ain",
            "tëxt/plain",
            "a/b\n",
        ] {
            assert!(media_type(bad).is_err(), "{bad:?}");
        }
        let max = format!("a/{}", "b".repeat(MAX_MEDIA_TYPE_BYTES - 2));
        assert_eq!(media_type(&max), Ok(()));
        assert!(media_type(&format!("{max}b")).is_err());
    }
}
