//! The daemon's HTTP endpoint: `/metrics` (the registry, encoded at each scrape) and
//! `/healthz`. It runs on a thread of its own, apart from the reading of the kernel's counters,
//! so that a reading that stalls or fails is seen from outside (503) rather than stalling the
//! endpoint with it.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::ConnectInfo,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse as _, Response},
    routing::get,
};
use prometheus_client::registry::Registry;

use super::{
    held::Scrapers,
    profiles::{self, Profiler},
};
use crate::output::prometheus;

/// Whether the kernel's counters are being read: the last successful reading, and the last
/// failure, shared by the reading loop and the endpoint.
pub struct Health {
    last_reading_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Readings older than this mean the daemon is not working.
    stale_after: Duration,
}

impl Health {
    /// Healthy now; stale after three intervals without a reading (at least 3 s).
    pub fn new(interval: Duration) -> Health {
        Health {
            last_reading_ms: AtomicU64::new(now_ms()),
            last_error: Mutex::new(None),
            stale_after: (interval * 3).max(Duration::from_secs(3)),
        }
    }

    pub fn read_ok(&self) {
        self.last_reading_ms.store(now_ms(), Ordering::Relaxed);
        if let Ok(mut error) = self.last_error.lock() {
            *error = None;
        }
    }

    pub fn read_failed(&self, err: &anyhow::Error) {
        if let Ok(mut error) = self.last_error.lock() {
            *error = Some(format!("{err:#}"));
        }
    }

    /// `Ok` while readings are fresh, else why not.
    fn status(&self) -> Result<(), String> {
        let age = now_ms().saturating_sub(self.last_reading_ms.load(Ordering::Relaxed));
        if u128::from(age) <= self.stale_after.as_millis() {
            return Ok(());
        }
        let error = self.last_error.lock().ok().and_then(|error| error.clone());
        Err(match error {
            Some(error) => format!(
                "kernel counters not read for {:.1} s: the last reading failed: {error}",
                age as f64 / 1000.0
            ),
            None => format!(
                "kernel counters not read for {:.1} s: the reading is stalled",
                age as f64 / 1000.0
            ),
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Serves `/metrics` and `/healthz` on `listener` from a thread of its own, until the process
/// exits.
pub fn spawn(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    scrapers: Arc<Scrapers>,
    health: Arc<Health>,
    profiler: Option<Profiler>,
) -> anyhow::Result<()> {
    listener
        .set_nonblocking(true)
        .context("make the listening socket non-blocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("start the HTTP endpoint's runtime")?;
    thread::Builder::new()
        .name("memtrace-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => {
                        log::error!("the HTTP endpoint cannot listen: {err}");
                        return;
                    }
                };
                let app = router(registry, scrapers, health, profiler)
                    .into_make_service_with_connect_info::<SocketAddr>();
                if let Err(err) = axum::serve(listener, app).await {
                    log::error!("the HTTP endpoint stopped: {err}");
                }
            });
        })
        .context("start the HTTP endpoint's thread")?;
    Ok(())
}

fn router(
    registry: Arc<Registry>,
    scrapers: Arc<Scrapers>,
    health: Arc<Health>,
    profiler: Option<Profiler>,
) -> Router {
    let router = Router::new()
        .route(
            "/metrics",
            get(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap| {
                    // Every series created before `began` is in this scrape, at 0 if it is new;
                    // the scrape is recorded once encoded, so no held count is released into
                    // it meanwhile (see `Scrapers`).
                    let began = Instant::now();
                    let agent = headers
                        .get(header::USER_AGENT)
                        .and_then(|agent| agent.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let response = metrics_response(&registry, &headers);
                    scrapers.scraped(format!("{} {agent}", peer.ip()), began);
                    async move { response }
                },
            ),
        )
        .route(
            "/healthz",
            get(move || {
                let status = health.status();
                async move {
                    match status {
                        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        );
    match profiler {
        Some(profiler) => {
            let profiler = Arc::new(profiler);
            router.route(
                "/debug/pprof/faults",
                get(move |uri: Uri| {
                    let profiler = Arc::clone(&profiler);
                    async move { faults_profile(&profiler, uri.query()).await }
                }),
            )
        }
        None => router,
    }
}

/// A faults profile of the seconds the query asks, gzipped protobuf as Go's `net/http/pprof`
/// serves its profiles; a bad query is 400, a profile that could not be taken 500.
async fn faults_profile(profiler: &Profiler, query: Option<&str>) -> Response {
    let seconds = match profiles::seconds_of(query) {
        Ok(seconds) => seconds,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    match profiler.faults(seconds).await {
        Ok(profile) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"faults.pb.gz\"",
                ),
            ],
            profile,
        )
            .into_response(),
        Err(err) => {
            log::warn!("a faults profile could not be taken: {err:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the faults profile could not be taken: {err:#}\n"),
            )
                .into_response()
        }
    }
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), else the classic text format.
fn metrics_response(
    registry: &Registry,
    headers: &HeaderMap,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    match prometheus::openmetrics(registry) {
        Ok(text) if wants_openmetrics => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            prometheus::classic_text(&text),
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "cannot encode the metrics\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_goes_stale_and_says_why() {
        let health = Health::new(Duration::from_millis(1));
        assert_eq!(health.status(), Ok(()));
        health
            .last_reading_ms
            .store(now_ms() - 10_000, Ordering::Relaxed);
        let why = health.status().unwrap_err();
        assert!(why.contains("stalled"), "{why}");
        health.read_failed(&anyhow::anyhow!("map read failed"));
        let why = health.status().unwrap_err();
        assert!(why.contains("map read failed"), "{why}");
        health.read_ok();
        assert_eq!(health.status(), Ok(()));
    }
}
