//! Configuration: the same settings from flags (the local poller) or environment variables
//! (Lambda), and building the consumer from them.

use std::time::Duration;

use edge_documents::redact;
use edge_documents::tables::TableNames;

use crate::handler::Consumer;
use crate::invalidate::cloudfront::CloudFrontTarget;
use crate::invalidate::redis::RedisTarget;
use crate::invalidate::webhook::WebhookTarget;
use crate::invalidate::{Invalidation, Target};
use crate::ledger::DynamoLedger;
use crate::secrets;

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Name of the region this consumer verifies (recorded in its acknowledgements).
    #[arg(long = "region-name", env = "EDGE_REGION")]
    pub region: String,
    /// Prefix of the edge table names.
    #[arg(long, env = "EDGE_TABLE_PREFIX", default_value = "")]
    pub table_prefix: String,
    /// The replication ledger table (default: prefix + flagsmith_edge_replication_acks).
    #[arg(long, env = "EDGE_ACK_TABLE")]
    pub ack_table: Option<String>,
    /// Endpoint of the ledger table, when it is not the default endpoint (local runs: the
    /// home region's DynamoDB).
    #[arg(long, env = "EDGE_ACK_ENDPOINT_URL")]
    pub ack_endpoint_url: Option<String>,
    /// AWS region of the ledger table, when it is not this function's region.
    #[arg(long, env = "EDGE_ACK_AWS_REGION")]
    pub ack_aws_region: Option<String>,

    /// Redis to invalidate (e.g. redis://127.0.0.1:6379, or rediss:// for TLS; a password
    /// may be given as redis://user:password@host). Never logged with its password.
    #[arg(long, env = "EDGE_INVALIDATE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Bound on connecting to Redis (TCP, TLS, authentication), in milliseconds.
    #[arg(
        long,
        env = "EDGE_INVALIDATE_REDIS_CONNECT_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub redis_connect_timeout_ms: u64,
    /// Bound on Redis's answer to a batch's invalidations, in milliseconds.
    #[arg(
        long,
        env = "EDGE_INVALIDATE_REDIS_RESPONSE_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub redis_response_timeout_ms: u64,
    /// Prefix of the Redis keys and channels.
    #[arg(
        long,
        env = "EDGE_INVALIDATE_REDIS_PREFIX",
        default_value = "flagsmith-edge:"
    )]
    pub redis_prefix: String,
    /// Webhook to notify (a signed JSON POST per batch). Logged by its origin only.
    #[arg(long, env = "EDGE_INVALIDATE_WEBHOOK_URL", hide_env_values = true)]
    pub webhook_url: Option<String>,
    /// Secret of the webhook's HMAC-SHA256 signature (or give
    /// EDGE_INVALIDATE_WEBHOOK_SECRET_ARN).
    #[arg(long, env = "EDGE_INVALIDATE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// A Secrets Manager secret (ARN or name) whose SecretString is the webhook's signing
    /// secret, read once at start-up; instead of EDGE_INVALIDATE_WEBHOOK_SECRET.
    #[arg(long, env = "EDGE_INVALIDATE_WEBHOOK_SECRET_ARN")]
    pub webhook_secret_arn: Option<String>,
    /// Timeout of one webhook attempt, in milliseconds.
    #[arg(
        long,
        env = "EDGE_INVALIDATE_WEBHOOK_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub webhook_timeout_ms: u64,
    /// CloudFront distribution to invalidate.
    #[arg(long, env = "EDGE_INVALIDATE_CLOUDFRONT_DISTRIBUTION_ID")]
    pub cloudfront_distribution_id: Option<String>,
    /// Comma-separated path templates ({environment_api_key}, {identifier}, {server_key}).
    #[arg(long, env = "EDGE_INVALIDATE_CLOUDFRONT_PATHS", value_delimiter = ',')]
    pub cloudfront_paths: Vec<String>,
    /// Attempts per invalidation target and batch.
    #[arg(long, env = "EDGE_INVALIDATION_ATTEMPTS", default_value_t = 4)]
    pub invalidation_attempts: usize,
    /// Delay before the second attempt, in milliseconds (doubling, with jitter).
    #[arg(long, env = "EDGE_INVALIDATION_RETRY_MS", default_value_t = 100)]
    pub invalidation_retry_ms: u64,
    /// Flagsmith's core database: identity items written at the edge are ingested into it
    /// (every region's consumer should have it). Unset: edge writes are only skipped.
    #[arg(long, env = "EDGE_INGEST_DATABASE_URL", hide_env_values = true)]
    pub ingest_database_url: Option<String>,
    /// `home`: this consumer reads the home region's streams and ingests every edge write;
    /// `replica`: it ingests only edge writes made in its region that lost last-writer-wins
    /// against the writer before they replicated (see the README's merge rule).
    #[arg(long, env = "EDGE_INGEST_ROLE", value_enum, default_value = "home")]
    pub ingest_role: crate::ingest::Role,
    /// How much the streams round a record's creation time down, in milliseconds: 1000 on
    /// AWS; DynamoDB Local rounds to the minute (60000).
    #[arg(long, env = "EDGE_STREAM_TIME_PRECISION_MS", default_value_t = 1000)]
    pub stream_time_precision_ms: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// The settings alone, for reading them from the environment.
#[derive(clap::Parser)]
struct FromEnv {
    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// The settings from environment variables only (Lambda).
    pub fn from_env() -> Result<Settings, clap::Error> {
        use clap::Parser;
        FromEnv::try_parse_from(["stream-consumer"]).map(|f| f.settings)
    }

