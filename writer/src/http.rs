//! The writer's small HTTP server: `POST /v1/sync`, `GET /healthz`, `GET /metrics`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;

use crate::replicate::{error_chain, FailureKind, Replicator};
use crate::store::ItemStore;
use crate::sync::{sync_environment, SyncError};

pub struct AppState<S> {
    pub replicator: Replicator<S>,
    pub metrics: PrometheusHandle,
}

impl<S: Clone> Clone for AppState<S> {
    fn clone(&self) -> Self {
        AppState {
            replicator: self.replicator.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct SyncRequest {
    /// Environment id or client-side api_key.
    pub environment: String,
}

pub fn router<S: ItemStore>(state: AppState<S>) -> Router {
    Router::new()
        .route("/v1/sync", post(sync::<S>))
        .route("/healthz", get(healthz::<S>))
        .route("/metrics", get(metrics::<S>))
        .with_state(state)
}

async fn sync<S: ItemStore>(
    State(state): State<AppState<S>>,
    Json(req): Json<SyncRequest>,
) -> Response {
    match sync_environment(&state.replicator, &req.environment).await {
        Ok(result) => (StatusCode::OK, Json(result)).into_response(),
        Err(e) => {
            let status = match &e {
                SyncError::NotFound(_) => StatusCode::NOT_FOUND,
                SyncError::Replicate(r) if r.kind() == FailureKind::Transient => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                SyncError::Replicate(r) if r.kind() == FailureKind::AwaitingIngestion => {
                    StatusCode::CONFLICT
                }
                SyncError::Replicate(_) => StatusCode::UNPROCESSABLE_ENTITY,
                SyncError::Lookup(..) => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, Json(json!({"error": error_chain(&e)}))).into_response()
        }
    }
}

async fn healthz<S: ItemStore>(State(state): State<AppState<S>>) -> Response {
    match sqlx::query("SELECT 1")
        .execute(state.replicator.pool())
        .await
    {
        Ok(_) => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "error": format!("postgres: {e}")})),
        )
            .into_response(),
    }
}

async fn metrics<S: ItemStore>(State(state): State<AppState<S>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
