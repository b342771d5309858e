//! Core rows written the way Flagsmith's core API writes them: one transaction per API save,
//! feature states created for every environment when a feature is created, soft deletes as
//! `deleted_at` updates, versioned feature states with `live_from`, segments whose live
//! version has `version_of_id = id`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A typed flag value as the core API stores it (`features_featurestatevalue.type`).
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Int(i32),
    Bool(bool),
    Str(String),
    None,
}

impl Val {
    pub fn str(s: &str) -> Val {
        Val::Str(s.to_string())
    }
    fn columns(
        &self,
    ) -> (
        Option<&'static str>,
        Option<i32>,
        Option<bool>,
        Option<String>,
    ) {
        match self {
            Val::Int(i) => (Some("int"), Some(*i), None, None),
            Val::Bool(b) => (Some("bool"), None, Some(*b), None),
            Val::Str(s) => (Some("unicode"), None, None, Some(s.clone())),
            Val::None => (Some("unicode"), None, None, None),
        }
    }
}

/// A segment condition: (operator, property, value).
pub type Cond<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

#[derive(Clone)]
pub struct Core {
    pub pool: PgPool,
}

impl Core {
    pub fn new(pool: PgPool) -> Core {
        Core { pool }
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn create_organisation(&self, name: &str) -> i32 {
        sqlx::query_scalar(
            r#"INSERT INTO organisations_organisation (name, has_requested_features, created_date,
                   alerted_over_plan_limit, stop_serving_flags, persist_trait_data,
                   block_access_to_admin, feature_analytics, restrict_project_create_to_admin,
                   uuid, force_2fa)
               VALUES ($1, false, now(), false, false, true, false, false, false, $2, false)
               RETURNING id"#,
        )
        .bind(name)
        .bind(Uuid::new_v4())
        .fetch_one(&self.pool)
        .await
        .expect("insert organisation")
    }

