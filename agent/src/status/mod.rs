//! The local HTTP status server: `/healthz`, `/readyz`, `/status` (JSON), `/metrics`
//! (Prometheus text of the metric store plus the agent's self-metrics) and the profiling
//! endpoints in `debug.rs`.
//!
//! Invariants: handlers only take cheap snapshots (no lock is held across an await); self-metrics
//! are computed per scrape and never published to the store; a shutdown stops accepting at once
//! and waits at most [`SHUTDOWN_GRACE`] for in-flight requests.
//!
//! Extending: `router(ctx).merge(Router::new().route("/debug/x", get(h)))` (the extra router
//! must not set its own fallback), served with [`serve_router`]; add the path to [`ROUTES`] so
//! the 404 body lists it.

pub mod access;
pub mod debug;
pub mod state;

use std::{
    collections::BTreeMap,
    future::{Future, IntoFuture},
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::{
    metrics::{prometheus, Store},
    selfstats::{self, SelfStats},
};
use state::{AgentState, ExporterStatus, MapStats, NetworkStatus, ProbeStatus};

/// The routes the 404 body lists.
pub const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/status",
    "/metrics",
    "/debug/flamegraph.svg",
    "/debug/pprof/profile",
];

/// How long a shutdown waits for in-flight requests before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the handlers read.
#[derive(Clone)]
pub struct StatusContext {
    pub state: Arc<AgentState>,
    pub store: Arc<Store>,
    pub version: &'static str,
    /// Histogram buckets on `/metrics`.
    pub buckets: prometheus::Buckets,
    /// The `transform:`/`filter:` pipeline `/metrics` applies (as the exporter does).
    pub transform: Arc<crate::transform::Transformer>,
}

/// The status endpoint could not listen. Displays as two lines: cause, then `fix: ...`.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}\nfix: {fix}")]
pub struct StatusError {
    pub addr: SocketAddr,
    /// Short lower-case reason (`address already in use`).
    pub reason: String,
    pub fix: String,
    #[source]
    pub source: io::Error,
}

impl StatusError {
    /// Explains a bind failure of `addr`.
    pub fn bind(addr: SocketAddr, source: io::Error) -> Self {
        const CHOOSE: &str = "choose another address with --status-addr or status.listen";
        let (reason, fix) = match source.kind() {
            io::ErrorKind::AddrInUse => (
                "address already in use".to_string(),
                format!(
                    "another process (or another agent) uses port {}; {CHOOSE}, or stop the other process",
                    addr.port()
                ),
            ),
            io::ErrorKind::PermissionDenied if addr.port() < 1024 => (
                "permission denied".to_string(),
                format!(
                    "ports below 1024 need root or CAP_NET_BIND_SERVICE; {CHOOSE} (a port of 1024 or more, e.g. 127.0.0.1:9464)"
                ),
            ),
            io::ErrorKind::PermissionDenied => (
                "permission denied".to_string(),
                format!("a security policy refused the bind; {CHOOSE}"),
            ),
            io::ErrorKind::AddrNotAvailable => (
                "address not available on this host".to_string(),
                format!("{CHOOSE} (an address of this host, e.g. 127.0.0.1 or 0.0.0.0)"),
            ),
            _ => (strip_os_error(&source), CHOOSE.to_string()),
        };
        StatusError {
            addr,
            reason,
            fix,
            source,
        }
    }
}

/// `Address already in use (os error 98)` → `address already in use`.
fn strip_os_error(e: &io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => &s[..i],
        None => &s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Binds the status endpoint's listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StatusError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StatusError::bind(addr, e))
}

/// Serves [`router`] until `shutdown` completes, then stops gracefully.
pub async fn serve(
    listener: TcpListener,
    ctx: StatusContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_router(listener, router(ctx), shutdown).await
}

/// Serves any router (e.g. [`router`] merged with more routes) until `shutdown` completes;
/// new connections stop at once, in-flight requests get [`SHUTDOWN_GRACE`].
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = fired_tx.send(());
    };
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::pin!(server);
    let grace_over = async {
        match fired_rx.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            // The server ended on its own; the other branch completes.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        r = &mut server => r,
        _ = grace_over => {
            tracing::warn!("status endpoint: in-flight requests still open after {SHUTDOWN_GRACE:?}; closing");
            Ok(())
        }
    }
}

