//! The Lambda side: a DynamoDB Streams event in, partial batch failures out.

use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use edge_documents::tables::TableNames;
use serde_json::Value;

use crate::handler::{BatchReport, Consumer};
use crate::ledger::Ledger;
use crate::record;

/// Handles one Lambda event; the response names the first failed record, if any.
pub async fn handle_event<L: Ledger>(
    consumer: &Consumer<L>,
    tables: &TableNames,
    payload: &Value,
) -> (DynamoDbEventResponse, BatchReport) {
    let records = payload["Records"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    // Decoded one by one as the handler takes them.
    let decoded = records.iter().map(|r| record::from_lambda(r, tables));
    let report = consumer.handle(decoded).await;
    let mut response = DynamoDbEventResponse::default();
    if let Some((sequence, _)) = &report.failure {
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = Some(sequence.clone());
        response.batch_item_failures.push(failure);
    }
    (response, report)
}
