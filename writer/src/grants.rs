//! The privileges of the two roles besides the migrating one (`writer migrate --core-role
//! --writer-role`).
//!
//! - **Flagsmith's application role** fires the capture triggers, which run as the role of
//!   the transaction (they are not SECURITY DEFINER): it needs `USAGE` on schema `edge` and
//!   `INSERT` on `edge.change_log`, nothing else. It cannot read or change the writer's state.
//! - **The writer's role** (the daemon, the jobs and the stream consumers' ingestion): all of
//!   schema `edge`'s tables and sequences, `SELECT` on the core tables the projection reads
//!   (the captured ones), and the writes of edge -> core ingestion on the identity tables.
//!   It owns no core table, so it cannot alter, drop or re-trigger one: that needs the
//!   migrating role, used by the one-off `writer migrate` only.

use sqlx::PgPool;

/// Core tables edge -> core ingestion writes (`edge_ingest::apply`).
pub const INGESTION_TABLES: [&str; 5] = [
    "environments_identity",
    "environments_trait",
    "features_featurestate",
    "features_featurestatevalue",
    "multivariate_multivariatefeaturestatevalue",
];

fn role_ident(role: &str) -> String {
    format!("\"{}\"", role.replace('"', "\"\""))
}

/// Grants Flagsmith's application role what firing the capture triggers needs.
pub async fn grant_core_role(pool: &PgPool, role: &str) -> Result<(), sqlx::Error> {
    let r = role_ident(role);
    let mut tx = pool.begin().await?;
    for stmt in [
        format!("GRANT USAGE ON SCHEMA edge TO {r}"),
        format!("GRANT INSERT ON edge.change_log TO {r}"),
    ] {
        sqlx::query(&stmt).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Grants the writer's role its privileges (see the module documentation).
pub async fn grant_writer_role(pool: &PgPool, role: &str) -> Result<(), sqlx::Error> {
    let r = role_ident(role);
    let mut tx = pool.begin().await?;
    let mut statements = vec![
        format!("GRANT USAGE ON SCHEMA edge TO {r}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA edge TO {r}"),
        format!("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA edge TO {r}"),
        format!("GRANT USAGE ON SCHEMA public TO {r}"),
    ];
    let tables = crate::state::capture::captured_tables(&mut *tx).await?;
    for t in &tables {
        statements.push(format!("GRANT SELECT ON public.\"{t}\" TO {r}"));
    }
    for t in INGESTION_TABLES {
        statements.push(format!(
            "GRANT INSERT, UPDATE, DELETE ON public.\"{t}\" TO {r}"
        ));
        // Ids of the rows ingestion creates (serial or identity columns).
        statements.push(format!(
            "DO $$ DECLARE s text; BEGIN
                 SELECT pg_get_serial_sequence('public.{t}', 'id') INTO s;
                 IF s IS NOT NULL THEN EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %s', s, {lit}); END IF;
             END $$",
            lit = quote_literal(&r),
        ));
    }
    for stmt in statements {
        sqlx::query(&stmt).execute(&mut *tx).await?;
    }
    tx.commit().await
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_quoted_identifiers() {
        assert_eq!(role_ident("flagsmith"), "\"flagsmith\"");
        assert_eq!(role_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("\"a'b\""), "'\"a''b\"'");
    }
}
