//! The HTTP side: `/metrics`, `/health`, `/ready` with axum.

use super::{Error, Metrics};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio_util::sync::CancellationToken;

/// Content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// What `/ready` answers: 503 while starting, 200 once the daemon polls, 503 while draining.
/// Clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// Starting: not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// The daemon polls GitLab: ready.
    pub fn set_ready(&self) {
        // Never go back from draining to ready: a drain is final for this process.
        let _ = self
            .0
            .compare_exchange(STARTING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Shutdown started: not ready any more (load balancers and orchestrators stop sending).
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::SeqCst);
    }

    /// True between `set_ready` and `set_draining`.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst) == READY
    }

    fn state_name(&self) -> &'static str {
        match self.0.load(Ordering::SeqCst) {
            READY => "ready",
            DRAINING => "draining",
            _ => "starting",
        }
    }
}

/// A bound, not yet serving, metrics listener.
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

/// Binds `listen_address` (`host:port`; port 0 picks one).
pub async fn bind(listen_address: &str) -> Result<Server, Error> {
    let listener = tokio::net::TcpListener::bind(listen_address)
        .await
        .map_err(|source| Error::Bind {
            address: listen_address.to_string(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        address: listen_address.to_string(),
        source,
    })?;
    Ok(Server { listener, addr })
}

/// Binds and serves until `cancel` fires; the daemon's one-liner.
pub async fn serve(
    listen_address: &str,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    cancel: CancellationToken,
) -> Result<(), Error> {
    bind(listen_address)
        .await?
        .serve(metrics, readiness, cancel)
        .await
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

impl Server {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `cancel` fires, then finishes in-flight requests and returns.
    pub async fn serve(
        self,
        metrics: Arc<Metrics>,
        readiness: Readiness,
        cancel: CancellationToken,
    ) -> Result<(), Error> {
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/health", get(|| async { (StatusCode::OK, "ok\n") }))
            .route("/ready", get(ready_handler))
            .with_state(AppState { metrics, readiness });
        tracing::info!(address = %self.addr, "metrics server listening");
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
            .map_err(|source| Error::Serve {
                address: self.addr.to_string(),
                source,
            })
    }
}

async fn metrics_handler(State(state): State<AppState>) -> axum::response::Response {
    // Rendering reads /proc; keep it off the async workers.
    match tokio::task::spawn_blocking(move || state.metrics.render()).await {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "rendering metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn ready_handler(State(state): State<AppState>) -> (StatusCode, String) {
    let status = if state.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{}\n", state.readiness.state_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_moves_forward_only() {
        let r = Readiness::new();
        assert!(!r.is_ready());
        r.set_ready();
        assert!(r.is_ready());
        r.set_draining();
        r.set_ready();
        assert!(!r.is_ready());
        assert_eq!(r.state_name(), "draining");
    }
}
