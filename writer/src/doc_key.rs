//! Document keys: which document of the edge a piece of work is about.
//!
//! The string form (`environment:12`, `api_key:3`, `identity:7`) is what the writer's tables store and
//! what operators see in logs and dead letters.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKey {
    /// The environment document (environments item and environments_v2 `_META` item).
    Environment(i32),
    /// An environment API key document.
    ApiKey(i32),
    /// A core identity's document (identities item and environments_v2 override items).
    Identity(i32),
}

impl fmt::Display for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocKey::Environment(id) => write!(f, "environment:{id}"),
            DocKey::ApiKey(id) => write!(f, "api_key:{id}"),
            DocKey::Identity(id) => write!(f, "identity:{id}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid document key {0:?}: expected environment:<id>, api_key:<id> or identity:<id>")]
pub struct InvalidDocKey(String);

impl FromStr for DocKey {
    type Err = InvalidDocKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidDocKey(s.to_string());
        let (kind, id) = s.split_once(':').ok_or_else(bad)?;
        let id: i32 = id.parse().map_err(|_| bad())?;
        match kind {
            "environment" => Ok(DocKey::Environment(id)),
            "api_key" => Ok(DocKey::ApiKey(id)),
            "identity" => Ok(DocKey::Identity(id)),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for key in [
            DocKey::Environment(12),
            DocKey::ApiKey(3),
            DocKey::Identity(9),
        ] {
            assert_eq!(key.to_string().parse::<DocKey>().unwrap(), key);
        }
        assert!("environment:x".parse::<DocKey>().is_err());
        assert!("identity_x:1".parse::<DocKey>().is_err());
    }
}
