//! `writer bootstrap`: adopts an existing core database in one command.
//!
//! On a core database with edge projects and an empty or partial edge, it runs, in order:
//!
//! 1. **Migrations and capture**, as `writer migrate` does. When every migration is applied
//!    already, the capture triggers are current and no role is to be granted, nothing is run
//!    (so a re-run, or a run as the writer's own role after the migrate task, needs no
//!    ownership of the core tables).
//! 2. **Tables**: created where missing (`--create-tables`, as `writer tables create`), or
//!    checked, each edge table read once (what the writer's role may do in AWS, where the
//!    stack creates the tables).
//! 3. **Environments, `_META` and API keys** of every edge project (`enable_dynamo_db`),
//!    through the backfill ([`crate::backfill`], scope [`Scope::EdgeProjects`]): each
//!    document is compared with DynamoDB first and only one that differs is re-written; an
//!    unchanged one keeps its items and versions. The cursor makes a stopped run resume.
//! 4. **Identities** of every edge project: the identity migration job
//!    ([`crate::migrate_identities`]), resumable after its checkpoint and idempotent; then
//!    the identities it left to the live path (locked or leased at the time) are replicated
//!    here, so the result does not depend on a writer running.
//! 5. **Verify** ([`crate::verify`]) over the regions given, or the home region alone,
//!    content only (see [`VerifyPlan`]).
//!
//! Every write goes through the versioned path (or the identity job's locks and leases), so
//! the command is safe to re-run and to run beside the live writer. Projects without
//! `enable_dynamo_db` are never written.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;

use crate::backfill::{self, BackfillError, Scope};
use crate::capture::control;
use crate::db::{self, MigrateError, MIGRATOR};
use crate::doc_key::DocKey;
use crate::failure_policy::error_chain;
use crate::migrate_identities::{self, MigrateError as IdentityError};
use crate::replicate::{ReplicateError, Replicator};
use crate::state::pending;
use crate::store::{tables, DynamoStore, ItemStore, StoreError};
use crate::verify::{self, Region, VerifyError};
use edge_documents::tables::{AttrType, TableKind};

/// How the tables are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TablesMode {
    /// Create the tables that do not exist yet (`writer tables create`): ListTables and
    /// CreateTable, which the writer's role in AWS is not granted.
    Create { streams: bool },
    /// Read each edge table once (a GetItem of a key that does not exist): fails naming a
    /// table that is missing or not readable.
    Check,
}

/// Where step 5 looks.
pub struct VerifyPlan {
    /// The regions given with `--region`. Empty: the home region (the DynamoDB the writer
    /// writes to), content only: the acknowledgements are not checked, since the name the
    /// home region's consumer acknowledges under is not known.
    pub regions: Vec<Region>,
    /// With regions given: a write older than this without an acknowledgement of a region
    /// is unconfirmed.
    pub ack_deadline: Duration,
    pub recheck_after: Duration,
}

/// The name the home region is reported under when no region is given.
pub const HOME_REGION: &str = "home";

