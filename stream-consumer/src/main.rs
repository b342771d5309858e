//! `stream-consumer`: the Lambda on the edge tables' DynamoDB streams.
//!
//! Three layers, as in the aws-lambda-rust-runtime examples: [`stream_consumer::handle_record`]
//! per record, [`stream_consumer::handle_batch`] per batch (partial batch failures), and
//! `main`, which sets up logging once and runs the Lambda runtime loop.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .without_time()
        .init();
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<_, Error>(stream_consumer::handle_batch(&event.payload))
    }))
    .await
}
