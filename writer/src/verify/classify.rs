//! What one item key says about one region, without I/O: the rule of `writer verify`.
//!
//! Both comparisons apply it key by key: the in-memory one ([`super::compare`], for the second
//! look at a few items) and the staged one ([`crate::state::verify_stage`], for everything,
//! streamed out of Postgres); so the rule exists once.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use edge_documents::tables::TableKind;

use super::expected::ExpectedItem;
use super::scan::{LedgerEntry, Observed};
use super::{Comparison, Drift, DriftKind, PendingIngestion, RegionSummary, SOMEONE_ELSE_ADVICE};

/// What holds for every key of one region's comparison.
pub struct Context<'a> {
    pub region: &'a str,
    /// Writes older than this must be acknowledged.
    pub deadline: DateTime<Utc>,
    /// Acknowledgements expire: writes older than this can no longer be checked against them.
    pub retained_since: DateTime<Utc>,
    /// Client API keys of environments whose project does not ingest edge writes.
    pub ingestion_off: &'a HashSet<String>,
}

/// Everything known about one item key in one region.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyView<'a> {
    pub key: &'a str,
    pub expected: Option<&'a ExpectedItem>,
    pub observed: Option<&'a Observed>,
    /// The version this region acknowledged (present or removed).
    pub ack: Option<i64>,
    /// The newest version any region acknowledged as present.
    pub newest_ack: Option<i64>,
    /// The writer's delete intent for the item.
    pub intent: Option<&'a LedgerEntry>,
    /// The expected item's document has a change queued.
    pub expected_in_flight: bool,
    /// The observed item's owner (as the item records it) has a change queued.
    pub owner_in_flight: bool,
    /// When the expected item's document was last written.
    pub written_at: Option<DateTime<Utc>>,
}

/// Applies the rule to one key; findings go to `out`, foreign items to `summary`.
pub fn classify(
    ctx: &Context<'_>,
    v: &KeyView<'_>,
    out: &mut Comparison,
    summary: &mut RegionSummary,
) {
    let key = v.key;
    let region = ctx.region;
    let drifts = &mut out.drifts;
    let mut drift = |kind, doc_key: Option<&str>, detail: String| {
        drifts.push(Drift {
            region: region.to_string(),
            kind,
            item_key: key.to_string(),
            doc_key: doc_key.map(String::from),
            detail,
        })
    };
    if let Some(exp) = v.expected {
        if !v.expected_in_flight {
            compare_expected(key, exp, v.observed, &mut drift);
        }
    }
    let Some(obs) = v.observed else {
        // Deletes the writer made longer ago than the deadline must be acknowledged too.
        if let Some(intent) = v.intent {
            let checkable = intent.recorded_at_ms <= ctx.deadline.timestamp_millis()
                && intent.recorded_at_ms >= ctx.retained_since.timestamp_millis();
            if checkable && v.ack.is_none_or(|a| a < intent.version) {
                drift(
                    DriftKind::Unconfirmed,
                    Some(&intent.doc_key),
                    format!(
                        "the delete at v{} has no acknowledgement of {region}",
                        intent.version
                    ),
                );
            }
        }
        return;
    };
    let old_enough = v
        .written_at
        .is_some_and(|w| w < ctx.deadline && w > ctx.retained_since);
    let faithful = |exp: &ExpectedItem| obs.corrupted.is_none() && obs.hash == Some(exp.hash);
    match (v.expected, obs.version, obs.doc_key.as_deref()) {
        (exp, None, _) if edge_identity_api_key(key).is_some() => {
            let api_key = edge_identity_api_key(key).unwrap_or_default();
            if ctx.ingestion_off.contains(api_key) {
                summary.foreign += 1;
            } else {
                out.pending_ingestion.push(PendingIngestion {
                    region: region.to_string(),
                    item_key: key.to_string(),
                    doc_key: exp.map(|e| e.doc_key.to_string()),
                });
            }
        }
        // An identity's override item written without the writer's attributes: Flagsmith's
        // edge endpoints write it with the identity item, so it is pending like that one.
        (Some(exp), None, _) if exp.doc_key.starts_with("identity:") => {
            out.pending_ingestion.push(PendingIngestion {
                region: region.to_string(),
                item_key: key.to_string(),
                doc_key: Some(exp.doc_key.to_string()),
            });
        }
        (None, None, _) => summary.foreign += 1,
        (None, Some(version), Some(owner)) if !v.owner_in_flight => {
            drift(
                DriftKind::Extra,
                Some(owner),
                format!("v{version} of {owner} is not expected by Postgres"),
            );
            out.extras.push((owner.to_string(), key.to_string()));
        }
        (Some(exp), Some(version), _)
            if faithful(exp) && v.newest_ack.is_some_and(|a| a > version) =>
        {
            drift(
                DriftKind::Stale,
                Some(&exp.doc_key),
                format!(
                    "v{version} is older than the v{} a region acknowledged",
                    v.newest_ack.unwrap_or_default()
                ),
            );
        }
        (Some(exp), Some(version), _)
            if faithful(exp)
                && old_enough
                && !v.expected_in_flight
                && v.ack.is_none_or(|a| a < version) =>
        {
            drift(
                DriftKind::Unconfirmed,
                Some(&exp.doc_key),
                format!(
                    "v{version} has no acknowledgement of {region} (newest: {:?})",
                    v.ack
                ),
            );
        }
        _ => {}
    }
}

fn compare_expected(
    key: &str,
    exp: &ExpectedItem,
    obs: Option<&Observed>,
    drift: &mut impl FnMut(DriftKind, Option<&str>, String),
) {
    let doc = Some(&*exp.doc_key);
    match obs {
        None => drift(DriftKind::Missing, doc, "not in the region".into()),
        Some(o) => {
            if let Some(why) = &o.corrupted {
                drift(
                    DriftKind::Corrupted,
                    doc,
                    format!("v{}: {why}", o.version.unwrap_or_default()),
                );
            } else if o.version.is_none() {
                // Identity documents' items written at the edge are pending ingestion, not
                // drift (listed by the observed side).
                if edge_identity_api_key(key).is_none() && !exp.doc_key.starts_with("identity:") {
                    drift(
                        DriftKind::WrittenBySomeoneElse,
                        doc,
                        SOMEONE_ELSE_ADVICE.into(),
                    );
                }
            } else if o.hash != Some(exp.hash) {
                drift(
                    DriftKind::Stale,
                    doc,
                    format!(
                        "v{} differs from what Postgres projects now",
                        o.version.unwrap_or_default()
                    ),
                );
            }
        }
    }
}

/// The client API key in an identity item's ledger key (`identities|{api_key}_{identifier}`);
/// `None` for items of other tables.
pub fn edge_identity_api_key(item_key: &str) -> Option<&str> {
    let rest = item_key
        .strip_prefix(TableKind::Identities.as_str())?
        .strip_prefix('|')?;
    rest.split_once('_').map(|(k, _)| k)
}
