//! `writer dead-letters replay`: parked documents replicated again now. A success removes
//! the dead letter (the write's bookkeeping clears it); a failure updates its error.

use crate::doc_key::DocKey;
use crate::failure_policy::error_chain;
use crate::replicate::{Outcome, Replicator};
use crate::state::dead_letters;
use crate::store::ItemStore;

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    One(DocKey),
    All,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0} is not in dead letters (see `writer dead-letters list`)")]
    NotParked(String),
    #[error("reading or updating dead letters in Postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// One dead letter's replay.
#[derive(Debug)]
pub struct Replayed {
    pub doc_key: String,
    /// The write, or why it failed again (recorded in the dead letter).
    pub result: Result<Outcome, String>,
}

/// Replays the selected dead letters one at a time, in key order.
pub async fn replay<S: ItemStore>(
    replicator: &Replicator<S>,
    selection: &Selection,
) -> Result<Vec<Replayed>, ReplayError> {
    let pool = replicator.pool();
    let parked = dead_letters::list(pool).await?;
    let keys: Vec<String> = match selection {
        Selection::One(doc) => {
            let key = doc.to_string();
            if !parked.iter().any(|l| l.doc_key == key) {
                return Err(ReplayError::NotParked(key));
            }
            vec![key]
        }
        Selection::All => parked.into_iter().map(|l| l.doc_key).collect(),
    };
    let mut out = Vec::with_capacity(keys.len());
    for doc_key in keys {
        let result = match doc_key.parse::<DocKey>() {
            Err(e) => Err(error_chain(&e)),
            Ok(doc) => match replicator.replicate_now(doc).await {
                Ok(outcome) => Ok(outcome),
                Err(e) => {
                    let message = error_chain(&e);
                    dead_letters::park(pool, &doc_key, e.kind().as_str(), &message, 1).await?;
                    Err(message)
                }
            },
        };
        out.push(Replayed { doc_key, result });
    }
    Ok(out)
}