pub struct Options {
    pub migrate: db::MigrateOptions,
    pub tables: TablesMode,
    /// Environment and API key documents at once.
    pub concurrency: usize,
    /// Documents per second at most (step 3).
    pub rate: Option<f64>,
    pub identities: migrate_identities::Options,
    /// How long step 4 waits, at most, for the write leases of a killed run to pass.
    pub lease_wait: Duration,
    pub verify: VerifyPlan,
    /// Progress bars on a terminal (log lines otherwise).
    pub progress_bar: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("step 1 (migrations and capture): {0}; run it as a role that owns the core tables, or run `writer migrate` (the migrate task) first")]
    Migrate(#[from] MigrateError),
    #[error("step 1 (migrations and capture): reading capture state: {0}")]
    CaptureState(#[source] sqlx::Error),
    #[error("step 2 (tables): creating them: {0}")]
    CreateTables(#[source] StoreError),
    #[error("step 2 (tables): table {table} cannot be read ({source}); create the tables (the stack does in AWS, `--create-tables` elsewhere)")]
    TableMissing {
        table: String,
        #[source]
        source: StoreError,
    },
    #[error("step 3 (environments, _META, API keys): {0}; re-run to resume after the cursor")]
    Documents(#[from] BackfillError),
    #[error("step 4 (identities): listing the edge projects: {0}")]
    Projects(#[source] sqlx::Error),
    #[error(
        "step 4 (identities of project {project}): {source}; re-run to resume after the checkpoint"
    )]
    Identities {
        project: i32,
        #[source]
        source: IdentityError,
    },
    #[error("step 4 (identities left to the live path): {0}")]
    Queued(#[source] sqlx::Error),
    #[error("step 5 (verify): {0}")]
    Verify(#[from] VerifyError),
}

/// Step 1.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationStep {
    /// Migrations applied and capture triggers current before the run: nothing was run.
    pub already_current: bool,
    /// Tables whose capture triggers were (re)installed.
    pub capture_installed_on: Vec<String>,
    pub lock_retries: u32,
    pub roles_granted: Vec<String>,
    /// Capture is on (not paused by the kill switch).
    pub capture_enabled: bool,
    /// Capture gaps not backfilled yet (`writer backfill --gap` closes them).
    pub open_gaps: usize,
}

/// How long tables just created get to become readable.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Step 2.
#[derive(Debug, Clone, Serialize)]
pub struct TablesStep {
    /// `create` or `check`.
    pub mode: &'static str,
    pub created: Vec<String>,
    pub checked: Vec<String>,
}

/// Step 3.
#[derive(Debug, Clone, Serialize)]
pub struct DocumentsStep {
    pub resumed_after: Option<String>,
    pub documents: u64,
    pub written: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub failures: Vec<(String, String)>,
}

/// Step 4, per project.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectIdentities {
    pub project_id: i32,
    pub resumed_after_id: i32,
    pub identities: u64,
    pub migrated: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub deferred: u64,
    pub items_written: u64,
    /// The project metadata status after the run (`MIGRATION_COMPLETED`).
    pub status: String,
}

/// Step 4, the identities the job left to the live path.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueuedStep {
    pub documents: u64,
    pub written: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub failures: Vec<(String, String)>,
}

/// Step 5.
#[derive(Debug, Serialize)]
pub struct VerifyStep {
    pub regions: Vec<String>,
    /// Whether the acknowledgements were checked too (only with regions given).
    pub acknowledgements_checked: bool,
    pub clean: bool,
    pub report: verify::Report,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub migrations: MigrationStep,
    pub tables: TablesStep,
    pub documents: DocumentsStep,
    pub identities: Vec<ProjectIdentities>,
    pub queued: QueuedStep,
    pub verify: VerifyStep,
    /// DynamoDB items and documents written by this run, all steps together: 0 on a re-run
    /// over an edge already in step (the project metadata item aside, written only when a
    /// project's migration status changes).
    pub documents_written: u64,
    pub identities_written: u64,
    /// Documents that failed (queued for the writer) or identities skipped into dead letters.
    pub problems: u64,
    pub notes: Vec<String>,
    pub seconds: f64,
}

impl Summary {
    /// Nothing failed and verify found no drift.
    pub fn ok(&self) -> bool {
        self.problems == 0 && self.verify.clean
    }
}

const STEPS: usize = 5;

fn step(n: usize, what: &str) {
    tracing::info!(
        step = n,
        steps = STEPS,
        "bootstrap step {n}/{STEPS}: {what}"
    );
}

/// Runs the five steps. `admin` is a pool without statement timeout (for the migrations);
/// `replicator` writes through the versioned path.
pub async fn run(
    admin: &PgPool,
    replicator: &Replicator<DynamoStore>,
    options: &Options,
) -> Result<Summary, BootstrapError> {
    let started = Instant::now();
    let mut notes = Vec::new();

    step(1, "migrations and capture");
    let migrations = migrate(admin, &options.migrate).await?;
    if !migrations.capture_enabled {
        notes.push("capture is paused (`writer capture status`): changes are not replicated until `writer capture resume` and `writer backfill --gap`".to_string());
    }
    if migrations.open_gaps > 0 {
        notes.push(format!(
            "{} capture gap(s) open: run `writer backfill --gap` once capture is on",
            migrations.open_gaps
        ));
    }
    tracing::info!(
        already_current = migrations.already_current,
        installed = migrations.capture_installed_on.len(),
        "migrations and capture done"
    );

    step(2, "tables");
    let tables = tables_step(replicator.store(), options.tables).await?;
    tracing::info!(created = ?tables.created, checked = tables.checked.len(), "tables done");

    step(3, "environments, _META and API keys of the edge projects");
    let docs = backfill::run(
        replicator,
        &Scope::EdgeProjects,
        &backfill::Options {
            dry_run: false,
            rate: options.rate,
            concurrency: options.concurrency.max(1),
            batch: backfill::DEFAULT_BATCH,
            restart: false,
            only_differing: true,
            progress_bar: options.progress_bar,
        },
    )
    .await?;
    let documents = DocumentsStep {
        resumed_after: docs.resumed_after,
        documents: docs.documents,
        written: docs.written,
        unchanged: docs.unchanged,
        failed: docs.failed,
        failures: docs.failures,
    };
    tracing::info!(
        documents = documents.documents,
        written = documents.written,
        unchanged = documents.unchanged,
        failed = documents.failed,
        "environments, _META and API keys done"
    );

    step(4, "identities of the edge projects");
    let projects = edge_projects(replicator.pool())
        .await
        .map_err(BootstrapError::Projects)?;
    let mut identities = Vec::new();
    for project in &projects {
        tracing::info!(project, "migrating the identities of project {project}");
        let s = migrate_identities::run(
            replicator.pool(),
            replicator.store(),
            migrate_identities::Scope {
                project_id: *project,
                environment_id: None,
            },
            &migrate_identities::Options {
                progress_bar: options.progress_bar,
                ..options.identities.clone()
            },
        )
        .await
        .map_err(|source| BootstrapError::Identities {
            project: *project,
            source,
        })?;
        identities.push(ProjectIdentities {
            project_id: *project,
            resumed_after_id: s.resumed_after_id,
            identities: s.identities,
            migrated: s.migrated,
            unchanged: s.unchanged,
            skipped: s.skipped,
            deferred: s.deferred,
            items_written: s.items_written,
            status: s.status,
        });
    }
    let queued = replicate_queued(replicator, options.lease_wait).await?;
    tracing::info!(
        projects = projects.len(),
        migrated = identities.iter().map(|p| p.migrated).sum::<u64>(),
        queued = queued.documents,
        "identities done"
    );

    step(5, "verify");
    let home;
    let (regions, acks) = if options.verify.regions.is_empty() {
        notes.push(format!(
            "verified the home region only, content only (reported as `{HOME_REGION}`); give every region with --region to check replication and acknowledgements too"
        ));
        home = [Region {
            name: HOME_REGION.to_string(),
            client: replicator.store().client().clone(),
        }];
        (&home[..], false)
    } else {
        (&options.verify.regions[..], true)
    };
    let verify_options = verify::Options {
        // Beyond the acknowledgements' retention, no write is checked against them.
        ack_deadline: if acks {
            options.verify.ack_deadline
        } else {
            Duration::from_secs(edge_documents::acks::RETENTION_SECONDS as u64)
        },
        recheck_after: options.verify.recheck_after,
        repair: false,
    };
    let started_at = chrono::Utc::now();
    let result = verify::run(
        replicator,
        replicator.store().tables(),
        replicator.store().client(),
        regions,
        &verify_options,
    )
    .await;
    // Recorded for `writer status` like any verify; a run that cannot be recorded still counts.
    if let Err(e) = verify::record_run(
        replicator.pool(),
        started_at,
        regions,
        false,
        result.as_ref(),
    )
    .await
    {
        tracing::warn!(error = %e, "recording the verify run in edge.verify_run failed");
    }
    let report = result?;
    let clean = report.clean();
    if !clean {
        notes.push("verify found drift: see verify.report; `writer verify --repair` re-writes the drifting documents".to_string());
    }
    tracing::info!(clean, drift = ?report.counts, "verify done");

    let skipped: u64 = identities.iter().map(|p| p.skipped).sum();
    if skipped > 0 {
        notes.push(format!(
            "{skipped} identities were skipped into dead letters (`writer dead-letters list`)"
        ));
    }
    let summary = Summary {
        documents_written: documents.written,
        identities_written: identities.iter().map(|p| p.migrated).sum::<u64>() + queued.written,
        problems: documents.failed + queued.failed + skipped,
        migrations,
        tables,
        documents,
        identities,
        queued,
        verify: VerifyStep {
            regions: regions.iter().map(|r| r.name.clone()).collect(),
            acknowledgements_checked: acks,
            clean,
            report,
        },
        notes,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(summary)
}

/// Step 1: `writer migrate`, unless everything is current already.
async fn migrate(
    pool: &PgPool,
    options: &db::MigrateOptions,
) -> Result<MigrationStep, BootstrapError> {
    let no_roles = options.core_role.is_none() && options.writer_role.is_none();
    let current = no_roles
        && migrations_applied(pool)
            .await
            .map_err(BootstrapError::CaptureState)?
        && control::status(pool)
            .await
            .map_err(BootstrapError::CaptureState)?
            .tables_not_installed
            .is_empty();
    let (installed, lock_retries) = if current {
        (Vec::new(), 0)
    } else {
        let report = db::migrate_with(pool, options).await?;
        (report.installed, report.lock_retries)
    };
    let status = control::status(pool)
        .await
        .map_err(BootstrapError::CaptureState)?;
    Ok(MigrationStep {
        already_current: current,
        capture_installed_on: installed,
        lock_retries,
        roles_granted: [&options.core_role, &options.writer_role]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        capture_enabled: status.enabled,
        open_gaps: status.open_gaps.len(),
    })
}

/// Whether every migration of this build is applied.
async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied = crate::state::schema::applied_migrations(pool).await?;
    Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
}

/// Step 2.
async fn tables_step(store: &DynamoStore, mode: TablesMode) -> Result<TablesStep, BootstrapError> {
    let created = match mode {
        TablesMode::Create { streams } => {
            tables::create_tables_with(store.client(), store.tables(), streams)
                .await
                .map_err(BootstrapError::CreateTables)?
        }
        TablesMode::Check => Vec::new(),
    };
    // Every edge table is read once, in both modes: a table just created may take a while to
    // become active (DynamoDB answers ResourceNotFound until then; in AWS that can be a
    // minute), and a check must say which table is missing.
    let active_by = Instant::now() + TABLE_ACTIVE_TIMEOUT;
    let mut checked = Vec::new();
    for kind in TableKind::ALL {
        let name = store.tables().name(kind).to_string();
        loop {
            match store.get(kind, probe_key(kind)).await {
                Ok(_) => break,
                Err(e) if !created.is_empty() && Instant::now() < active_by => {
                    tracing::debug!(table = %name, error = %e, "table not ready yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(source) => {
                    return Err(BootstrapError::TableMissing {
                        table: name,
                        source,
                    })
                }
            }
        }
        checked.push(name);
    }
    Ok(TablesStep {
        mode: match mode {
            TablesMode::Create { .. } => "create",
            TablesMode::Check => "check",
        },
        created,
        checked,
    })
}

/// A key no document has, of `kind`'s key schema.
fn probe_key(kind: TableKind) -> edge_documents::item::Item {
    use aws_sdk_dynamodb::types::AttributeValue;
    let def = kind.definition();
    [Some(def.hash_key), def.range_key]
        .into_iter()
        .flatten()
        .map(|(name, t)| {
            let value = match t {
                AttrType::S => AttributeValue::S("#bootstrap-probe".into()),
                AttrType::N => AttributeValue::N("-1".into()),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// The projects whose identities are replicated (`enable_dynamo_db`, not deleted).
async fn edge_projects(pool: &PgPool) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM projects_project WHERE enable_dynamo_db AND deleted_at IS NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// The identity documents of edge projects still queued (the job leaves an identity to the
/// live path when the live path holds it, a killed run's lease holds it, or it has items to
/// delete), replicated now through the versioned path. A leased one is retried once its lease
/// has passed, up to `lease_wait`.
async fn replicate_queued<S: ItemStore>(
    replicator: &Replicator<S>,
    lease_wait: Duration,
) -> Result<QueuedStep, BootstrapError> {
    let deadline = Instant::now() + lease_wait;
    let mut step = QueuedStep::default();
    let mut keys = pending::queued_edge_identities(replicator.pool())
        .await
        .map_err(BootstrapError::Queued)?;
    step.documents = keys.len() as u64;
    while !keys.is_empty() {
        let mut leased = Vec::new();
        let mut wake = None;
        for key in keys {
            let doc: DocKey = match key.parse() {
                Ok(d) => d,
                Err(e) => {
                    step.failed += 1;
                    step.failures.push((key, e.to_string()));
                    continue;
                }
            };
            match replicator.replicate_now(doc).await {
                Ok(o) if o.written > 0 || o.deleted > 0 => step.written += 1,
                Ok(_) => step.unchanged += 1,
                Err(ReplicateError::Leased { until, .. }) if Instant::now() < deadline => {
                    wake =
                        Some(wake.map_or(until, |w: chrono::DateTime<chrono::Utc>| w.min(until)));
                    leased.push(key);
                }
                Err(e) => {
                    step.failed += 1;
                    if step.failures.len() < 50 {
                        step.failures.push((key, error_chain(&e)));
                    }
                }
            }
        }
        if let Some(until) = wake {
            let wait = (until - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(deadline.saturating_duration_since(Instant::now()))
                + Duration::from_millis(50);
            tracing::info!(
                documents = leased.len(),
                wait_ms = wait.as_millis() as u64,
                "identities held by a write lease; waiting for it to pass"
            );
            tokio::time::sleep(wait).await;
        }
        keys = leased;
    }
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_keys_follow_each_tables_key_schema() {
        for kind in TableKind::ALL {
            let key = probe_key(kind);
            assert_eq!(key.len(), kind.key_attributes().len(), "{kind:?}: {key:?}");
        }
        assert!(matches!(
            probe_key(TableKind::ProjectMetadata)["id"],
            aws_sdk_dynamodb::types::AttributeValue::N(_)
        ));
    }
}
