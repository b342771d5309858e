//! The content hash of a document.
//!
//! The writer records it on every item; the stream consumer recomputes it from the replicated
//! item. It must therefore be invariant under everything DynamoDB does to a value on the way:
//! map keys come back in any order, and numbers come back as decimal strings (`50.0` is
//! stored as `50`). So the hash is SHA-256 over a canonical JSON text: object keys sorted,
//! no whitespace, integral numbers written as integers, other numbers in their shortest
//! round-trip form.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Prefix of every hash, so that the algorithm can change without ambiguity.
pub const HASH_PREFIX: &str = "sha256:";

/// Hash of a logical document (an item without its replication attributes, decompressed).
pub fn content_hash(document: &Value) -> String {
    let mut text = Vec::with_capacity(4096);
    write_canonical(document, &mut text);
    hash_of_canonical(&text)
}

/// Canonical JSON text (see the module docs).
pub fn canonical_json(value: &Value) -> String {
    let mut text = Vec::new();
    write_canonical(value, &mut text);
    String::from_utf8(text).expect("canonical JSON is UTF-8")
}

/// The content hash of a canonical JSON text.
pub(crate) fn hash_of_canonical(text: &[u8]) -> String {
    let digest = Sha256::digest(text);
    let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
    out.push_str(HASH_PREFIX);
    out.push_str(&hex::encode(digest));
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(key, out);
                out.push(b':');
                write_canonical(&map[key], out);
            }
            out.push(b'}');
        }
    }
}

/// A JSON string, escaped as serde_json escapes it.
pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) {
    if let Some(i) = n.as_i64() {
        write_i64(i, out);
    } else if let Some(u) = n.as_u64() {
        write_u64(u, out);
    } else if let Some(f) = n.as_f64() {
        write_f64(f, out);
    }
}

pub(crate) fn write_i64(i: i64, out: &mut Vec<u8>) {
    use std::io::Write;
    write!(out, "{i}").expect("writing to a Vec cannot fail");
}

pub(crate) fn write_u64(u: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    write!(out, "{u}").expect("writing to a Vec cannot fail");
}

/// A finite float: integral ones below 2^53 as integers, others in their shortest
/// round-trip form.
pub(crate) fn write_f64(f: f64, out: &mut Vec<u8>) {
    use std::io::Write;
    // 2^53: beyond it not every integer is representable, keep the float form.
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        write_i64(f as i64, out);
    } else {
        write!(out, "{f}").expect("writing to a Vec cannot fail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_integral_floats_do_not_change_the_hash() {
        let a = json!({"b": 50.0, "a": [1, {"y": 2, "x": "s"}], "c": 33.25});
        let b = json!({"a": [1, {"x": "s", "y": 2}], "c": 33.25, "b": 50});
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"a":[1,{"x":"s","y":2}],"b":50,"c":33.25}"#
        );
    }

    #[test]
    fn different_content_gives_a_different_hash() {
        assert_ne!(
            content_hash(&json!({"enabled": true})),
            content_hash(&json!({"enabled": false}))
        );
        assert!(content_hash(&json!(null)).starts_with(HASH_PREFIX));
    }
}
