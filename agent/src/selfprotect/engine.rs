//! The self-protection task: every `interval` it measures the agent's cost (`cost`), feeds the
//! pressure to the `Ladder`, publishes `/status` and the metric batch, and sends each new level
//! to the runtime, which re-applies the configured probes through `degrade`.
//!
//! eBPF run time: accounting (`BPF_ENABLE_STATS`, a descriptor; the kernel stops counting when
//! it is closed) is on for `bpf_stats_percent` of each interval, and the run time it counted is
//! scaled to the window's length, so the cost of accounting is paid in that share of the time
//! only. Without the privilege, CPU is judged on user + system time alone and `/status` says why.

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use tokio::sync::{mpsc, watch};

use super::{
    config::SelfProtectionConfig,
    cost,
    level::{Hysteresis, Ladder, Level},
    report::{self, LevelChange, SelfProtectionStatus, RECENT_CHANGES},
};
use crate::{metrics::Store, selfstats, status::state::AgentState};

/// Called at each level change with the change and the pressure that caused it.
pub type OnChange = Box<dyn Fn(&LevelChange, f64) + Send + Sync>;

/// Where the task's results go.
pub struct Outputs {
    pub state: Arc<AgentState>,
    pub store: Arc<Store>,
    /// Each new level, for the runtime to apply.
    pub levels: mpsc::Sender<Level>,
    /// Called at each change (the runtime turns it into an OTLP log record).
    pub on_change: OnChange,
}

/// One evaluation's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    pub cpu_millicores: f64,
    pub bpf_cpu_millicores: Option<f64>,
    pub rss_bytes: u64,
}

impl Reading {
    /// Cost over the tightest budget, and the sentence that says which.
    pub fn pressure(&self, c: &SelfProtectionConfig) -> (f64, String) {
        let cpu = self.cpu_millicores + self.bpf_cpu_millicores.unwrap_or(0.0);
        let p_cpu = cpu / f64::from(c.max_cpu_millicores.max(1));
        let p_mem = self.rss_bytes as f64 / c.max_memory_bytes.max(1) as f64;
        let why = if p_cpu >= p_mem {
            format!("cpu {cpu:.1}m of {}m budget", c.max_cpu_millicores)
        } else {
            format!(
                "memory {:.1} MiB of {:.1} MiB budget",
                self.rss_bytes as f64 / 1048576.0,
                c.max_memory_bytes as f64 / 1048576.0
            )
        };
        (p_cpu.max(p_mem), why)
    }
}

/// Measures one interval: CPU over its length, eBPF run time over its sampled window.
async fn measure(
    c: &SelfProtectionConfig,
    bpf_error: &mut Option<String>,
) -> (Reading, cost::KernelCost) {
    let t0 = Instant::now();
    let cpu0 = selfstats::sample().cpu_seconds;
    let mut bpf = None;
    let window = c.interval.mul_f64(f64::from(c.bpf_stats_percent) / 100.0);
    // One reading before the window (it is the interval's reading when there is no window).
    let mut kernel = cost::kernel();
    if !window.is_zero() {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => {
                let k0 = kernel;
                let w0 = Instant::now();
                tokio::time::sleep(window).await;
                kernel = cost::kernel();
                let took = w0.elapsed();
                drop(fd);
                let ran = kernel.run_time_ns.saturating_sub(k0.run_time_ns) as f64;
                bpf = Some(ran / took.as_nanos().max(1) as f64 * 1000.0);
                *bpf_error = None;
            }
            Err(e) => {
                *bpf_error = Some(format!(
                    "cannot turn on eBPF run-time accounting (BPF_ENABLE_STATS): {e}; \
                     fix: run as root or with CAP_SYS_ADMIN"
                ));
            }
        }
    }
    let rest = c.interval.saturating_sub(t0.elapsed());
    tokio::time::sleep(rest).await;
    let s = selfstats::sample();
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    (
        Reading {
            cpu_millicores: (s.cpu_seconds - cpu0).max(0.0) / secs * 1000.0,
            bpf_cpu_millicores: bpf,
            rss_bytes: s.rss_bytes,
        },
        kernel,
    )
}