/// Every status route with a 404 fallback listing [`ROUTES`].
pub fn router(ctx: StatusContext) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/debug/flamegraph.svg", get(debug::flamegraph))
        .route("/debug/pprof/profile", get(debug::self_profile))
        .fallback(not_found)
        .with_state(ctx)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ctx): State<StatusContext>) -> Response {
    match ctx.state.readiness() {
        Ok(()) => "ready\n".into_response(),
        Err(why) => {
            let mut body = String::new();
            for w in why {
                body.push_str(&w.replace('\n', " "));
                body.push('\n');
            }
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }
}

/// The `/status` document.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub version: &'static str,
    pub uptime_seconds: f64,
    /// RFC 3339, UTC, seconds precision.
    pub started_at: String,
    pub started_at_unix: u64,
    pub config_hash: String,
    pub ready: bool,
    pub not_ready_reasons: Vec<String>,
    pub probes: BTreeMap<String, ProbeStatus>,
    pub maps: BTreeMap<String, MapStats>,
    pub exporter: ExporterStatus,
    pub network: NetworkStatus,
    /// Anomaly detection: the engine's figures.
    pub detection: crate::detection::status::DetectionStatus,
    /// Recent anomalies, newest first (at most `detection.recent`).
    pub anomalies: Vec<crate::detection::status::AnomalyEntry>,
    /// The OpAMP client (absent when OpAMP is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opamp: Option<crate::opamp::status::OpampStatus>,
    /// The enforcement engine: mode, rules, limits in effect, kernel counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<crate::enforcement::status::EnforcementStatus>,
    /// Recent enforcement decisions, newest first.
    pub decisions: Vec<std::sync::Arc<crate::enforcement::audit::DecisionRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_protection: Option<crate::selfprotect::report::SelfProtectionStatus>,
    #[serde(rename = "self")]
    pub self_stats: SelfStats,
}

