//! [`ItemStore`] on DynamoDB: conditional PutItem / DeleteItem with the replication version.

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, PutRequest, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
    WriteRequest,
};
use aws_smithy_types::error::display::DisplayErrorContext;
use edge_documents::acks;
use edge_documents::item::{Item, ATTR_DOC, ATTR_VERSION};
use edge_documents::tables::{TableKind, TableNames};

use super::{
    BatchPutError, Guard, GuardedPut, ItemStore, StoreError, TransactOutcome, WriteOutcome,
};

/// [`Guard::Version`]: put only over an older version, an item that carries no version, or
/// nothing.
const PUT_CONDITION: &str = "attribute_not_exists(#v) OR #v < :v";
/// [`Guard::Version`]: delete only our own item, and only if it is older than the deleting
/// version (or an item without a version).
const DELETE_CONDITION: &str = "attribute_not_exists(#v) OR (#d = :d AND #v < :v)";
/// [`Guard::Owned`], puts and deletes: nothing there, or this document's own older item.
const OWNED_CONDITION: &str = "attribute_not_exists(#k) OR (#d = :d AND #v < :v)";

/// The condition, names and values of a guarded write.
struct Condition {
    expression: String,
    names: Vec<(String, String)>,
    values: Vec<(String, AttributeValue)>,
}

impl Condition {
    /// The names the expression uses (DynamoDB refuses unused ones).
    fn used_names(&self) -> HashMap<String, String> {
        self.names
            .iter()
            .filter(|(k, _)| self.uses(k))
            .cloned()
            .collect()
    }

    fn used_values(&self) -> HashMap<String, AttributeValue> {
        self.values
            .iter()
            .filter(|(k, _)| self.uses(k))
            .cloned()
            .collect()
    }

    fn uses(&self, placeholder: &str) -> bool {
        self.expression
            .split(|c: char| !(c.is_alphanumeric() || c == '#' || c == ':' || c == '_'))
            .any(|token| token == placeholder)
    }
}

fn condition(
    guard: &Guard,
    key_attr: &str,
    doc_key: &str,
    version: i64,
    version_rule: &str,
) -> Condition {
    let v = (":v".to_string(), AttributeValue::N(version.to_string()));
    let d = (":d".to_string(), AttributeValue::S(doc_key.to_string()));
    let names = |extra: &[(&str, &str)]| {
        extra
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    match guard {
        Guard::Version => Condition {
            expression: version_rule.to_string(),
            names: names(&[("#v", ATTR_VERSION), ("#d", ATTR_DOC)]),
            values: vec![v, d],
        },
        Guard::Owned => Condition {
            expression: OWNED_CONDITION.to_string(),
            names: names(&[("#k", key_attr), ("#v", ATTR_VERSION), ("#d", ATTR_DOC)]),
            values: vec![v, d],
        },
        Guard::Adopt(foreign) => {
            let mut attrs: Vec<(&String, &AttributeValue)> = foreign.iter().collect();
            attrs.sort_by(|a, b| a.0.cmp(b.0));
            let mut parts = vec!["attribute_not_exists(#v)".to_string()];
            let mut names = names(&[("#v", ATTR_VERSION)]);
            let mut values = Vec::new();
            for (i, (name, value)) in attrs.into_iter().enumerate() {
                parts.push(format!("#a{i} = :a{i}"));
                names.push((format!("#a{i}"), name.clone()));
                values.push((format!(":a{i}"), value.clone()));
            }
            Condition {
                expression: parts.join(" AND "),
                names,
                values,
            }
        }
    }
}

/// What a failed condition found.
fn refused(guard: &Guard, old: Option<&Item>) -> WriteOutcome {
    match (guard, old) {
        (Guard::Version, _) => WriteOutcome::Superseded {
            stored_version: stored_version(old),
        },
        (_, Some(item)) if item.contains_key(ATTR_VERSION) => WriteOutcome::Superseded {
            stored_version: stored_version(old),
        },
        (_, item) => WriteOutcome::Foreign {
            item: item.map(|i| Box::new(i.clone())),
        },
    }
}

/// Retries of the unprocessed items of one BatchWriteItem before the call fails.
const BATCH_MAX_RETRIES: u32 = 12;
/// Retries of a BatchWriteItem refused whole (throttled, a server error) or not sent (a
/// refused connection) before the call fails: the SDK's standard count.
const BATCH_MAX_ERROR_RETRIES: u32 = 2;

#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    tables: TableNames,
}