/// Runs until the task is aborted; reconfigures itself when `cfg` changes.
pub async fn run(mut cfg: watch::Receiver<SelfProtectionConfig>, out: Outputs) {
    let mut ladder = Ladder::default();
    let mut status = SelfProtectionStatus::default();
    let mut bpf_error = None;
    let started = SystemTime::now();
    loop {
        let c = cfg.borrow_and_update().clone();
        status.enabled = c.enabled;
        status.max_cpu_millicores = c.max_cpu_millicores;
        status.max_memory_bytes = c.max_memory_bytes;
        if !c.enabled {
            if let Some(to) = ladder.reset() {
                change(
                    &mut status,
                    &out,
                    to,
                    "self-protection turned off".into(),
                    0.0,
                )
                .await;
            }
            status.level = Level::Normal;
            out.state.set_self_protection(Some(status.clone()));
            out.store.remove(report::SOURCE);
            if cfg.changed().await.is_err() {
                return;
            }
            continue;
        }
        let (reading, kernel) = tokio::select! {
            r = measure(&c, &mut bpf_error) => r,
            changed = cfg.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        };
        let (pressure, why) = reading.pressure(&c);
        status.pressure = (pressure * 1000.0).round() / 1000.0;
        status.cpu_millicores = (reading.cpu_millicores * 10.0).round() / 10.0;
        status.bpf_cpu_millicores = reading
            .bpf_cpu_millicores
            .map(|m| (m * 100.0).round() / 100.0);
        status.rss_bytes = reading.rss_bytes;
        status.kernel = kernel;
        status.bpf_stats_error = bpf_error.clone();
        let h = Hysteresis {
            escalate_after: c.escalate_after,
            recover_after: c.recover_after,
            recover_below: f64::from(c.recover_below_percent) / 100.0,
        };
        if let Some(to) = ladder.observe(pressure, h) {
            let reason = if to > status.level {
                format!("over budget: {why}")
            } else {
                format!("under {}% of budgets: {why}", c.recover_below_percent)
            };
            change(&mut status, &out, to, reason, pressure).await;
        }
        out.state.set_self_protection(Some(status.clone()));
        out.store
            .publish(report::batch(&status, started, SystemTime::now()));
    }
}

async fn change(
    status: &mut SelfProtectionStatus,
    out: &Outputs,
    to: Level,
    reason: String,
    pressure: f64,
) {
    let c = LevelChange {
        time_unix_nano: crate::export::metrics::unix_nanos(SystemTime::now()),
        from: status.level,
        to,
        reason,
    };
    if to > c.from {
        tracing::warn!(
            from = c.from.as_str(),
            to = to.as_str(),
            "self-protection: {}",
            c.reason
        );
    } else {
        tracing::info!(
            from = c.from.as_str(),
            to = to.as_str(),
            "self-protection: {}",
            c.reason
        );
    }
    (out.on_change)(&c, pressure);
    status.level = to;
    status.shed = super::degrade::shed(to);
    status.changes.push_front(c);
    status.changes.truncate(RECENT_CHANGES);
    let _ = out.levels.send(to).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_is_the_tightest_budget_and_counts_bpf_time() {
        let c = SelfProtectionConfig::default(); // 20m, 64 MiB
        let r = Reading {
            cpu_millicores: 10.0,
            bpf_cpu_millicores: Some(20.0),
            rss_bytes: 32 << 20,
        };
        let (p, why) = r.pressure(&c);
        assert!((p - 1.5).abs() < 1e-9, "{p}");
        assert!(why.starts_with("cpu 30.0m"), "{why}");
        let r = Reading {
            cpu_millicores: 1.0,
            bpf_cpu_millicores: None,
            rss_bytes: 128 << 20,
        };
        let (p, why) = r.pressure(&c);
        assert!((p - 2.0).abs() < 1e-9, "{p}");
        assert!(why.starts_with("memory 128.0 MiB"), "{why}");
    }
}
