//! The writer's small HTTP server: `POST /v1/sync`, `GET /healthz`, `GET /metrics`.
//!
//! `/v1/sync` is for the core API (write-through on save). It takes a bearer token
//! ([`SyncAuth`]), has its own connection pool and a budget of concurrent syncs (beyond it a
//! request gets 429 at once instead of waiting), answers within a time limit (the sync goes on
//! after a 504 and keeps its place in the budget until it ends), and never returns internal
//! errors: the answer carries a request id, and the writer's log has the error under it.
//!
//! With `"wait": {"regions": [...], "timeout_secs": N}` it also waits until every region named
//! acknowledged what the sync wrote ([`crate::sync_wait`]): 200 when all did, 202 with the same
//! per-region answer when some did not in time. The wait ends before the request's own time
//! limit (whichever is shorter bounds it) and holds no place in the budget of syncs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::failure_policy::{error_chain, FailureKind};
use crate::health::{self, Health};
use crate::metrics as m;
use crate::replicate::Replicator;
use crate::store::ItemStore;
use crate::sync::{sync_environment, SyncError};
use crate::sync_wait::{self, AckReader, WaitFor};

/// Who may call `/v1/sync`.
#[derive(Clone)]
pub enum SyncAuth {
    /// Callers must send `Authorization: Bearer <token>`.
    Token(String),
    /// No token was configured: every sync is refused (403).
    Disabled,
    /// No authentication (`--allow-unauthenticated-sync`, local development only).
    Open,
}

impl std::fmt::Debug for SyncAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncAuth::Token(_) => "Token(..)",
            SyncAuth::Disabled => "Disabled",
            SyncAuth::Open => "Open",
        })
    }
}

