//! Building the DynamoDB client.
//!
//! Endpoint, region and credentials follow the AWS SDK's conventions (`AWS_ENDPOINT_URL`,
//! `AWS_REGION`, the default credential chain); nothing local is hard-wired. The HTTP client
//! is hyper 1 with rustls on ring (the SDK's default feature set would also pull the legacy
//! hyper 0.14 / rustls 0.21 stack). Timeouts bound every call so that a writer never has a
//! write in flight for longer than [`OPERATION_TIMEOUT`]; the writer's delete re-check relies
//! on that bound.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_smithy_http_client::tls;

/// Upper bound of one DynamoDB operation, retries included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The SDK config loader with our HTTP client, timeouts and retries.
fn loader() -> aws_config::ConfigLoader {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3))
}

/// A DynamoDB client. `endpoint` overrides `AWS_ENDPOINT_URL` when given.
pub async fn dynamodb(endpoint: Option<&str>) -> aws_sdk_dynamodb::Client {
    let mut loader = loader();
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    aws_sdk_dynamodb::Client::new(&loader.load().await)
}

/// A client for another AWS region, at the SDK's endpoint for it.
pub async fn dynamodb_in_region(region: &str) -> aws_sdk_dynamodb::Client {
    let config = loader()
        .region(aws_config::Region::new(region.to_string()))
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

/// A client with a fixed region and static credentials: for DynamoDB Local (which keeps a
/// separate database per access key and region unless started with `-sharedDb`) and tests.
pub async fn with_static_credentials(
    endpoint: &str,
    region: &str,
    access_key_id: &str,
    secret_access_key: &str,
) -> aws_sdk_dynamodb::Client {
    let config = loader()
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(region.to_string()))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "static",
        ))
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}
