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
    let mut text = String::with_capacity(4096);
    write_canonical(document, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    format!("{HASH_PREFIX}{}", hex::encode(digest))
}

/// Canonical JSON text (see the module docs).
pub fn canonical_json(value: &Value) -> String {
    let mut text = String::new();
    write_canonical(value, &mut text);
    text
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
    }
}

fn write_number(n: &serde_json::Number, out: &mut String) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(f) = n.as_f64() {
        // 2^53: beyond it not every integer is representable, keep the float form.
        if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
            out.push_str(&(f as i64).to_string());
        } else {
            out.push_str(&f.to_string());
        }
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
