//! `writer inspect`: what DynamoDB holds for an environment, as the writer wrote it.

use std::fmt;

use aws_sdk_dynamodb::types::AttributeValue;
use edge_documents::item::{logical_item, stored_meta, ItemError, StoredMeta};
use edge_documents::tables::TableKind;

use crate::store::{ItemStore, StoreError};

/// An environment item: its replication attributes and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentItem {
    pub api_key: String,
    pub meta: StoredMeta,
    pub compressed: bool,
    /// `name=on|off (value)`, in document order.
    pub flags: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("reading environment {api_key:?}: {source}")]
    Read {
        api_key: String,
        #[source]
        source: StoreError,
    },
    #[error("no item with api_key {api_key:?} in {table}")]
    Missing { api_key: String, table: String },
    #[error("environment {api_key:?}: {source}")]
    Decode {
        api_key: String,
        #[source]
        source: ItemError,
    },
}

pub async fn environment<S: ItemStore>(
    store: &S,
    table_name: &str,
    api_key: &str,
) -> Result<EnvironmentItem, InspectError> {
    let key = [(
        "api_key".to_string(),
        AttributeValue::S(api_key.to_string()),
    )]
    .into_iter()
    .collect();
    let item = store
        .get(TableKind::Environments, key)
        .await
        .map_err(|source| InspectError::Read {
            api_key: api_key.to_string(),
            source,
        })?
        .ok_or_else(|| InspectError::Missing {
            api_key: api_key.to_string(),
            table: table_name.to_string(),
        })?;
    let decode = |source| InspectError::Decode {
        api_key: api_key.to_string(),
        source,
    };
    let meta = stored_meta(&item).map_err(decode)?;
    let doc = logical_item(&item).map_err(decode)?;
    let flags = doc["feature_states"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|fs| {
            let state = if fs["enabled"].as_bool().unwrap_or(false) {
                "on"
            } else {
                "off"
            };
            let value = match &fs["feature_state_value"] {
                serde_json::Value::Null => String::new(),
                v => format!(" ({v})"),
            };
            format!(
                "{}={state}{value}",
                fs["feature"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    Ok(EnvironmentItem {
        api_key: api_key.to_string(),
        meta,
        compressed: item.contains_key("compressed"),
        flags,
    })
}

impl fmt::Display for EnvironmentItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "environment {}: version={} hash={} source_time={} compressed={}",
            self.api_key, self.meta.version, self.meta.hash, self.meta.source_time, self.compressed
        )?;
        write!(f, "  flags: {}", self.flags.join(", "))
    }
}
