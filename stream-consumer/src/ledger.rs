//! Where acknowledgements go and delete intents come from: the replication ledger of
//! `edge_documents::acks`, behind a small trait so that the handler is testable without I/O.

use std::future::Future;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::error::display::DisplayErrorContext;
use edge_documents::acks::{self, Ack};

#[derive(Debug, Clone, thiserror::Error)]
#[error("replication ledger {table}: {op}: {message}")]
pub struct LedgerError {
    pub table: String,
    pub op: &'static str,
    pub message: String,
}

pub trait Ledger: Send + Sync + 'static {
    /// Records an acknowledgement unless a newer one of the same item and region exists.
    fn acknowledge(&self, ack: &Ack) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// The writer's newest delete intent for an item.
    fn delete_intent(
        &self,
        item_key: &str,
    ) -> impl Future<Output = Result<Option<Ack>, LedgerError>> + Send;
}

/// The ledger table in DynamoDB.
#[derive(Clone, Debug)]
pub struct DynamoLedger {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoLedger {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoLedger {
            client,
            table: table.into(),
        }
    }

    fn err<E: std::error::Error + 'static>(&self, op: &'static str, e: E) -> LedgerError {
        LedgerError {
            table: self.table.clone(),
            op,
            message: DisplayErrorContext(e).to_string(),
        }
    }
}

impl Ledger for DynamoLedger {
    async fn acknowledge(&self, ack: &Ack) -> Result<(), LedgerError> {
        let result = acks::put_newer(&self.client, &self.table, ack).send().await;
        match result {
            Ok(_) => Ok(()),
            // A newer acknowledgement is already there: this record was redelivered.
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(())
            }
            Err(e) => Err(self.err("PutItem", e)),
        }
    }

    async fn delete_intent(&self, item_key: &str) -> Result<Option<Ack>, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("item_key", AttributeValue::S(item_key.to_string()))
            .key("region", AttributeValue::S(acks::DELETE_INTENT.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.err("GetItem", e))?;
        Ok(out.item().and_then(Ack::from_item))
    }
}