/// `/v1/sync`: its replicator (on its own small pool), the ledger its waits read, its budget
/// and its time limit.
pub struct SyncService<S> {
    pub replicator: Replicator<S>,
    pub ledger: AckReader,
    pub auth: SyncAuth,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl<S> SyncService<S> {
    /// `concurrency` syncs at once at most (at least one).
    pub fn new(
        replicator: Replicator<S>,
        ledger: AckReader,
        auth: SyncAuth,
        concurrency: usize,
        timeout: Duration,
    ) -> Self {
        SyncService {
            replicator,
            ledger,
            auth,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            timeout,
        }
    }

    /// The end of a wait that starts a request begun at `started`: a little before the
    /// request's time limit, so that the answer (and not a 504) reaches the caller.
    fn wait_deadline(&self, started: Instant) -> Instant {
        let margin = (self.timeout / 5).min(Duration::from_secs(1));
        started + self.timeout - margin
    }
}

pub struct AppState<S> {
    /// The daemon's replicator; `/healthz` reads the queue through its pool.
    pub replicator: Replicator<S>,
    pub sync: Arc<SyncService<S>>,
    pub health: Arc<Health>,
    pub metrics: PrometheusHandle,
}

impl<S: Clone> Clone for AppState<S> {
    fn clone(&self) -> Self {
        AppState {
            replicator: self.replicator.clone(),
            sync: self.sync.clone(),
            health: self.health.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct SyncRequest {
    /// Environment id or client-side api_key.
    pub environment: String,
    /// Wait for the acknowledgements of these regions.
    #[serde(default)]
    pub wait: Option<WaitRequest>,
}

/// `"wait": {"regions": ["eu-west-2", ...], "timeout_secs": 10}`; without `timeout_secs` the
/// wait lasts at most what the request's time limit leaves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    pub regions: Vec<String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

pub fn router<S: ItemStore>(state: AppState<S>) -> Router {
    Router::new()
        .route("/v1/sync", post(sync::<S>))
        .route("/healthz", get(healthz::<S>))
        .route("/metrics", get(metrics::<S>))
        .with_state(state)
}

/// Equal tokens, compared in a time that does not depend on where they differ.
fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn authorized(auth: &SyncAuth, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    match auth {
        SyncAuth::Open => Ok(()),
        SyncAuth::Disabled => Err((
            StatusCode::FORBIDDEN,
            "sync is disabled: the writer has no sync token configured",
        )),
        SyncAuth::Token(expected) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match given {
                Some(token) if same_token(token.trim(), expected) => Ok(()),
                _ => Err((StatusCode::UNAUTHORIZED, "a valid bearer token is required")),
            }
        }
    }
}

fn answer(status: StatusCode, request_id: &str, body: serde_json::Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

fn refuse(status: StatusCode, request_id: &str, message: &str) -> Response {
    answer(
        status,
        request_id,
        json!({"error": message, "request_id": request_id}),
    )
}

/// The status and the caller's message of a failed sync; the detail goes to the log only.
fn failure(e: &SyncError) -> (StatusCode, &'static str) {
    match e {
        SyncError::NotFound(_) => (
            StatusCode::NOT_FOUND,
            "no environment with that id or api_key",
        ),
        SyncError::Replicate(r) if r.kind() == FailureKind::AwaitingIngestion => (
            StatusCode::CONFLICT,
            "the environment waits for edge writes to be ingested; retry shortly",
        ),
        SyncError::Replicate(r) if r.kind() != FailureKind::Transient => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "the environment could not be replicated; the writer's log has the reason",
        ),
        SyncError::Replicate(_) | SyncError::Lookup(..) | SyncError::ReadBack(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the sync failed for a temporary reason; retry",
        ),
    }
}

async fn sync<S: ItemStore>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let service = &state.sync;
    // Authentication first: nothing about the request is looked at before.
    if let Err((status, message)) = authorized(&service.auth, &headers) {
        m::record_sync(if status == StatusCode::FORBIDDEN {
            "disabled"
        } else {
            "unauthorized"
        });
        tracing::warn!(%request_id, status = status.as_u16(), "sync refused: {message}");
        let mut response = refuse(status, &request_id, message);
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        return response;
    }
    let started = Instant::now();
    let req: SyncRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            m::record_sync("bad_request");
            return refuse(
                StatusCode::BAD_REQUEST,
                &request_id,
                r#"the body must be JSON {"environment": "<id or api_key>"}, optionally with "wait": {"regions": ["<region>", ...], "timeout_secs": <seconds>}"#,
            );
        }
    };
    let wait = match &req.wait {
        None => None,
        Some(w) => {
            let timeout = Duration::from_secs(w.timeout_secs.unwrap_or(service.timeout.as_secs()));
            match WaitFor::new(&w.regions, timeout) {
                Ok(w) => Some(w),
                Err(problem) => {
                    m::record_sync("bad_request");
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        &request_id,
                        &format!("invalid wait: {problem}"),
                    );
                }
            }
        }
    };
    let Ok(permit) = service.permits.clone().try_acquire_owned() else {
        m::record_sync("busy");
        tracing::warn!(%request_id, environment = %req.environment, "sync refused: budget full");
        let mut response = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            &request_id,
            "too many syncs in progress; retry shortly",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    // The sync runs in its own task holding its permit: a caller that gives up (or a 504)
    // never cancels it between a DynamoDB write and its bookkeeping.
    // A wait holds no permit: once the targets are read it only polls the ledger.
    let replicator = service.replicator.clone();
    let ledger = service.ledger.clone();
    let environment = req.environment.clone();
    let request_deadline = service.wait_deadline(started);
    let work = tokio::spawn(async move {
        let permit = permit;
        crate::failpoint::hang_point(crate::failpoint::SYNC_STARTS).await;
        let mut result = sync_environment(&replicator, &environment).await?;
        if let Some(wait) = wait {
            let targets = sync_wait::targets(&replicator, &result).await?;
            drop(permit);
            let asked = Instant::now() + wait.timeout;
            let limited = request_deadline < asked;
            let deadline = if limited { request_deadline } else { asked };
            result.wait = Some(
                sync_wait::wait_for_acks(&ledger, &targets, &wait.regions, deadline, limited).await,
            );
        }
        Ok::<_, SyncError>(result)
    });
    match tokio::time::timeout(service.timeout, work).await {
        Ok(Ok(Ok(result))) => match &result.wait {
            Some(report) if !report.complete => {
                m::record_sync("unconfirmed");
                tracing::warn!(%request_id, environment = %req.environment,
                    unconfirmed = ?report.unconfirmed(), "sync written; not every region acknowledged it in time");
                answer(StatusCode::ACCEPTED, &request_id, json!(result))
            }
            _ => {
                m::record_sync("ok");
                answer(StatusCode::OK, &request_id, json!(result))
            }
        },
        Ok(Ok(Err(e))) => {
            let (status, message) = failure(&e);
            m::record_sync(if status == StatusCode::NOT_FOUND {
                "not_found"
            } else {
                "failed"
            });
            tracing::warn!(%request_id, environment = %req.environment,
                status = status.as_u16(), error = %error_chain(&e), "sync failed");
            refuse(status, &request_id, message)
        }
        Ok(Err(e)) => {
            m::record_sync("failed");
            tracing::error!(%request_id, environment = %req.environment, error = %e, "sync task failed");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                &request_id,
                "the sync failed; the writer's log has the reason",
            )
        }
        Err(_) => {
            m::record_sync("timeout");
            tracing::warn!(%request_id, environment = %req.environment,
                timeout_s = service.timeout.as_secs(), "sync still running at its time limit");
            refuse(
                StatusCode::GATEWAY_TIMEOUT,
                &request_id,
                "the sync did not finish in time; it goes on, and the daemon replicates the change anyway",
            )
        }
    }
}