    pub fn tables(&self) -> TableNames {
        let mut names = TableNames::with_prefix(&self.table_prefix);
        if let Some(t) = &self.ack_table {
            names.acks = t.clone();
        }
        names
    }

    /// The invalidation targets the settings name (the webhook's secret read from Secrets
    /// Manager when it is given by ARN).
    pub async fn invalidation(
        &self,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Invalidation, ConfigError> {
        let mut targets: Vec<Box<dyn Target>> = Vec::new();
        if let Some(url) = &self.redis_url {
            targets.push(Box::new(
                RedisTarget::new(url, &self.redis_prefix)
                    .map_err(ConfigError)?
                    .with_timeouts(
                        Duration::from_millis(self.redis_connect_timeout_ms),
                        Duration::from_millis(self.redis_response_timeout_ms),
                    ),
            ));
        }
        if let Some(url) = &self.webhook_url {
            let secret = self.webhook_secret(sdk).await?;
            targets.push(Box::new(
                WebhookTarget::new(url, &secret, Duration::from_millis(self.webhook_timeout_ms))
                    .map_err(ConfigError)?,
            ));
        }
        if let Some(id) = &self.cloudfront_distribution_id {
            let client = aws_sdk_cloudfront::Client::new(sdk);
            targets.push(Box::new(
                CloudFrontTarget::new(client, id, self.cloudfront_paths.clone())
                    .map_err(ConfigError)?,
            ));
        }
        Ok(Invalidation::new(
            targets,
            self.invalidation_attempts,
            Duration::from_millis(self.invalidation_retry_ms),
        ))
    }

    /// The webhook's signing secret: given, or read from Secrets Manager (exactly one).
    async fn webhook_secret(&self, sdk: &aws_config::SdkConfig) -> Result<String, ConfigError> {
        match (&self.webhook_secret, &self.webhook_secret_arn) {
            (Some(secret), None) => Ok(secret.clone()),
            (None, Some(arn)) => {
                let client = aws_sdk_secretsmanager::Client::new(sdk);
                secrets::secret_string(&client, arn)
                    .await
                    .map_err(|e| ConfigError(e.to_string()))
            }
            (Some(_), Some(_)) => Err(ConfigError(
                "give one of EDGE_INVALIDATE_WEBHOOK_SECRET and EDGE_INVALIDATE_WEBHOOK_SECRET_ARN, not both"
                    .into(),
            )),
            (None, None) => Err(ConfigError(
                "EDGE_INVALIDATE_WEBHOOK_URL is set but neither EDGE_INVALIDATE_WEBHOOK_SECRET nor EDGE_INVALIDATE_WEBHOOK_SECRET_ARN is"
                    .into(),
            )),
        }
    }

    /// The consumer: its ledger client and invalidation targets.
    pub async fn consumer(
        &self,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Consumer<DynamoLedger>, ConfigError> {
        let mut ledger_config = aws_sdk_dynamodb::config::Builder::from(sdk);
        if let Some(url) = &self.ack_endpoint_url {
            ledger_config = ledger_config.endpoint_url(url);
        }
        if let Some(region) = &self.ack_aws_region {
            ledger_config = ledger_config.region(aws_config::Region::new(region.clone()));
        }
        let ledger = DynamoLedger::new(
            aws_sdk_dynamodb::Client::from_conf(ledger_config.build()),
            self.tables().acks,
        );
        let consumer = Consumer::new(self.region.clone(), ledger, self.invalidation(sdk).await?);
        Ok(match &self.ingest_database_url {
            Some(url) => consumer.with_ingestion(
                crate::ingest::Ingestion::connect_lazy(url, self.ingest_role)
                    .map_err(|e| {
                        ConfigError(format!(
                            "EDGE_INGEST_DATABASE_URL {}: {e}",
                            redact::url(url)
                        ))
                    })?
                    .with_time_precision(Duration::from_millis(self.stream_time_precision_ms)),
            ),
            None => consumer,
        })
    }
}

/// The AWS SDK configuration: hyper 1 with rustls on ring, bounded timeouts and retries.
/// `endpoint` overrides `AWS_ENDPOINT_URL` when given.
pub async fn sdk_config(endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = loader();
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// The SDK config loader behind [`sdk_config`], for callers that set more (tests).
pub fn loader() -> aws_config::ConfigLoader {
    use aws_config::timeout::TimeoutConfig;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(20))
                .build(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        use clap::Parser;
        let mut argv = vec!["stream-consumer", "--region-name", "r"];
        argv.extend_from_slice(args);
        FromEnv::try_parse_from(argv).unwrap().settings
    }

    async fn refused(args: &[&str]) -> String {
        let sdk = aws_config::SdkConfig::builder().build();
        let settings = settings(args);
        settings.invalidation(&sdk).await.err().expect("refused").0
    }

    #[tokio::test]
    async fn a_webhook_takes_exactly_one_kind_of_secret() {
        let url = "http://127.0.0.1:1/hook";
        let err = refused;
        let neither = err(&["--webhook-url", url]).await;
        assert!(
            neither.contains("EDGE_INVALIDATE_WEBHOOK_SECRET_ARN"),
            "{neither}"
        );
        let both = err(&[
            "--webhook-url",
            url,
            "--webhook-secret",
            "s3cret",
            "--webhook-secret-arn",
            "arn:aws:secretsmanager:eu-west-2:000000000000:secret:x",
        ])
        .await;
        assert!(both.contains("not both"), "{both}");
        assert!(!both.contains("s3cret"), "{both}");
    }
}