    /// A project on the edge (`enable_dynamo_db`) with the given v2 migration status.
    pub async fn create_project(&self, org: i32, name: &str, edge: bool, v2_status: &str) -> i32 {
        sqlx::query_scalar(
            r#"INSERT INTO projects_project (name, created_date, organisation_id, hide_disabled_flags,
                   enable_dynamo_db, uuid, prevent_flag_defaults, enable_realtime_updates,
                   only_allow_lower_case_feature_names, max_features_allowed, max_segments_allowed,
                   max_segment_overrides_allowed, identity_overrides_v2_migration_status,
                   stale_flags_limit_days, enforce_feature_owners)
               VALUES ($1, now(), $2, false, $3, $4, false, false, true, 400, 100, 100, $5, 30, false)
               RETURNING id"#,
        )
        .bind(name)
        .bind(org)
        .bind(edge)
        .bind(Uuid::new_v4())
        .bind(v2_status)
        .fetch_one(&self.pool)
        .await
        .expect("insert project")
    }

    /// An environment, with default feature states for the project's existing features (as
    /// the core API clones them into a new environment).
    pub async fn create_environment(&self, project: i32, name: &str, api_key: &str) -> i32 {
        let mut tx = self.pool.begin().await.unwrap();
        let id: i32 = sqlx::query_scalar(
            r#"INSERT INTO environments_environment (name, created_date, api_key, project_id,
                   webhooks_enabled, allow_client_traits, updated_at, use_mv_v2_evaluation,
                   hide_sensitive_data, use_v2_feature_versioning,
                   use_identity_overrides_in_local_eval, is_creating, uuid)
               VALUES ($1, now(), $2, $3, false, true, now(), false, false, false, false, false, $4)
               RETURNING id"#,
        )
        .bind(name)
        .bind(api_key)
        .bind(project)
        .bind(Uuid::new_v4())
        .fetch_one(&mut *tx)
        .await
        .expect("insert environment");
        let features: Vec<(i32, bool)> = sqlx::query_as(
            "SELECT id, default_enabled FROM features_feature WHERE project_id = $1 AND deleted_at IS NULL",
        )
        .bind(project)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        for (feature, enabled) in features {
            insert_feature_state(
                &mut tx,
                id,
                feature,
                enabled,
                &Val::None,
                Some(1),
                Some(Utc::now()),
            )
            .await;
        }
        tx.commit().await.unwrap();
        id
    }

    pub async fn create_api_key(&self, env: i32, key: &str) -> i32 {
        sqlx::query_scalar(
            r#"INSERT INTO environments_environmentapikey (key, created_at, name, active, environment_id)
               VALUES ($1, now(), 'server key', true, $2) RETURNING id"#,
        )
        .bind(key)
        .bind(env)
        .fetch_one(&self.pool)
        .await
        .expect("insert api key")
    }

    /// A feature and its default state in every environment of the project, in one
    /// transaction, as the core API creates it.
    pub async fn create_feature(
        &self,
        project: i32,
        name: &str,
        feature_type: &str,
        enabled: bool,
        value: Val,
    ) -> i32 {
        let mut tx = self.pool.begin().await.unwrap();
        let id: i32 = sqlx::query_scalar(
            r#"INSERT INTO features_feature (name, created_date, project_id, default_enabled, type,
                   is_archived, uuid, is_server_key_only)
               VALUES ($1, now(), $2, $3, $4, false, $5, false) RETURNING id"#,
        )
        .bind(name)
        .bind(project)
        .bind(enabled)
        .bind(feature_type)
        .bind(Uuid::new_v4())
        .fetch_one(&mut *tx)
        .await
        .expect("insert feature");
        let envs: Vec<i32> =
            sqlx::query_scalar("SELECT id FROM environments_environment WHERE project_id = $1")
                .bind(project)
                .fetch_all(&mut *tx)
                .await
                .unwrap();
        for env in envs {
            insert_feature_state(&mut tx, env, id, enabled, &value, Some(1), Some(Utc::now()))
                .await;
        }
        tx.commit().await.unwrap();
        id
    }

    /// The live environment default feature state id of a feature (versioning v1).
    pub async fn default_state(&self, env: i32, feature: i32) -> i32 {
        sqlx::query_scalar(
            r#"SELECT id FROM features_featurestate
               WHERE environment_id = $1 AND feature_id = $2 AND identity_id IS NULL
                 AND feature_segment_id IS NULL AND deleted_at IS NULL
                 AND live_from <= now()
               ORDER BY live_from DESC, version DESC LIMIT 1"#,
        )
        .bind(env)
        .bind(feature)
        .fetch_one(&self.pool)
        .await
        .expect("a default feature state")
    }

    /// Edits a flag in place (versioning v1 without change requests), value and state in one
    /// transaction.
    pub async fn set_flag(&self, env: i32, feature: i32, enabled: bool, value: Val) {
        let fs = self.default_state(env, feature).await;
        let mut tx = self.pool.begin().await.unwrap();
        update_state(&mut tx, fs, enabled, &value).await;
        tx.commit().await.unwrap();
    }

    /// A new version of a flag that goes live at `live_from` (a scheduled change).
    pub async fn schedule_flag(
        &self,
        env: i32,
        feature: i32,
        enabled: bool,
        value: Val,
        live_from: DateTime<Utc>,
    ) -> i32 {
        let mut tx = self.pool.begin().await.unwrap();
        let version: i32 = sqlx::query_scalar(
            "SELECT COALESCE(max(version), 0) + 1 FROM features_featurestate WHERE environment_id = $1 AND feature_id = $2 AND identity_id IS NULL AND feature_segment_id IS NULL",
        )
        .bind(env)
        .bind(feature)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        let id = insert_feature_state(
            &mut tx,
            env,
            feature,
            enabled,
            &value,
            Some(version),
            Some(live_from),
        )
        .await;
        tx.commit().await.unwrap();
        id
    }

    /// A segment (live version: `version_of_id = id`) with one top-level ALL rule holding a
    /// sub-rule of `sub_rule_type` with the conditions.
    pub async fn create_segment(
        &self,
        project: i32,
        name: &str,
        sub_rule_type: &str,
        conditions: &[Cond<'_>],
    ) -> i32 {
        let mut tx = self.pool.begin().await.unwrap();
        let id: i32 = sqlx::query_scalar(
            r#"INSERT INTO segments_segment (name, project_id, uuid, version, created_at, updated_at,
                   is_system_segment, managed_by)
               VALUES ($1, $2, $3, 1, now(), now(), false, 'USER') RETURNING id"#,
        )
        .bind(name)
        .bind(project)
        .bind(Uuid::new_v4())
        .fetch_one(&mut *tx)
        .await
        .expect("insert segment");
        sqlx::query("UPDATE segments_segment SET version_of_id = id WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        let top = insert_rule(&mut tx, "ALL", Some(id), None).await;
        let sub = insert_rule(&mut tx, sub_rule_type, None, Some(top)).await;
        for (operator, property, value) in conditions {
            insert_condition(&mut tx, sub, operator, *property, *value).await;
        }
        tx.commit().await.unwrap();
        id
    }

    /// The first condition of a segment (through its sub-rule).
    pub async fn first_condition(&self, segment: i32) -> i32 {
        sqlx::query_scalar(
            r#"SELECT c.id FROM segments_condition c
               JOIN segments_segmentrule sub ON sub.id = c.rule_id
               JOIN segments_segmentrule top ON top.id = sub.rule_id
               WHERE top.segment_id = $1 ORDER BY c.id LIMIT 1"#,
        )
        .bind(segment)
        .fetch_one(&self.pool)
        .await
        .expect("a condition")
    }

    /// A segment override: feature segment plus its feature state and value.
    pub async fn create_segment_override(
        &self,
        env: i32,
        feature: i32,
        segment: i32,
        priority: i32,
        enabled: bool,
        value: Val,
    ) -> i32 {
        let mut tx = self.pool.begin().await.unwrap();
        let fseg: i32 = sqlx::query_scalar(
            r#"INSERT INTO features_featuresegment (priority, feature_id, segment_id, enabled, environment_id, uuid)
               VALUES ($1, $2, $3, false, $4, $5) RETURNING id"#,
        )
        .bind(priority)
        .bind(feature)
        .bind(segment)
        .bind(env)
        .bind(Uuid::new_v4())
        .fetch_one(&mut *tx)
        .await
        .expect("insert feature segment");
        let fs = insert_feature_state(
            &mut tx,
            env,
            feature,
            enabled,
            &value,
            Some(1),
            Some(Utc::now()),
        )
        .await;
        sqlx::query("UPDATE features_featurestate SET feature_segment_id = $2 WHERE id = $1")
            .bind(fs)
            .bind(fseg)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        fseg
    }

    /// A multivariate option of a feature, with a value on every environment default state
    /// of the feature at `percentage`.
    pub async fn create_mv_option(
        &self,
        feature: i32,
        value: Val,
        key: &str,
        percentage: f64,
    ) -> i32 {
        let mut tx = self.pool.begin().await.unwrap();
        let (t, i, b, s) = value.columns();
        let option: i32 = sqlx::query_scalar(
            r#"INSERT INTO multivariate_multivariatefeatureoption (type, boolean_value, integer_value,
                   string_value, default_percentage_allocation, feature_id, uuid, key)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id"#,
        )
        .bind(t)
        .bind(b)
        .bind(i)
        .bind(s)
        .bind(percentage)
        .bind(feature)
        .bind(Uuid::new_v4())
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .expect("insert mv option");
        let states: Vec<i32> = sqlx::query_scalar(
            "SELECT id FROM features_featurestate WHERE feature_id = $1 AND identity_id IS NULL AND feature_segment_id IS NULL AND deleted_at IS NULL",
        )
        .bind(feature)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        for fs in states {
            sqlx::query(
                r#"INSERT INTO multivariate_multivariatefeaturestatevalue (percentage_allocation,
                       feature_state_id, multivariate_feature_option_id, uuid)
                   VALUES ($1, $2, $3, $4)"#,
            )
            .bind(percentage)
            .bind(fs)
            .bind(option)
            .bind(Uuid::new_v4())
            .execute(&mut *tx)
            .await
            .expect("insert mv value");
        }
        tx.commit().await.unwrap();
        option
    }

    /// Soft-deletes an environment (the core API's delete).
    pub async fn soft_delete_environment(&self, env: i32) {
        sqlx::query("UPDATE environments_environment SET deleted_at = now() WHERE id = $1")
            .bind(env)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    pub async fn set_enable_dynamo_db(&self, project: i32, on: bool) {
        sqlx::query("UPDATE projects_project SET enable_dynamo_db = $2 WHERE id = $1")
            .bind(project)
            .bind(on)
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

/// A trait value as the core API stores it (`environments_trait.value_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum TraitVal {
    Int(i32),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl Core {
    pub async fn create_identity(&self, env: i32, identifier: &str) -> i32 {
        sqlx::query_scalar(
            r#"INSERT INTO environments_identity (identifier, created_date, environment_id, system_traits)
               VALUES ($1, now(), $2, '{}'::jsonb) RETURNING id"#,
        )
        .bind(identifier)
        .bind(env)
        .fetch_one(&self.pool)
        .await
        .expect("insert identity")
    }

    /// Sets a trait the way the core API's identify call does (upsert on key).
    pub async fn set_trait(&self, identity: i32, key: &str, value: TraitVal) {
        let (t, i, f, b, s) = match &value {
            TraitVal::Int(v) => ("int", Some(*v), None, None, None),
            TraitVal::Float(v) => ("float", None, Some(*v), None, None),
            TraitVal::Bool(v) => ("bool", None, None, Some(*v), None),
            TraitVal::Str(v) => ("unicode", None, None, None, Some(v.clone())),
        };
        sqlx::query(
            r#"INSERT INTO environments_trait (trait_key, value_type, boolean_value, integer_value,
                   string_value, float_value, created_date, identity_id)
               VALUES ($1, $2, $3, $4, $5, $6, now(), $7)
               ON CONFLICT (trait_key, identity_id) DO UPDATE SET
                   value_type = excluded.value_type, boolean_value = excluded.boolean_value,
                   integer_value = excluded.integer_value, string_value = excluded.string_value,
                   float_value = excluded.float_value"#,
        )
        .bind(key)
        .bind(t)
        .bind(b)
        .bind(i)
        .bind(s)
        .bind(f)
        .bind(identity)
        .execute(&self.pool)
        .await
        .expect("upsert trait");
    }

    pub async fn delete_trait(&self, identity: i32, key: &str) {
        sqlx::query("DELETE FROM environments_trait WHERE identity_id = $1 AND trait_key = $2")
            .bind(identity)
            .bind(key)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// An identity override (a feature state with `identity_id`), live now.
    pub async fn create_identity_override(
        &self,
        env: i32,
        identity: i32,
        feature: i32,
        enabled: bool,
        value: Val,
    ) -> i32 {
        let mut tx = self.pool.begin().await.unwrap();
        let fs = insert_feature_state(
            &mut tx,
            env,
            feature,
            enabled,
            &value,
            Some(1),
            Some(Utc::now()),
        )
        .await;
        sqlx::query("UPDATE features_featurestate SET identity_id = $2 WHERE id = $1")
            .bind(fs)
            .bind(identity)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        fs
    }

    /// Deletes an identity as the core API does: its overrides and traits, then the row.
    pub async fn delete_identity(&self, identity: i32) {
        let mut tx = self.pool.begin().await.unwrap();
        for sql in [
            "DELETE FROM features_featurestatevalue WHERE feature_state_id IN (SELECT id FROM features_featurestate WHERE identity_id = $1)",
            "DELETE FROM multivariate_multivariatefeaturestatevalue WHERE feature_state_id IN (SELECT id FROM features_featurestate WHERE identity_id = $1)",
            "DELETE FROM features_featurestate WHERE identity_id = $1",
            "DELETE FROM environments_trait WHERE identity_id = $1",
            "DELETE FROM environments_identity WHERE id = $1",
        ] {
            sqlx::query(sql).bind(identity).execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }

    /// Bulk-loads `count` identities into an environment in one statement per table:
    /// identifiers `{prefix}{n}`, three traits each (an int, a string and a bool), and an
    /// override of `feature` on every `override_every`-th identity. Returns the ids.
    ///
    /// `captured: false` writes them with the capture triggers off, as identities that
    /// existed before the writer was installed (what the migration job is for).
    pub async fn generate_identities(
        &self,
        env: i32,
        prefix: &str,
        count: i32,
        feature: i32,
        override_every: i32,
        captured: bool,
    ) -> Vec<i32> {
        let mut tx = self.pool.begin().await.unwrap();
        if !captured {
            sqlx::query("SET LOCAL session_replication_role = replica")
                .execute(&mut *tx)
                .await
                .expect("triggers off (needs a superuser)");
        }
        let ids: Vec<i32> = sqlx::query_scalar(
            r#"INSERT INTO environments_identity (identifier, created_date, environment_id, system_traits)
               SELECT $1 || n, now(), $2, '{}'::jsonb FROM generate_series(1, $3) AS n
               RETURNING id"#,
        )
        .bind(prefix)
        .bind(env)
        .bind(count)
        .fetch_all(&mut *tx)
        .await
        .expect("insert identities");
        sqlx::query(
            r#"INSERT INTO environments_trait (trait_key, value_type, boolean_value, integer_value,
                   string_value, float_value, created_date, identity_id)
               SELECT k, t, CASE WHEN t = 'bool' THEN id % 2 = 0 END,
                      CASE WHEN t = 'int' THEN id END,
                      CASE WHEN t = 'unicode' THEN 'plan-' || (id % 5) END, NULL, now(), id
               FROM unnest($1::int[]) AS id,
                    (VALUES ('age', 'int'), ('plan', 'unicode'), ('beta', 'bool')) AS x(k, t)"#,
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .expect("insert traits");
        sqlx::query(
            r#"WITH fs AS (
                   INSERT INTO features_featurestate (enabled, environment_id, feature_id,
                       identity_id, created_at, live_from, updated_at, version, uuid)
                   SELECT true, $2, $3, id, now(), now(), now(), 1, gen_random_uuid()
                   FROM unnest($1::int[]) AS id WHERE id % $4 = 0
                   RETURNING id, identity_id)
               INSERT INTO features_featurestatevalue (type, integer_value, feature_state_id, uuid)
               SELECT 'int', identity_id, id, gen_random_uuid() FROM fs"#,
        )
        .bind(&ids)
        .bind(env)
        .bind(feature)
        .bind(override_every)
        .execute(&mut *tx)
        .await
        .expect("insert overrides");
        tx.commit().await.unwrap();
        ids
    }
}

pub async fn insert_feature_state(
    conn: &mut PgConnection,
    env: i32,
    feature: i32,
    enabled: bool,
    value: &Val,
    version: Option<i32>,
    live_from: Option<DateTime<Utc>>,
) -> i32 {
    let fs: i32 = sqlx::query_scalar(
        r#"INSERT INTO features_featurestate (enabled, environment_id, feature_id, created_at,
               live_from, updated_at, version, uuid)
           VALUES ($1, $2, $3, now(), $4, now(), $5, $6) RETURNING id"#,
    )
    .bind(enabled)
    .bind(env)
    .bind(feature)
    .bind(live_from)
    .bind(version)
    .bind(Uuid::new_v4())
    .fetch_one(&mut *conn)
    .await
    .expect("insert feature state");
    let (t, i, b, s) = value.columns();
    sqlx::query(
        r#"INSERT INTO features_featurestatevalue (type, boolean_value, integer_value, string_value,
               feature_state_id, uuid)
           VALUES ($1, $2, $3, $4, $5, $6)"#,
    )
    .bind(t)
    .bind(b)
    .bind(i)
    .bind(s)
    .bind(fs)
    .bind(Uuid::new_v4())
    .execute(&mut *conn)
    .await
    .expect("insert feature state value");
    fs
}

