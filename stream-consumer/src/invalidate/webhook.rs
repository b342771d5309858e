//! An HTTP webhook: one signed JSON POST per batch.
//!
//! Body: `{"region": ..., "sent_at": <unix ms>, "changes": [Change, ...]}`. Header
//! `X-Flagsmith-Edge-Signature: sha256=<hex HMAC-SHA256 of the body with the shared secret>`
//! (the body carries `sent_at`, so a receiver can refuse replays). Every attempt has a
//! timeout; connection errors, timeouts, 429 and 5xx are retried, other statuses are not.

use std::time::Duration;

use edge_documents::redact;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Change, InvalidateError, Target};

pub const SIGNATURE_HEADER: &str = "X-Flagsmith-Edge-Signature";

pub struct WebhookTarget {
    client: reqwest::Client,
    url: String,
    /// The URL as messages show it: its origin only (the path may be a token).
    shown: String,
    secret: Vec<u8>,
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookTarget {
    pub fn new(url: &str, secret: &str, timeout: Duration) -> Result<Self, String> {
        if secret.is_empty() {
            return Err("a webhook needs a signing secret".into());
        }
        let shown = redact::origin(url);
        reqwest::Url::parse(url).map_err(|e| format!("webhook URL {shown}: {e}"))?;
        // reqwest is built without a default crypto provider; ring is the one the AWS
        // clients use too. Installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(WebhookTarget {
            client,
            url: url.to_string(),
            shown,
            secret: secret.as_bytes().to_vec(),
        })
    }

    async fn send(&self, region: &str, changes: &[Change]) -> Result<(), InvalidateError> {
        let body = serde_json::json!({
            "region": region,
            "sent_at": chrono::Utc::now().timestamp_millis(),
            "changes": changes,
        })
        .to_string();
        let fail = |message: String, retryable| InvalidateError {
            target: "webhook",
            message,
            retryable,
        };
        let response = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header(SIGNATURE_HEADER, signature(&self.secret, body.as_bytes()))
            .body(body)
            .send()
            .await
            // reqwest's errors carry the whole URL: left out.
            .map_err(|e| fail(format!("POST {}: {}", self.shown, e.without_url()), true))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retryable = status.is_server_error() || status.as_u16() == 429;
        Err(fail(
            format!("POST {} answered {status}", self.shown),
            retryable,
        ))
    }
}

impl Target for WebhookTarget {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn invalidate<'a>(
        &'a self,
        region: &'a str,
        changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), InvalidateError>> {
        Box::pin(self.send(region, changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_rfc4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn configuration_errors_are_clear() {
        let t = Duration::from_secs(1);
        let err = WebhookTarget::new("https://hooks.example.com:99999/T0/s3cret", "s", t)
            .err()
            .unwrap();
        assert!(
            err.contains("webhook URL https://hooks.example.com:99999/…"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        assert!(WebhookTarget::new("http://x", "", t)
            .err()
            .unwrap()
            .contains("secret"));
    }

    #[tokio::test]
    async fn failures_show_the_origin_only() {
        // A port that was free a moment ago: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/hooks/s3cret-path?token=s3cret-query");
        let target = WebhookTarget::new(&url, "s", Duration::from_secs(2)).unwrap();
        let change = Change {
            table: "environments",
            doc_key: "environment:1".into(),
            version: 1,
            environment_api_key: Some("env".into()),
            identifier: None,
            server_key: None,
            removed: false,
        };
        let err = target.invalidate("r", &[change]).await.unwrap_err();
        assert!(err.retryable);
        let shown = format!("POST http://127.0.0.1:{port}/…: ");
        assert!(err.message.starts_with(&shown), "{}", err.message);
        assert!(!err.message.contains("s3cret"), "{}", err.message);
    }
}
