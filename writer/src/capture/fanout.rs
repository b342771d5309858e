//! Identity fan-out in pages (`edge.fanout`).
//!
//! A change that touches every identity of an environment, project or organisation, or
//! every identity overriding a feature or using an option, is recorded by the capture
//! transaction as one fan-out row. [`step`] then enqueues the next page of those identities
//! in a short transaction of its own, moving the row's cursor, until the row is done. Every
//! page is enqueued after the change committed, so each identity is projected from a
//! snapshot that has it; an identity created meanwhile is in a later page or has its own
//! change.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool};

use super::resolve::Anchor;
use super::ChangeSpan;
use crate::doc_key::DocKey;
use crate::state::{fanouts, pending};

/// Identities enqueued per fan-out transaction.
pub const PAGE: i64 = 2_000;

fn scope_of(anchor: &Anchor) -> Option<(&'static str, i32)> {
    match *anchor {
        Anchor::EnvironmentIdentities(e) => Some(("environment", e)),
        Anchor::ProjectIdentities(p) => Some(("project", p)),
        Anchor::OrganisationIdentities(o) => Some(("organisation", o)),
        Anchor::FeatureIdentities(f) => Some(("feature", f)),
        Anchor::OptionIdentities(o) => Some(("option", o)),
        _ => None,
    }
}

/// The next page of a scope's identity ids after `cursor`, in id order.
fn page_query(scope: &str) -> Option<&'static str> {
    Some(match scope {
        "environment" => {
            "SELECT id FROM environments_identity
              WHERE environment_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        }
        "project" => {
            "SELECT i.id FROM environments_identity i
               JOIN environments_environment e ON e.id = i.environment_id
              WHERE e.project_id = $1 AND i.id > $2 ORDER BY i.id LIMIT $3"
        }
        "organisation" => {
            "SELECT i.id FROM environments_identity i
               JOIN environments_environment e ON e.id = i.environment_id
               JOIN projects_project p ON p.id = e.project_id
              WHERE p.organisation_id = $1 AND i.id > $2 ORDER BY i.id LIMIT $3"
        }
        "feature" => {
            "SELECT DISTINCT identity_id FROM features_featurestate
              WHERE feature_id = $1 AND identity_id > $2 ORDER BY 1 LIMIT $3"
        }
        "option" => {
            "SELECT DISTINCT fs.identity_id
               FROM multivariate_multivariatefeaturestatevalue mv
               JOIN features_featurestate fs ON fs.id = mv.feature_state_id
              WHERE mv.multivariate_feature_option_id = $1 AND fs.identity_id > $2
              ORDER BY 1 LIMIT $3"
        }
        _ => return None,
    })
}

/// Records fan-outs (in the capture transaction).
pub async fn record(
    conn: &mut PgConnection,
    fan_outs: &BTreeMap<Anchor, ChangeSpan>,
) -> Result<(), sqlx::Error> {
    let mut scopes = Vec::new();
    let mut ids = Vec::new();
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    for (anchor, span) in fan_outs {
        if let Some((scope, id)) = scope_of(anchor) {
            scopes.push(scope);
            ids.push(id);
            firsts.push(span.first);
            lasts.push(span.last);
        }
    }
    if scopes.is_empty() {
        return Ok(());
    }
    fanouts::record(conn, &scopes, &ids, &firsts, &lasts).await
}

/// Enqueues one page of the oldest fan-out no other writer is paging. Returns the number
/// of identities enqueued (0: no fan-out left to page, or an empty last page).
pub async fn step(pool: &PgPool, page: i64) -> Result<Option<usize>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = fanouts::take_oldest(&mut tx).await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let Some(query) = page_query(&row.scope) else {
        tracing::error!(scope = %row.scope, id = row.id, "unknown fan-out scope; dropped");
        fanouts::delete(&mut tx, row.id).await?;
        tx.commit().await?;
        return Ok(Some(0));
    };
    let identities: Vec<i32> = sqlx::query_scalar(query)
        .bind(row.scope_id)
        .bind(row.cursor)
        .bind(page)
        .fetch_all(&mut *tx)
        .await?;
    let span = ChangeSpan {
        first: row.first_change_at,
        last: row.last_change_at,
    };
    let docs: BTreeMap<DocKey, ChangeSpan> = identities
        .iter()
        .map(|i| (DocKey::Identity(*i), span))
        .collect();
    pending::enqueue(&mut tx, &docs).await?;
    match identities.last() {
        Some(last) if identities.len() as i64 == page => {
            fanouts::advance(&mut tx, row.id, *last).await?;
        }
        _ => {
            fanouts::delete(&mut tx, row.id).await?;
        }
    }
    tx.commit().await?;
    Ok(Some(identities.len()))
}
