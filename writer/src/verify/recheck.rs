//! The second look at what drifted: the same comparison on a snapshot of only those items,
//! read point by point (projection of their documents, GetItem in every region, the ledger
//! entries of each item).

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::error::display::DisplayErrorContext;
use edge_documents::acks::{self, Ack};
use edge_documents::tables::TableNames;
use sqlx::PgPool;

use super::expected::expected_of;
use super::scan::{observe, Ledger, ScanError};
use super::{
    in_flight_documents, ingestion_off, written_documents, Drift, Region, Snapshot, VerifyError,
};
use crate::doc_key::DocKey;

fn read_err(table: &str, e: impl std::error::Error + 'static) -> ScanError {
    ScanError {
        table: table.to_string(),
        message: DisplayErrorContext(e).to_string(),
    }
}

pub async fn snapshot(
    pool: &PgPool,
    tables: &TableNames,
    ledger: &aws_sdk_dynamodb::Client,
    regions: &[Region],
    drifts: &[Drift],
) -> Result<Snapshot, VerifyError> {
    let keys: HashSet<&str> = drifts.iter().map(|d| d.item_key.as_str()).collect();
    let docs: Vec<DocKey> = {
        let mut docs: Vec<DocKey> = drifts
            .iter()
            .filter_map(|d| d.doc_key.as_deref()?.parse().ok())
            .collect();
        docs.sort();
        docs.dedup();
        docs
    };
    let (mut expected, _) = expected_of(pool, &docs).await?;
    expected.retain(|k, _| keys.contains(&**k));

    let mut observed = Vec::new();
    for region in regions {
        let mut items = HashMap::new();
        for key in &keys {
            let Some((table, key_item)) = acks::key_of(key) else {
                continue;
            };
            let name = tables.name(table);
            let out = region
                .client
                .get_item()
                .table_name(name)
                .set_key(Some(key_item))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| read_err(name, e))?;
            if let Some((k, o)) = out.item().and_then(|i| observe(table, i)) {
                items.insert(k, o);
            }
        }
        observed.push((region.name.clone(), items));
    }

    let mut entries = Ledger::default();
    for key in &keys {
        let out = ledger
            .query()
            .table_name(&tables.acks)
            .key_condition_expression("item_key = :k")
            .expression_attribute_values(":k", AttributeValue::S(key.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| read_err(&tables.acks, e))?;
        for ack in out.items().iter().filter_map(Ack::from_item) {
            entries.insert(&ack);
        }
    }
    Ok(Snapshot {
        expected,
        observed,
        ledger: entries,
        in_flight: in_flight_documents(pool).await?,
        written: written_documents(
            pool,
            &docs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        )
        .await?,
        ingestion_off: ingestion_off(pool).await?,
    })
}
