//! Creates the edge tables (local stack and tests; in AWS the deployment templates do it).

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
};
use edge_documents::tables::{AttrType, TableKind, TableNames};

use super::StoreError;

/// Creates every table of `names` that does not exist yet, with streams on
/// (NEW_AND_OLD_IMAGES). Returns the names it created.
pub async fn create_tables(
    client: &aws_sdk_dynamodb::Client,
    names: &TableNames,
) -> Result<Vec<String>, StoreError> {
    create_tables_with(client, names, true).await
}

/// As [`create_tables`], with streams on or off (bulk-load benchmarks and tests: DynamoDB
/// Local's write rate collapses as stream records accumulate).
pub async fn create_tables_with(
    client: &aws_sdk_dynamodb::Client,
    names: &TableNames,
    streams: bool,
) -> Result<Vec<String>, StoreError> {
    let existing = list_tables(client).await?;
    let mut created = Vec::new();
    for kind in TableKind::ALL {
        let name = names.name(kind);
        if existing.iter().any(|t| t == name) {
            continue;
        }
        create_table(client, name, kind, streams).await?;
        created.push(name.to_string());
    }
    if !existing.iter().any(|t| t == &names.acks) {
        create_ack_table(client, &names.acks).await?;
        created.push(names.acks.clone());
    }
    Ok(created)
}

/// The replication ledger (`edge_documents::acks`): hash `item_key`, range `region`, TTL on
/// `expires_at`, no stream.
async fn create_ack_table(client: &aws_sdk_dynamodb::Client, name: &str) -> Result<(), StoreError> {
    let err = |op, e: String| StoreError {
        op,
        table: name.to_string(),
        message: e,
        retryable: false,
    };
    let mut request = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_key_schema(Some(key_schema("item_key", Some("region"))));
    for attr in ["item_key", "region"] {
        request = request.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(attr)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("complete attribute definition"),
        );
    }
    request
        .send()
        .await
        .map_err(|e| super::dynamo::classify("CreateTable", name, e))?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .attribute_name("expires_at")
                .enabled(true)
                .build()
                .map_err(|e| err("UpdateTimeToLive", e.to_string()))?,
        )
        .send()
        .await
        .map_err(|e| super::dynamo::classify("UpdateTimeToLive", name, e))?;
    Ok(())
}

async fn list_tables(client: &aws_sdk_dynamodb::Client) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let out = client
            .list_tables()
            .set_exclusive_start_table_name(start.take())
            .send()
            .await
            .map_err(|e| super::dynamo::classify("ListTables", "*", e))?;
        names.extend(out.table_names().iter().cloned());
        match out.last_evaluated_table_name() {
            Some(last) => start = Some(last.to_string()),
            None => return Ok(names),
        }
    }
}

fn scalar(t: AttrType) -> ScalarAttributeType {
    match t {
        AttrType::S => ScalarAttributeType::S,
        AttrType::N => ScalarAttributeType::N,
    }
}

fn key_schema(hash: &str, range: Option<&str>) -> Vec<KeySchemaElement> {
    let mut keys = vec![KeySchemaElement::builder()
        .attribute_name(hash)
        .key_type(KeyType::Hash)
        .build()
        .expect("complete key schema")];
    if let Some(range) = range {
        keys.push(
            KeySchemaElement::builder()
                .attribute_name(range)
                .key_type(KeyType::Range)
                .build()
                .expect("complete key schema"),
        );
    }
    keys
}

async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
    kind: TableKind,
    streams: bool,
) -> Result<(), StoreError> {
    let def = kind.definition();
    let mut attrs: Vec<(&str, AttrType)> = vec![def.hash_key];
    attrs.extend(def.range_key);
    for index in &def.indexes {
        attrs.push(index.hash_key);
        attrs.extend(index.range_key);
    }
    attrs.sort_by_key(|(n, _)| *n);
    attrs.dedup_by_key(|(n, _)| *n);
    let mut request = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_key_schema(Some(key_schema(
            def.hash_key.0,
            def.range_key.map(|(n, _)| n),
        )))
        .stream_specification(if streams {
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .expect("complete stream specification")
        } else {
            StreamSpecification::builder()
                .stream_enabled(false)
                .build()
                .expect("complete stream specification")
        });
    for (attr, t) in attrs {
        request = request.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(attr)
                .attribute_type(scalar(t))
                .build()
                .expect("complete attribute definition"),
        );
    }
    for index in &def.indexes {
        request = request.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(index.name)
                .set_key_schema(Some(key_schema(
                    index.hash_key.0,
                    index.range_key.map(|(n, _)| n),
                )))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .expect("complete index"),
        );
    }
    request
        .send()
        .await
        .map_err(|e| super::dynamo::classify("CreateTable", name, e))?;
    Ok(())
}