/// A snapshot of everything `/status` reports.
pub fn report(ctx: &StatusContext) -> StatusReport {
    let s = &ctx.state;
    let not_ready_reasons = s.readiness().err().unwrap_or_default();
    let detection = s.detection();
    StatusReport {
        version: ctx.version,
        uptime_seconds: (s.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        started_at: rfc3339(s.started_at),
        started_at_unix: unix_secs(s.started_at),
        config_hash: s.config_hash(),
        ready: not_ready_reasons.is_empty(),
        not_ready_reasons,
        probes: s.probes(),
        maps: s.maps(),
        exporter: s.exporter(),
        network: s.network(),
        detection: detection.status,
        anomalies: detection.anomalies,
        opamp: s.opamp(),
        enforcement: s.enforcement(),
        decisions: s.decisions(),
        self_protection: s.self_protection(),
        self_stats: selfstats::sample(),
    }
}

async fn status(State(ctx): State<StatusContext>) -> Json<StatusReport> {
    Json(report(&ctx))
}

async fn metrics(State(ctx): State<StatusContext>) -> Response {
    let snapshot = || {
        let mut batches = ctx.store.snapshot();
        let own = selfstats::batch(&selfstats::sample(), &ctx.state, ctx.state.started_at);
        batches.push(Arc::new(own));
        batches
    };
    // What leaves the agent is transformed, with the exporter's resource for statements to read
    // (Prometheus text carries no resource).
    let resource = ctx.transform.resource();
    let now = SystemTime::now();
    match ctx
        .transform
        .metrics(crate::transform::Consumer::Scrape, snapshot, &resource, now)
    {
        Ok(view) => {
            let text = prometheus::encode_with(&view.batches, ctx.buckets);
            // Its attribute lists serve the next scrape (the transform's per-series cache).
            ctx.transform
                .recycle(crate::transform::Consumer::Scrape, view);
            ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn not_found() -> (StatusCode, String) {
    (
        StatusCode::NOT_FOUND,
        format!("not found; routes: {}\n", ROUTES.join(" ")),
    )
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2023-11-14T22:13:20Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = unix_secs(t) as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        sync::oneshot,
        task::JoinHandle,
    };

    use super::*;
    use state::{ProbeState, ProbeStatus};

    struct Server {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<io::Result<()>>,
    }

    async fn start(ctx: StatusContext) -> Server {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, ctx, async move {
            let _ = rx.await;
        }));
        Server { addr, stop, task }
    }

    fn ctx() -> StatusContext {
        StatusContext {
            state: Arc::new(AgentState::new("abc123".into())),
            store: Store::new(),
            version: "1.2.3",
            buckets: prometheus::Buckets::Full,
            transform: crate::transform::Transformer::passthrough(),
        }
    }

    /// (status code, raw headers, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn health_status_metrics_and_404() {
        let c = ctx();
        c.store
            .publish(crate::metrics::fixtures::errors_batch("syscalls", 3.0));
        c.state.set_map(
            "SYSCALL_STATS",
            MapStats {
                probe: "syscalls".into(),
                processed: 5,
                ..Default::default()
            },
        );
        let srv = start(c.clone()).await;

        let (code, head, body) = get(srv.addr, "/healthz").await;
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        assert!(head.contains("content-type: text/plain"), "{head}");

        let (code, head, body) = get(srv.addr, "/status").await;
        assert_eq!(code, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["version"], "1.2.3");
        assert_eq!(v["config_hash"], "abc123");
        assert_eq!(v["ready"], false);
        assert_eq!(v["not_ready_reasons"][0], "pipeline not running");
        assert!(v["uptime_seconds"].as_f64().unwrap() >= 0.0);
        assert!(v["started_at"].as_str().unwrap().ends_with('Z'));
        assert!(v["started_at_unix"].as_u64().unwrap() > 1_600_000_000);
        assert!(v["probes"].as_object().unwrap().is_empty());
        assert_eq!(v["maps"]["SYSCALL_STATS"]["processed"], 5);
        // Nothing written yet: health is unknown (null), not failing.
        assert!(v["exporter"]["healthy"].is_null(), "{v}");
        assert!(v["self"]["rss_bytes"].as_u64().unwrap() > 0);
        for k in ["cpu_seconds", "peak_rss_bytes", "threads", "open_fds"] {
            assert!(v["self"][k].is_number(), "{k}: {body}");
        }

        let (code, head, body) = get(srv.addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(
            body.contains("# TYPE process_syscall_errors_total counter\n"),
            "{body}"
        );
        assert!(body.contains("process_syscall_errors_total{syscall_name=\"openat\"} 3\n"));
        assert!(
            body.contains("# TYPE process_memory_usage_bytes gauge\n"),
            "{body}"
        );
        assert!(body.contains(
            "agent_ebpf_events_processed_total{probe=\"syscalls\",map=\"SYSCALL_STATS\"} 5\n"
        ));
        // Self-metrics are per scrape, not stored.
        assert_eq!(c.store.snapshot().len(), 1);

        let (code, _, body) = get(srv.addr, "/nope").await;
        assert_eq!(code, 404);
        assert_eq!(
            body,
            "not found; routes: /healthz /readyz /status /metrics /debug/flamegraph.svg /debug/pprof/profile\n"
        );

        let _ = srv.stop.send(());
        srv.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn readiness_goes_from_503_to_200() {
        let c = ctx();
        c.state.set_probe(
            "syscalls",
            ProbeStatus {
                state: ProbeState::Failed,
                error: Some("attach failed".into()),
                fix: None,
                hooks: vec![],
            },
        );
        let srv = start(c.clone()).await;

        let (code, _, body) = get(srv.addr, "/readyz").await;
        assert_eq!(code, 503);
        assert_eq!(
            body,
            "pipeline not running\nprobe syscalls is Failed: attach failed\n"
        );

        c.state.set_pipeline_running(true);
        c.state.set_probe(
            "syscalls",
            ProbeStatus {
                state: ProbeState::Attached,
                error: None,
                fix: None,
                hooks: vec![],
            },
        );
        let (code, _, body) = get(srv.addr, "/readyz").await;
        assert_eq!((code, body.as_str()), (200, "ready\n"));
        let (_, _, body) = get(srv.addr, "/status").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], true);
        assert_eq!(v["probes"]["syscalls"]["state"], "attached");

        let _ = srv.stop.send(());
        srv.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn merged_routes_and_graceful_shutdown_frees_the_port() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(ctx())
            .merge(Router::new().route("/debug/x", axum::routing::get(|| async { "x\n" })));
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_router(listener, app, async move {
            let _ = rx.await;
        }));
        assert_eq!(get(addr, "/debug/x").await.2, "x\n");
        assert_eq!(get(addr, "/healthz").await.2, "ok\n");
        assert_eq!(get(addr, "/other").await.0, 404);

        // An idle keep-alive connection must not hold the shutdown.
        let _idle = TcpStream::connect(addr).await.unwrap();
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("shutdown timed out")
            .unwrap()
            .unwrap();
        bind(addr).await.expect("port freed after shutdown");
    }

    #[tokio::test]
    async fn bind_error_is_two_lines_with_a_fix() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        let msg = err.to_string();
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines.len(), 2, "{msg}");
        assert_eq!(
            lines[0],
            format!("cannot listen on {addr}: address already in use")
        );
        assert!(lines[1].starts_with("fix: "), "{msg}");
        assert!(lines[1].contains("--status-addr"), "{msg}");
        assert!(lines[1].contains("status.listen"), "{msg}");

        let low = StatusError::bind(
            "0.0.0.0:80".parse().unwrap(),
            io::Error::from(io::ErrorKind::PermissionDenied),
        )
        .to_string();
        assert!(low.starts_with("cannot listen on 0.0.0.0:80: permission denied\nfix: "));
        assert!(low.contains("below 1024"), "{low}");

        let other = StatusError::bind(
            "127.0.0.1:9464".parse().unwrap(),
            io::Error::from_raw_os_error(libc::EINVAL),
        )
        .to_string();
        assert_eq!(other.lines().count(), 2, "{other}");
        assert!(other.starts_with("cannot listen on 127.0.0.1:9464: invalid argument\n"));
    }

    #[test]
    fn rfc3339_dates() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
