//! CloudFront: one CreateInvalidation per batch, with the paths of the configured templates.
//!
//! Templates may use `{environment_api_key}`, `{identifier}` and `{server_key}`; a template
//! whose placeholders a change cannot fill is skipped for that change. CloudFront caches of
//! Flagsmith's edge API are usually keyed by header, not path, so a template without
//! placeholders (e.g. `/api/v1/flags/*`) invalidates everything on any change.

use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};
use aws_smithy_types::error::display::DisplayErrorContext;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::{Change, InvalidateError, Target};

/// CloudFront's limit on paths per invalidation (with wildcards).
const MAX_PATHS: usize = 15;

pub struct CloudFrontTarget {
    client: aws_sdk_cloudfront::Client,
    distribution_id: String,
    templates: Vec<String>,
}

/// The paths of a batch: every template filled for every change, deduplicated, sorted. More
/// than CloudFront takes at once becomes the templates with `*` in place of placeholders.
pub fn paths(templates: &[String], changes: &[Change]) -> Vec<String> {
    let mut out: Vec<String> = changes
        .iter()
        .flat_map(|c| templates.iter().filter_map(move |t| fill(t, c)))
        .collect();
    out.sort();
    out.dedup();
    if out.len() > MAX_PATHS {
        out = templates.iter().map(|t| widen(t)).collect();
        out.sort();
        out.dedup();
    }
    out
}

fn fill(template: &str, change: &Change) -> Option<String> {
    let mut path = template.to_string();
    for (name, value) in [
        ("{environment_api_key}", &change.environment_api_key),
        ("{identifier}", &change.identifier),
        ("{server_key}", &change.server_key),
    ] {
        if path.contains(name) {
            path = path.replace(name, &escape(value.as_deref()?));
        }
    }
    Some(path)
}

/// A value percent-encoded for one path segment: everything but RFC 3986's unreserved
/// characters, so an identifier `*` or `a/*` invalidates that identity's path only, never a
/// wildcard or another segment.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The template with everything from its first placeholder on replaced by `*`.
fn widen(template: &str) -> String {
    match template.find('{') {
        Some(i) => format!("{}*", &template[..i]),
        None => template.to_string(),
    }
}

impl CloudFrontTarget {
    pub fn new(
        client: aws_sdk_cloudfront::Client,
        distribution_id: &str,
        templates: Vec<String>,
    ) -> Result<Self, String> {
        if templates.is_empty() || templates.iter().any(|t| !t.starts_with('/')) {
            return Err(format!(
                "CloudFront path templates must be given and start with '/': {templates:?}"
            ));
        }
        Ok(CloudFrontTarget {
            client,
            distribution_id: distribution_id.to_string(),
            templates,
        })
    }

    async fn send(&self, changes: &[Change]) -> Result<(), InvalidateError> {
        let paths = paths(&self.templates, changes);
        if paths.is_empty() {
            return Ok(());
        }
        let fail = |message: String, retryable| InvalidateError {
            target: "cloudfront",
            message,
            retryable,
        };
        // The same batch gets the same reference, so a retried request is not a second
        // invalidation.
        let reference = {
            let mut h = Sha256::new();
            for c in changes {
                h.update(format!("{}:{}|", c.doc_key, c.version));
            }
            hex::encode(&h.finalize()[..16])
        };
        let batch = InvalidationBatch::builder()
            .caller_reference(reference)
            .paths(
                Paths::builder()
                    .quantity(paths.len() as i32)
                    .set_items(Some(paths))
                    .build()
                    .map_err(|e| fail(e.to_string(), false))?,
            )
            .build()
            .map_err(|e| fail(e.to_string(), false))?;
        self.client
            .create_invalidation()
            .distribution_id(&self.distribution_id)
            .invalidation_batch(batch)
            .send()
            .await
            .map_err(|e| {
                fail(
                    format!(
                        "CreateInvalidation on {}: {}",
                        self.distribution_id,
                        DisplayErrorContext(e)
                    ),
                    true,
                )
            })?;
        Ok(())
    }
}

impl Target for CloudFrontTarget {
    fn name(&self) -> &'static str {
        "cloudfront"
    }

    fn invalidate<'a>(
        &'a self,
        _region: &'a str,
        changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), InvalidateError>> {
        Box::pin(self.send(changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(env: &str, identifier: Option<&str>) -> Change {
        Change {
            table: "identities",
            doc_key: "identity:1".into(),
            version: 1,
            environment_api_key: Some(env.into()),
            identifier: identifier.map(Into::into),
            server_key: None,
            removed: false,
        }
    }

    #[test]
    fn paths_are_filled_deduplicated_and_widened_past_the_limit() {
        let templates = vec![
            "/env/{environment_api_key}/*".to_string(),
            "/id/{environment_api_key}/{identifier}".to_string(),
        ];
        assert_eq!(
            paths(&templates, &[change("a", None), change("a", Some("x"))]),
            vec!["/env/a/*", "/id/a/x"]
        );
        // Identifiers are values, never wildcards or more segments.
        assert_eq!(
            paths(
                &templates[1..],
                &[change("a", Some("*")), change("a", Some("x/*é"))]
            ),
            vec!["/id/a/%2A", "/id/a/x%2F%2A%C3%A9"]
        );
        let many: Vec<Change> = (0..20).map(|i| change(&format!("e{i}"), None)).collect();
        assert_eq!(paths(&templates, &many), vec!["/env/*", "/id/*"]);
    }
}