impl DynamoStore {
    /// Records in the replication ledger that the writer is about to delete an item at
    /// `version`, so that the stream consumers can tell this removal from one made behind the
    /// writer's back. Conditional: an older intent never replaces a newer one.
    async fn record_delete_intent(
        &self,
        table: TableKind,
        key: &Item,
        doc_key: &str,
        version: i64,
    ) -> Result<(), StoreError> {
        let Some(item_key) = acks::item_key(table, key) else {
            return Err(StoreError {
                op: "DeleteItem",
                table: self.tables.name(table).to_string(),
                message: format!("item key {key:?} does not match the table's key schema"),
                retryable: false,
            });
        };
        let now = chrono::Utc::now();
        let intent = acks::Ack {
            item_key,
            region: acks::DELETE_INTENT.to_string(),
            version,
            doc_key: doc_key.to_string(),
            hash: String::new(),
            removed: true,
            source_time: now.to_rfc3339(),
            recorded_at_ms: now.timestamp_millis(),
            lag_ms: None,
        };
        let result = acks::put_newer(&self.client, &self.tables.acks, &intent)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(())
            }
            Err(e) => Err(classify("PutItem", &self.tables.acks, e)),
        }
    }

    pub fn new(client: aws_sdk_dynamodb::Client, tables: TableNames) -> Self {
        DynamoStore { client, tables }
    }

    pub fn client(&self) -> &aws_sdk_dynamodb::Client {
        &self.client
    }

    pub fn tables(&self) -> &TableNames {
        &self.tables
    }
}

fn stored_version(item: Option<&Item>) -> Option<i64> {
    match item?.get(ATTR_VERSION)? {
        AttributeValue::N(n) => n.parse().ok(),
        _ => None,
    }
}

impl ItemStore for DynamoStore {
    async fn put(
        &self,
        table: TableKind,
        item: Item,
        version: i64,
        guard: &Guard,
    ) -> Result<WriteOutcome, StoreError> {
        let name = self.tables.name(table);
        let doc_key = match item.get(ATTR_DOC) {
            Some(AttributeValue::S(d)) => d.clone(),
            _ => String::new(),
        };
        let key_attr = table.key_attributes()[0];
        let c = condition(guard, key_attr, &doc_key, version, PUT_CONDITION);
        let result = self
            .client
            .put_item()
            .table_name(name)
            .set_item(Some(item))
            .condition_expression(&c.expression)
            .set_expression_attribute_names(Some(c.used_names()))
            .set_expression_attribute_values(Some(c.used_values()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(WriteOutcome::Applied),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) =>
            {
                let PutItemError::ConditionalCheckFailedException(c) = e.err() else {
                    unreachable!("matched above")
                };
                Ok(refused(guard, c.item()))
            }
            Err(e) => Err(classify("PutItem", name, e)),
        }
    }

