//! Profiling endpoints of the status server: `/debug/flamegraph.svg` (the host's CPU, from the
//! running profiler) and `/debug/pprof/profile` (the agent's own CPU, in-process sampling).
//!
//! Invariants: a capture only sees samples taken after the request; `seconds` is bounded
//! (1 to [`MAX_SECONDS`]); a client that goes away cancels its capture; errors are one line of
//! cause and one of fix, never a hung request.

use std::time::Duration;

use axum::{
    extract::{Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{state::CaptureRequest, StatusContext};
use crate::profile;

/// The longest capture one request may ask for.
pub const MAX_SECONDS: u64 = 300;
const DEFAULT_SECONDS: u64 = 10;
/// Self-profiling frequency (what Go's and the `pprof` crate's examples use).
const SELF_HZ: i32 = 99;

#[derive(Debug, Deserialize)]
pub struct CaptureQuery {
    seconds: Option<u64>,
    pid: Option<u32>,
}

fn seconds(q: &CaptureQuery) -> Result<Duration, Box<Response>> {
    let s = q.seconds.unwrap_or(DEFAULT_SECONDS);
    if s == 0 || s > MAX_SECONDS {
        return Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            &format!("seconds={s} is out of range"),
            &format!("use seconds=1 to seconds={MAX_SECONDS}"),
        )));
    }
    Ok(Duration::from_secs(s))
}

fn problem(code: StatusCode, cause: &str, fix: &str) -> Response {
    (code, format!("{cause}\nfix: {fix}\n")).into_response()
}

/// `GET /debug/flamegraph.svg?seconds=N[&pid=P]`: a flame graph of the next N seconds.
pub async fn flamegraph(
    State(ctx): State<StatusContext>,
    Query(q): Query<CaptureQuery>,
) -> Response {
    let duration = match seconds(&q) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    if let Some(pid) = q.pid {
        if !crate::procinfo::alive(pid) {
            return problem(
                StatusCode::NOT_FOUND,
                &format!("process {pid} does not exist"),
                "give the pid of a running process (host pid namespace)",
            );
        }
    }
    let Some(profiler) = ctx.state.profiler() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the CPU profiler is not running",
            "enable probes.profiler in the config (see /status for why it stopped)",
        );
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = CaptureRequest {
        duration,
        pid: q.pid,
        reply: tx,
    };
    if profiler.send(req).is_err() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the CPU profiler stopped",
            "see /status for its state",
        );
    }
    // The profiler answers at its first drain after the deadline (within about a second),
    // plus symbolization.
    let p = match tokio::time::timeout(duration + Duration::from_secs(60), rx).await {
        Ok(Ok(p)) => p,
        _ => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the CPU profiler did not answer (it was stopped or reloaded)",
                "retry; see /status for its state",
            )
        }
    };
    let title = match q.pid {
        Some(pid) => format!("CPU of pid {pid}, {} s", duration.as_secs()),
        None => format!("CPU of {}, {} s", p.host_name, duration.as_secs()),
    };
    match tokio::task::spawn_blocking(move || profile::svg::render(&p, &title)).await {
        Ok(Ok(svg)) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Ok(Err(e)) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot render the flame graph: {e}"),
            "report it to the agent's maintainers",
        ),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the flame graph task failed: {e}"),
            "report it to the agent's maintainers",
        ),
    }
}

/// `GET /debug/pprof/profile?seconds=N`: the agent's own CPU profile, gzipped pprof (as Go's
/// `net/http/pprof` serves it, so `go tool pprof http://.../debug/pprof/profile` works).
pub async fn self_profile(Query(q): Query<CaptureQuery>) -> Response {
    let duration = match seconds(&q) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    match profile::selfprof::capture(duration, SELF_HZ).await {
        Ok(p) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile\"",
                ),
            ],
            profile::pprof::encode(&p),
        )
            .into_response(),
        Err(profile::selfprof::SelfProfError::Busy) => problem(
            StatusCode::TOO_MANY_REQUESTS,
            "a self-profile is already being captured",
            "retry when it is done",
        ),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot profile the agent: {e}"),
            "report it to the agent's maintainers",
        ),
    }
}