pub async fn update_state(conn: &mut PgConnection, fs: i32, enabled: bool, value: &Val) {
    sqlx::query("UPDATE features_featurestate SET enabled = $2, updated_at = now() WHERE id = $1")
        .bind(fs)
        .bind(enabled)
        .execute(&mut *conn)
        .await
        .unwrap();
    let (t, i, b, s) = value.columns();
    sqlx::query(
        r#"UPDATE features_featurestatevalue
           SET type = $2, integer_value = $3, boolean_value = $4, string_value = $5
           WHERE feature_state_id = $1"#,
    )
    .bind(fs)
    .bind(t)
    .bind(i)
    .bind(b)
    .bind(s)
    .execute(&mut *conn)
    .await
    .unwrap();
}

async fn insert_rule(
    conn: &mut PgConnection,
    rule_type: &str,
    segment: Option<i32>,
    parent: Option<i32>,
) -> i32 {
    sqlx::query_scalar(
        r#"INSERT INTO segments_segmentrule (type, rule_id, segment_id, uuid, created_at, updated_at)
           VALUES ($1, $2, $3, $4, now(), now()) RETURNING id"#,
    )
    .bind(rule_type)
    .bind(parent)
    .bind(segment)
    .bind(Uuid::new_v4())
    .fetch_one(conn)
    .await
    .expect("insert rule")
}

async fn insert_condition(
    conn: &mut PgConnection,
    rule: i32,
    operator: &str,
    property: Option<&str>,
    value: Option<&str>,
) -> i32 {
    sqlx::query_scalar(
        r#"INSERT INTO segments_condition (operator, property, value, rule_id, uuid,
               created_with_segment, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, true, now(), now()) RETURNING id"#,
    )
    .bind(operator)
    .bind(property)
    .bind(value)
    .bind(rule)
    .bind(Uuid::new_v4())
    .fetch_one(conn)
    .await
    .expect("insert condition")
}

/// A small but complete edge project: organisation, project on the edge (v2 status
/// COMPLETE), one environment with a server key. Returns (org, project, env).
pub async fn basic_project(core: &Core, api_key: &str) -> (i32, i32, i32) {
    let org = core.create_organisation("Acme").await;
    let project = core
        .create_project(org, "Storefront", true, "COMPLETE")
        .await;
    let env = core
        .create_environment(project, "Production", api_key)
        .await;
    core.create_api_key(env, &format!("ser.{api_key}")).await;
    (org, project, env)
}