    async fn delete(
        &self,
        table: TableKind,
        key: Item,
        doc_key: &str,
        version: i64,
        guard: &Guard,
    ) -> Result<WriteOutcome, StoreError> {
        let name = self.tables.name(table);
        self.record_delete_intent(table, &key, doc_key, version)
            .await?;
        let key_attr = table.key_attributes()[0];
        let c = condition(guard, key_attr, doc_key, version, DELETE_CONDITION);
        let result = self
            .client
            .delete_item()
            .table_name(name)
            .set_key(Some(key))
            .condition_expression(&c.expression)
            .set_expression_attribute_names(Some(c.used_names()))
            .set_expression_attribute_values(Some(c.used_values()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(WriteOutcome::Applied),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), DeleteItemError::ConditionalCheckFailedException(_)) =>
            {
                let DeleteItemError::ConditionalCheckFailedException(c) = e.err() else {
                    unreachable!("matched above")
                };
                Ok(refused(guard, c.item()))
            }
            Err(e) => Err(classify("DeleteItem", name, e)),
        }
    }

    async fn batch_put(&self, items: Vec<(TableKind, Item)>) -> Result<(), BatchPutError> {
        debug_assert!(items.len() <= super::BATCH_MAX_ITEMS);
        let mut requests: HashMap<String, Vec<WriteRequest>> = HashMap::new();
        for (table, item) in items {
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(|e| BatchPutError {
                    error: StoreError {
                        op: "BatchWriteItem",
                        table: self.tables.name(table).to_string(),
                        message: e.to_string(),
                        retryable: false,
                    },
                    unanswered: false,
                })?;
            requests
                .entry(self.tables.name(table).to_string())
                .or_default()
                .push(WriteRequest::builder().put_request(put).build());
        }
        // The SDK's own retries are off for this call: after an attempt that timed out it
        // would send the batch again while the first request may still be applied, and the
        // caller must know about such a request (see `BatchPutError::unanswered`).
        let mut attempt = 0u32;
        let mut failures = 0u32;
        while !requests.is_empty() {
            let tables: Vec<String> = requests.keys().cloned().collect();
            let sent = self
                .client
                .batch_write_item()
                .set_request_items(Some(requests.clone()))
                .customize()
                .config_override(
                    aws_sdk_dynamodb::config::Builder::default()
                        .retry_config(RetryConfig::disabled()),
                )
                .send()
                .await;
            attempt += 1;
            match sent {
                Ok(out) => {
                    // Unprocessed items are throttled ones: sent again after a backoff.
                    requests = out.unprocessed_items.unwrap_or_default();
                    requests.retain(|_, v| !v.is_empty());
                    if requests.is_empty() {
                        break;
                    }
                    if attempt > BATCH_MAX_RETRIES {
                        let left: usize = requests.values().map(Vec::len).sum();
                        return Err(BatchPutError {
                            error: StoreError {
                                op: "BatchWriteItem",
                                table: tables.join(","),
                                message: format!(
                                    "{left} items still unprocessed after {BATCH_MAX_RETRIES} retries"
                                ),
                                retryable: true,
                            },
                            unanswered: false,
                        });
                    }
                }
                Err(e) => {
                    let unanswered = may_still_apply(&e);
                    let error = classify("BatchWriteItem", &tables.join(","), e);
                    // Refused whole (throttled, a server error) or not sent: the same
                    // request again.
                    failures += 1;
                    if unanswered || !error.retryable || failures > BATCH_MAX_ERROR_RETRIES {
                        return Err(BatchPutError { error, unanswered });
                    }
                }
            }
            // Exponential backoff with full jitter.
            let cap = Duration::from_millis(25 << attempt.min(8));
            tokio::time::sleep(cap.mul_f64(rand::random::<f64>())).await;
        }
        Ok(())
    }

    async fn put_all(&self, puts: Vec<GuardedPut>) -> Result<TransactOutcome, StoreError> {
        debug_assert!(puts.len() <= super::TRANSACT_MAX_ITEMS);
        let mut tables: Vec<&str> = Vec::new();
        let mut actions = Vec::with_capacity(puts.len());
        for p in puts {
            let name = self.tables.name(p.table);
            if !tables.contains(&name) {
                tables.push(name);
            }
            let doc_key = match p.item.get(ATTR_DOC) {
                Some(AttributeValue::S(d)) => d.clone(),
                _ => String::new(),
            };
            let key_attr = p.table.key_attributes()[0];
            let c = condition(&p.guard, key_attr, &doc_key, p.version, PUT_CONDITION);
            let put = Put::builder()
                .table_name(name)
                .set_item(Some(p.item))
                .condition_expression(&c.expression)
                .set_expression_attribute_names(Some(c.used_names()))
                .set_expression_attribute_values(Some(c.used_values()))
                .build()
                .map_err(|e| StoreError {
                    op: "TransactWriteItems",
                    table: name.to_string(),
                    message: e.to_string(),
                    retryable: false,
                })?;
            actions.push(TransactWriteItem::builder().put(put).build());
        }
        // The SDK gives the call an idempotency token and keeps it across its own retries, so
        // a retried transaction is applied once; every put is conditional on its version as
        // well, so a late one can never replace a newer item.
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await;
        match result {
            Ok(_) => Ok(TransactOutcome::Applied),
            Err(SdkError::ServiceError(e))
                if matches!(
                    e.err(),
                    TransactWriteItemsError::TransactionCanceledException(_)
                ) =>
            {
                let TransactWriteItemsError::TransactionCanceledException(c) = e.err() else {
                    unreachable!("matched above")
                };
                let refused = c
                    .cancellation_reasons()
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.code().is_some_and(|code| code != "None"))
                    .map(|(i, _)| i)
                    .collect();
                Ok(TransactOutcome::Cancelled { refused })
            }
            Err(e) => Err(classify("TransactWriteItems", &tables.join(","), e)),
        }
    }

    async fn get(&self, table: TableKind, key: Item) -> Result<Option<Item>, StoreError> {
        let name = self.tables.name(table);
        let out = self
            .client
            .get_item()
            .table_name(name)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("GetItem", name, e))?;
        Ok(out.item)
    }
}

/// Error codes worth retrying: throttling, server errors, a table an operator may still
/// create, and every credential or permission refusal. An IAM incident (a policy removed,
/// credentials expired or not yet rotated in) is an outage of the whole writer, not bad data:
/// its documents are retried until it is over, never parked (the queue and lag alarms fire).
pub(crate) fn retryable_code(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
            | "ThrottlingException"
            | "InternalServerError"
            | "ServiceUnavailable"
            | "ResourceNotFoundException"
            | "TransactionConflictException"
            | "TransactionInProgressException"
            | "LimitExceededException"
            | "UnrecognizedClientException"
            | "AccessDeniedException"
            | "ExpiredTokenException"
            | "ExpiredToken"
            | "InvalidSignatureException"
            | "IncompleteSignatureException"
            | "MissingAuthenticationTokenException"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "KMSAccessDeniedException"
            | "KMSDisabledException"
    )
}

