//! LISTEN on the change log's channel. A notification is only a wake-up hint: the writer
//! also polls, because notifications sent while it was disconnected are lost.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::Notify;

/// Channel the capture trigger notifies (see the capture migration).
pub const CHANNEL: &str = "edge_change_log";

/// Forwards notifications to `wake` until `shutdown` fires; reconnects after errors.
pub async fn forward_notifications(
    pool: PgPool,
    wake: Arc<Notify>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; polling only until it is back");
                if wait_or_shutdown(&mut shutdown, Duration::from_secs(2)).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; polling only until it is back");
            if wait_or_shutdown(&mut shutdown, Duration::from_secs(2)).await {
                return;
            }
            continue;
        }
        // Changes may have arrived while we were not listening.
        wake.notify_one();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                received = listener.recv() => match received {
                    Ok(_) => wake.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

/// Waits `d`; returns true if shutdown was requested meanwhile.
async fn wait_or_shutdown(shutdown: &mut tokio::sync::watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
    }
}
