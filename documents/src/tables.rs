//! The DynamoDB tables of Flagsmith's edge, as data.
//!
//! One definition serves the local stack (`writer tables create`), the writer's key
//! extraction and the checks against the deployment templates. Names are configurable;
//! the defaults are Flagsmith's.

use serde::{Deserialize, Serialize};

/// Which table an item belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    Environments,
    EnvironmentsV2,
    Identities,
    EnvironmentApiKeys,
    ProjectMetadata,
}

impl TableKind {
    pub const ALL: [TableKind; 5] = [
        TableKind::Environments,
        TableKind::EnvironmentsV2,
        TableKind::Identities,
        TableKind::EnvironmentApiKeys,
        TableKind::ProjectMetadata,
    ];

    /// Stable name used in the writer's bookkeeping (not the DynamoDB table name).
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Environments => "environments",
            TableKind::EnvironmentsV2 => "environments_v2",
            TableKind::Identities => "identities",
            TableKind::EnvironmentApiKeys => "environment_api_keys",
            TableKind::ProjectMetadata => "project_metadata",
        }
    }

    pub fn parse(s: &str) -> Option<TableKind> {
        TableKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Key schema and indexes of this table.
    pub fn definition(self) -> TableDefinition {
        use AttrType::{N, S};
        match self {
            TableKind::Environments => TableDefinition {
                hash_key: ("api_key", S),
                range_key: None,
                indexes: vec![],
            },
            TableKind::EnvironmentsV2 => TableDefinition {
                hash_key: ("environment_id", S),
                range_key: Some(("document_key", S)),
                indexes: vec![IndexDefinition {
                    name: "environment_api_key-index",
                    hash_key: ("environment_api_key", S),
                    range_key: Some(("document_key", S)),
                }],
            },
            TableKind::Identities => TableDefinition {
                hash_key: ("composite_key", S),
                range_key: None,
                indexes: vec![
                    IndexDefinition {
                        name: "environment_api_key-identifier-index",
                        hash_key: ("environment_api_key", S),
                        range_key: Some(("identifier", S)),
                    },
                    IndexDefinition {
                        name: "identity_uuid-index",
                        hash_key: ("identity_uuid", S),
                        range_key: None,
                    },
                ],
            },
            TableKind::EnvironmentApiKeys => TableDefinition {
                hash_key: ("key", S),
                range_key: None,
                indexes: vec![],
            },
            TableKind::ProjectMetadata => TableDefinition {
                hash_key: ("id", N),
                range_key: None,
                indexes: vec![],
            },
        }
    }

    /// Names of the attributes that make up the primary key.
    pub fn key_attributes(self) -> Vec<&'static str> {
        let def = self.definition();
        let mut keys = vec![def.hash_key.0];
        if let Some((range, _)) = def.range_key {
            keys.push(range);
        }
        keys
    }
}

/// Scalar type of a key attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    S,
    N,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDefinition {
    pub hash_key: (&'static str, AttrType),
    pub range_key: Option<(&'static str, AttrType)>,
    /// Global secondary indexes, all projecting every attribute.
    pub indexes: Vec<IndexDefinition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDefinition {
    pub name: &'static str,
    pub hash_key: (&'static str, AttrType),
    pub range_key: Option<(&'static str, AttrType)>,
}

/// DynamoDB table names, one per [`TableKind`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableNames {
    pub environments: String,
    pub environments_v2: String,
    pub identities: String,
    pub environment_api_keys: String,
    pub project_metadata: String,
    /// The replication ledger ([`crate::acks`]).
    #[serde(default = "default_acks")]
    pub acks: String,
}

/// Default name of the ledger table (before any prefix).
pub const ACK_TABLE: &str = "flagsmith_edge_replication_acks";

fn default_acks() -> String {
    ACK_TABLE.to_string()
}

impl Default for TableNames {
    fn default() -> Self {
        TableNames {
            environments: "flagsmith_environments".into(),
            environments_v2: "flagsmith_environments_v2".into(),
            identities: "flagsmith_identities".into(),
            environment_api_keys: "flagsmith_environment_api_key".into(),
            project_metadata: "flagsmith_project_metadata".into(),
            acks: default_acks(),
        }
    }
}

impl TableNames {
    /// Default names with a prefix, e.g. for tests sharing one DynamoDB instance.
    pub fn with_prefix(prefix: &str) -> Self {
        let d = TableNames::default();
        TableNames {
            environments: format!("{prefix}{}", d.environments),
            environments_v2: format!("{prefix}{}", d.environments_v2),
            identities: format!("{prefix}{}", d.identities),
            environment_api_keys: format!("{prefix}{}", d.environment_api_keys),
            project_metadata: format!("{prefix}{}", d.project_metadata),
            acks: format!("{prefix}{}", d.acks),
        }
    }

    pub fn name(&self, kind: TableKind) -> &str {
        match kind {
            TableKind::Environments => &self.environments,
            TableKind::EnvironmentsV2 => &self.environments_v2,
            TableKind::Identities => &self.identities,
            TableKind::EnvironmentApiKeys => &self.environment_api_keys,
            TableKind::ProjectMetadata => &self.project_metadata,
        }
    }

    /// The kind of a table given its DynamoDB name.
    pub fn kind_of(&self, table_name: &str) -> Option<TableKind> {
        TableKind::ALL
            .into_iter()
            .find(|k| self.name(*k) == table_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_keys_are_flagsmiths() {
        for kind in TableKind::ALL {
            assert_eq!(TableKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(
            TableKind::EnvironmentsV2.key_attributes(),
            vec!["environment_id", "document_key"]
        );
        assert_eq!(
            TableKind::Identities.key_attributes(),
            vec!["composite_key"]
        );
        let names = TableNames::with_prefix("t1_");
        assert_eq!(
            names.kind_of("t1_flagsmith_environment_api_key"),
            Some(TableKind::EnvironmentApiKeys)
        );
    }
}