/// Turns an SDK error into a [`StoreError`] with the retry decision.
pub(crate) fn classify<E, R>(op: &'static str, table: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug,
{
    let (retryable, message) = match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("Unknown");
            let retryable = retryable_code(code);
            (
                retryable,
                format!("{code}: {}", se.err().message().unwrap_or("(no message)")),
            )
        }
        SdkError::ConstructionFailure(_) => (false, DisplayErrorContext(&err).to_string()),
        // Timeouts, dispatch failures (connection refused, DNS) and unreadable responses.
        _ => (true, DisplayErrorContext(&err).to_string()),
    };
    StoreError {
        op,
        table: table.to_string(),
        message,
        retryable,
    }
}

/// Whether a request that failed may still be applied by DynamoDB: anything but an answer
/// (an error response, or any response at all) and a connection that was never made.
fn may_still_apply<E, R>(err: &SdkError<E, R>) -> bool
where
    E: std::error::Error + 'static,
    R: Debug + 'static,
{
    match err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => false,
        SdkError::ConstructionFailure(_) => false,
        SdkError::DispatchFailure(_) => !connection_refused(Some(err)),
        _ => true,
    }
}

/// A refused connection somewhere in the error's causes: nothing was sent.
fn connection_refused(err: Option<&(dyn std::error::Error + 'static)>) -> bool {
    let mut cause = err;
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    async fn store_at(port: u16) -> DynamoStore {
        let client = super::super::client::with_static_credentials(
            &format!("http://127.0.0.1:{port}"),
            "us-east-1",
            "test",
            "test",
        )
        .await;
        DynamoStore::new(client, TableNames::with_prefix("t_"))
    }

    fn one_item() -> Vec<(TableKind, Item)> {
        let item: Item = serde_dynamo::aws_sdk_dynamodb_1::to_item(
            serde_json::json!({"composite_key": "k_1", "identifier": "1"}),
        )
        .unwrap();
        vec![(TableKind::Identities, item)]
    }

    #[tokio::test]
    async fn a_batch_that_could_not_connect_was_never_sent() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = store_at(port)
            .await
            .batch_put(one_item())
            .await
            .unwrap_err();
        assert!(!err.unanswered, "{err:?}");
        assert!(err.error.retryable, "{err:?}");
    }

    /// A server that reads the request and never answers: the batch times out, is not
    /// sent again (the SDK would, on a new connection), and the error says it may land.
    #[tokio::test]
    async fn a_batch_that_goes_unanswered_is_not_sent_again_and_says_so() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let server = tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let counted = counted.clone();
                open.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut seen = false;
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if !seen {
                            seen = true;
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }));
            }
        });
        let err = store_at(port)
            .await
            .batch_put(one_item())
            .await
            .unwrap_err();
        server.abort();
        assert!(err.unanswered, "{err:?}");
        assert_eq!(requests.load(Ordering::SeqCst), 1, "sent once");
    }

    #[test]
    fn permission_and_credential_refusals_are_outages_not_bad_data() {
        for code in [
            "AccessDeniedException",
            "ExpiredTokenException",
            "UnrecognizedClientException",
            "ThrottlingException",
            "KMSAccessDeniedException",
        ] {
            assert!(retryable_code(code), "{code}");
        }
        for code in [
            "ValidationException",
            "ItemCollectionSizeLimitExceededException",
        ] {
            assert!(!retryable_code(code), "{code}");
        }
    }

    #[test]
    fn each_guard_names_only_what_its_condition_uses() {
        let v = condition(
            &Guard::Version,
            "composite_key",
            "identity:1",
            7,
            PUT_CONDITION,
        );
        assert_eq!(v.expression, PUT_CONDITION);
        assert_eq!(v.used_names().len(), 1);
        assert_eq!(v.used_values().len(), 1);
        let o = condition(
            &Guard::Owned,
            "composite_key",
            "identity:1",
            7,
            PUT_CONDITION,
        );
        assert_eq!(o.used_names()["#k"], "composite_key");
        assert_eq!(
            o.used_values()[":d"],
            AttributeValue::S("identity:1".into())
        );
        // Adopt: the foreign item exactly, attribute by attribute, and still not the writer's.
        let foreign: Item = (0..12)
            .map(|i| (format!("a{i}"), AttributeValue::N(i.to_string())))
            .collect();
        let a = condition(
            &Guard::Adopt(Box::new(foreign)),
            "composite_key",
            "identity:1",
            7,
            PUT_CONDITION,
        );
        assert!(a.expression.starts_with("attribute_not_exists(#v) AND "));
        assert_eq!(
            a.used_names().len(),
            13,
            "#v and #a0..#a11: #a1 is not mistaken for #a10"
        );
        assert_eq!(a.used_values().len(), 12, ":v and :d are unused");
    }
}