async fn healthz<S: ItemStore>(State(state): State<AppState<S>>) -> Response {
    let pool = state.replicator.pool();
    let ages = match health::ages(pool).await {
        Ok(ages) => ages,
        Err(e) => {
            tracing::warn!(error = %e, "healthz: cannot read the queue");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "problems": ["postgres is unreachable"]})),
            )
                .into_response();
        }
    };
    let verdict = state.health.verdict(ages);
    if !verdict.healthy {
        // ECS keeps no health check output: the log is where an operator finds why.
        tracing::warn!(problems = ?verdict.problems, "healthz: unhealthy");
    }
    let status = if verdict.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if verdict.healthy { "ok" } else { "unhealthy" },
        "problems": verdict.problems,
        "restarts": verdict.restarts,
        "oldest_due_age_seconds": verdict.oldest_due_age_seconds,
        "oldest_change_age_seconds": verdict.oldest_change_age_seconds,
    });
    (status, Json(body)).into_response()
}

async fn metrics<S: ItemStore>(State(state): State<AppState<S>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn only_the_configured_token_passes() {
        let auth = SyncAuth::Token("s3cret-token-0123456789".into());
        assert!(authorized(&auth, &bearer("Bearer s3cret-token-0123456789")).is_ok());
        for wrong in [
            "Bearer s3cret-token-012345678",
            "Bearer ",
            "s3cret-token-0123456789",
            "Basic s3cret-token-0123456789",
        ] {
            assert_eq!(
                authorized(&auth, &bearer(wrong)).unwrap_err().0,
                StatusCode::UNAUTHORIZED,
                "{wrong}"
            );
        }
        assert_eq!(
            authorized(&auth, &HeaderMap::new()).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            authorized(&SyncAuth::Disabled, &bearer("Bearer x"))
                .unwrap_err()
                .0,
            StatusCode::FORBIDDEN
        );
        assert!(authorized(&SyncAuth::Open, &HeaderMap::new()).is_ok());
        assert_eq!(format!("{auth:?}"), "Token(..)");
    }
}
