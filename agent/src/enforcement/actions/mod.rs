//! The actions: what each does to its target, the undo it journals first, and the kernel
//! objects some of them own (loaded on first use). One file per action kind.
//!
//! A decision goes: [`plan`] (the concrete target — the process, or the cgroup and hierarchy
//! the action works in — with the cgroup safety checks), [`undo_of`] (read what must be
//! restored, before anything changes), the journal write, then [`Kernel::execute`].

pub mod alert;
pub mod block;
pub mod cpu_limit;
pub mod degrade;
pub mod freeze;
pub mod kill;
pub mod links;
pub mod rate_limit;
pub mod signal;

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::SystemTime,
};

use super::{
    cgroup::{self, CgroupTarget, Hierarchies},
    journal::Undo,
    pins::Pins,
    rules::{Action, Prefix, Rule, Sig},
    safety::{Refusal, Safety},
    scope::Target,
};

/// The concrete target of one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// A process, by pid and start time.
    Process { pid: u32, start: u64 },
    /// A cgroup: hierarchy key (`""` for v2, else the v1 controller), path and directory.
    Cgroup {
        key: String,
        path: String,
        dir: PathBuf,
    },
    /// The agent itself (degrade) or nothing at all (alert).
    Agent,
}

impl Plan {
    /// The cooldown and "already active" key.
    pub fn key(&self) -> String {
        match self {
            Plan::Process { pid, start } => format!("pid:{pid}:{start}"),
            Plan::Cgroup { key, path, .. } if key.is_empty() => format!("cgroup:{path}"),
            Plan::Cgroup { key, path, .. } => format!("cgroup:{key}:{path}"),
            Plan::Agent => "agent".into(),
        }
    }

    /// The cgroup path, for audit records.
    pub fn cgroup(&self) -> Option<&str> {
        match self {
            Plan::Cgroup { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Why a decision cannot act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    Refused(Refusal),
    Failed(String),
}

/// Resolves the target of `rule` for process `t` and runs the cgroup safety checks.
pub fn plan(
    rule: &Rule,
    t: &Target,
    h: &Hierarchies,
    safety: &Safety,
    proc_root: &Path,
) -> Result<Plan, Blocked> {
    let a = &rule.action;
    if !a.touches_target() {
        return Ok(Plan::Agent);
    }
    if !a.on_cgroup() {
        return Ok(Plan::Process {
            pid: t.pid,
            start: t.start_ticks,
        });
    }
    let ct = CgroupTarget::resolve(&rule.scope, t);
    let v2 = |file: &str| -> Option<(String, String, PathBuf)> {
        let p = ct.v2.as_ref()?;
        let d = h.v2_dir(p)?;
        (file.is_empty() || d.join(file).exists()).then(|| (String::new(), p.clone(), d))
    };
    let v1 = |ctrl: &str, file: &str| -> Option<(String, String, PathBuf)> {
        let p = ct.v1.get(ctrl)?;
        let d = h.v1_dir(ctrl, p)?;
        d.join(file)
            .exists()
            .then(|| (ctrl.to_string(), p.clone(), d))
    };
    let chosen = match a {
        Action::Freeze | Action::Thaw => {
            v2("cgroup.freeze").or_else(|| v1("freezer", "freezer.state"))
        }
        Action::Kill | Action::RestartContainer => v2("cgroup.kill")
            .or_else(|| v1("freezer", "cgroup.procs"))
            .or_else(|| v1("cpu", "cgroup.procs")),
        Action::CpuLimit { .. } => v2("cpu.max").or_else(|| v1("cpu", "cpu.cfs_quota_us")),
        Action::RateLimit { .. } | Action::Block { .. } => v2(""),
        _ => None,
    };
    let Some((key, path, dir)) = chosen else {
        let why = match a {
            Action::RateLimit { .. } | Action::Block { .. } => {
                "the target has no cgroup v2 of its own (with the cgroupfs driver on a hybrid host a container's v2 cgroup is its runtime's service); kernel network limits attach to v2 cgroups"
            }
            Action::CpuLimit { .. } => "the target has no cgroup of its own with a cpu controller (v2 cpu.max or v1 cpu)",
            _ => "the target has no cgroup of its own for this action",
        };
        return Err(Blocked::Failed(why.to_string()));
    };
    safety
        .check_cgroup(&key, &path, &dir, &rule.scope, proc_root)
        .map_err(Blocked::Refused)?;
    Ok(Plan::Cgroup { key, path, dir })
}

/// What undoes `rule`'s action on `plan`, read before acting (`None`: nothing to undo).
pub fn undo_of(rule: &Rule, plan: &Plan, h: &Hierarchies) -> Result<Option<Undo>, String> {
    let _ = h;
    Ok(match (&rule.action, plan) {
        (Action::Signal { sig: Sig::Stop, .. }, Plan::Process { pid, start }) => Some(Undo::Cont {
            pid: *pid,
            start_ticks: *start,
        }),
        (Action::Freeze, Plan::Cgroup { key, dir, .. }) => Some(Undo::Thaw {
            v1: !key.is_empty(),
            dir: dir.clone(),
        }),
        (Action::CpuLimit { .. }, Plan::Cgroup { dir, key, .. }) => {
            let file = if key.is_empty() {
                "cpu.max"
            } else {
                "cpu.cfs_quota_us"
            };
            Some(Undo::Restore {
                dir: dir.clone(),
                file: file.into(),
                previous: cgroup::read(dir, file)?,
            })
        }
        (Action::RateLimit { egress, ingress }, Plan::Cgroup { dir, .. }) => {
            let mut directions = Vec::new();
            if egress.is_some() {
                directions.push("egress".to_string());
            }
            if ingress.is_some() {
                directions.push("ingress".to_string());
            }
            Some(Undo::RateLimit {
                cgroup_id: cgroup::cgroup_id(dir)
                    .map_err(|e| format!("cgroup id of {}: {e}", dir.display()))?,
                dir: dir.clone(),
                directions,
            })
        }
        (Action::Block { peers, ports }, Plan::Cgroup { dir, .. }) => Some(Undo::Block {
            cgroup_id: cgroup::cgroup_id(dir)
                .map_err(|e| format!("cgroup id of {}: {e}", dir.display()))?,
            dir: dir.clone(),
            peers: peers.iter().map(Prefix::to_string).collect(),
            ports: ports.clone(),
        }),
        (Action::Degrade { .. }, _) => Some(Undo::Degrade),
        _ => None,
    })
}

/// What an executed action did.
#[derive(Clone, Debug, PartialEq)]
pub struct Acted {
    pub detail: String,
    /// When the action was in effect (`None`: armed in the kernel, in effect at the process's
    /// next matching syscall).
    pub in_effect: Option<SystemTime>,
}

/// The kernel objects of the actions and the cgroup mounts. An enforce-mode rule's objects are
/// loaded when the rule is applied ([`Kernel::prepare`]); each sits behind its own lock so that
/// independent actions of one drain run concurrently ([`Kernel::execute`] takes `&self`).
pub struct Kernel {
    pub hier: Hierarchies,
    pub pins: Pins,
    rate: Mutex<Option<rate_limit::RateLimiter>>,
    block: Mutex<Option<block::Blocker>>,
    signals: Mutex<Option<signal::KernelSignals>>,
    pub degrade: degrade::DegradeHub,
}

/// Loads into `slot` on first use; the guard holds the loaded object.
fn loaded<'a, T>(
    slot: &'a Mutex<Option<T>>,
    load: impl FnOnce() -> Result<T, crate::ebpf::LoadError>,
) -> Result<MappedMutexGuard<'a, T>, String> {
    let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(load().map_err(|e| format!("{}; {}", e.cause, e.fix))?);
    }
    Ok(MappedMutexGuard::new(g))
}

/// A lock guard on a slot known to be loaded.
pub struct MappedMutexGuard<'a, T>(MutexGuard<'a, Option<T>>);

impl<'a, T> MappedMutexGuard<'a, T> {
    fn new(g: MutexGuard<'a, Option<T>>) -> Self {
        debug_assert!(g.is_some());
        MappedMutexGuard(g)
    }
}

impl<T> std::ops::Deref for MappedMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("loaded")
    }
}

impl<T> std::ops::DerefMut for MappedMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("loaded")
    }
}

impl Kernel {
    pub fn new(hier: Hierarchies, pins: Pins, degrade: degrade::DegradeHub) -> Kernel {
        Kernel {
            hier,
            pins,
            rate: Mutex::new(None),
            block: Mutex::new(None),
            signals: Mutex::new(None),
            degrade,
        }
    }

    pub fn rate(&self) -> Result<MappedMutexGuard<'_, rate_limit::RateLimiter>, String> {
        loaded(&self.rate, || rate_limit::RateLimiter::load(&self.pins))
    }

    pub fn block(&self) -> Result<MappedMutexGuard<'_, block::Blocker>, String> {
        loaded(&self.block, || block::Blocker::load(&self.pins))
    }

    pub fn signals(&self) -> Result<MappedMutexGuard<'_, signal::KernelSignals>, String> {
        loaded(&self.signals, signal::KernelSignals::load)
    }

    pub fn loaded_rate(&mut self) -> Option<&mut rate_limit::RateLimiter> {
        self.rate
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
    }

    pub fn loaded_block(&mut self) -> Option<&block::Blocker> {
        self.block
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
    }

    pub fn loaded_signals(&mut self) -> Option<&mut signal::KernelSignals> {
        self.signals
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
    }

    /// Loads the kernel objects the enforce-mode `rules` will need, so a rule's first action
    /// does not wait for a load and the verifier (~0.25 s for `block` on the development VM).
    /// A load error is logged here and reported again, per decision, when the rule fires.
    pub fn prepare(&self, rules: &[Rule]) {
        for r in rules.iter().filter(|r| r.mode == super::Mode::Enforce) {
            let loaded = match &r.action {
                Action::RateLimit { .. } => self.rate().map(|_| ()),
                Action::Block { .. } => self.block().map(|_| ()),
                Action::Signal {
                    in_kernel: Some(_), ..
                } => self.signals().map(|_| ()),
                _ => Ok(()),
            };
            if let Err(e) = loaded {
                tracing::error!(rule = %r.name, "enforcement: cannot load the action's kernel object: {e}");
            }
        }
    }

    /// Loads the kernel objects whose maps a predecessor pinned (to take its limits over).
    pub fn adopt_pinned(&self) {
        use agent_common::{block::RULES_MAP, ratelimit::LIMITS_MAP};
        if self.pins.map(LIMITS_MAP).exists() {
            if let Err(e) = self.rate() {
                tracing::error!("rate limiter: cannot take over pinned limits: {e}");
            }
        }
        if self.pins.map(RULES_MAP).exists() {
            if let Err(e) = self.block() {
                tracing::error!("blocker: cannot take over pinned blocks: {e}");
            }
        }
    }

    /// Acts. `id` is the journal id (block rules carry it), `source` names a degrade.
    pub fn execute(&self, rule: &Rule, plan: &Plan, id: u64) -> Result<Acted, String> {
        let now = SystemTime::now;
        match (&rule.action, plan) {
            (
                Action::Signal {
                    sig,
                    in_kernel: Some(nr),
                },
                Plan::Process { pid, start },
            ) => {
                if signal::start_ticks(*pid) != Some(*start) {
                    return Err(format!("pid {pid} exited"));
                }
                self.signals()?.arm(*pid, sig.number(), *nr)?;
                Ok(Acted {
                    detail: format!(
                        "armed: the kernel sends {} at pid {pid}'s next {}",
                        sig.name(),
                        crate::probes::syscalls::names::syscall_name(*nr)
                    ),
                    in_effect: None,
                })
            }
            (
                Action::Signal {
                    sig,
                    in_kernel: None,
                },
                Plan::Process { pid, start },
            ) => {
                signal::send(*pid, *start, sig.number())?;
                Ok(Acted {
                    detail: format!("{} sent to pid {pid}", sig.name()),
                    in_effect: Some(now()),
                })
            }
            (Action::Freeze, Plan::Cgroup { key, dir, path }) => {
                freeze::freeze(!key.is_empty(), dir)?;
                Ok(Acted {
                    detail: format!(
                        "froze {}{path}",
                        if key.is_empty() { "" } else { "v1 freezer:" }
                    ),
                    in_effect: Some(now()),
                })
            }
            (Action::Thaw, Plan::Cgroup { key, dir, path }) => {
                freeze::thaw(!key.is_empty(), dir)?;
                Ok(Acted {
                    detail: format!("thawed {path}"),
                    in_effect: Some(now()),
                })
            }
            (Action::Kill | Action::RestartContainer, Plan::Cgroup { key, path, .. }) => {
                let ct = CgroupTarget {
                    v2: key.is_empty().then(|| path.clone()),
                    v1: if key.is_empty() {
                        Default::default()
                    } else {
                        [(key.clone(), path.clone())].into()
                    },
                };
                let detail = kill::kill(&self.hier, &ct)?;
                Ok(Acted {
                    detail,
                    in_effect: Some(now()),
                })
            }
            (Action::CpuLimit { cpus }, Plan::Cgroup { key, path, .. }) => {
                let ct = CgroupTarget {
                    v2: key.is_empty().then(|| path.clone()),
                    v1: if key.is_empty() {
                        Default::default()
                    } else {
                        [(key.clone(), path.clone())].into()
                    },
                };
                let (dir, file, value, previous) = cpu_limit::plan(&self.hier, &ct, *cpus)?;
                let shown = format!("{file}={value} on {path} (was {previous})");
                cpu_limit::apply(dir, file, &value, previous)?;
                Ok(Acted {
                    detail: shown,
                    in_effect: Some(now()),
                })
            }
            (Action::RateLimit { egress, ingress }, Plan::Cgroup { dir, path, .. }) => {
                let id_cg = cgroup::cgroup_id(dir).map_err(|e| e.to_string())?;
                let persist = rule.persist;
                let mut r = self.rate()?;
                let mut done = Vec::new();
                for (d, rate) in [
                    (agent_common::ratelimit::EGRESS, egress),
                    (agent_common::ratelimit::INGRESS, ingress),
                ] {
                    if let Some(rate) = rate {
                        if let Err(e) = r.set(dir, id_cg, d, rate, persist) {
                            for d in done {
                                let _ = r.remove(id_cg, d);
                            }
                            return Err(e);
                        }
                        done.push(d);
                    }
                }
                Ok(Acted {
                    detail: format!("{} on {path} (cgroup id {id_cg})", rule.action.describe()),
                    in_effect: Some(now()),
                })
            }
            (Action::Block { peers, ports }, Plan::Cgroup { dir, path, .. }) => {
                let id_cg = cgroup::cgroup_id(dir).map_err(|e| e.to_string())?;
                self.block()?
                    .add(dir, id_cg, id, peers, ports, rule.persist)?;
                Ok(Acted {
                    detail: format!("{} from {path} (cgroup id {id_cg})", rule.action.describe()),
                    in_effect: Some(now()),
                })
            }
            (
                Action::Degrade {
                    profiler_frequency,
                    top_processes,
                },
                _,
            ) => {
                self.degrade.set(
                    &format!("enforcement:{id}"),
                    degrade::Degrade {
                        profiler_frequency: *profiler_frequency,
                        top_processes: *top_processes,
                    },
                );
                Ok(Acted {
                    detail: rule.action.describe(),
                    in_effect: Some(now()),
                })
            }
            (Action::Alert { .. }, _) => Ok(Acted {
                detail: "alert".into(),
                in_effect: Some(now()),
            }),
            (a, p) => Err(format!("{} cannot act on {p:?}", a.kind())),
        }
    }

    /// Undoes one journaled limit; returns what was done.
    pub fn undo(&mut self, undo: &Undo, id: u64) -> Result<String, String> {
        match undo {
            Undo::Cont { pid, start_ticks } => {
                if let Some(s) = self.loaded_signals() {
                    if s.armed().any(|(p, _)| p == pid) {
                        s.disarm(*pid);
                    }
                }
                match signal::send(*pid, *start_ticks, libc::SIGCONT) {
                    Ok(()) => Ok(format!("SIGCONT sent to pid {pid}")),
                    Err(e) if signal::start_ticks(*pid) != Some(*start_ticks) => {
                        Ok(format!("nothing to undo: {e}"))
                    }
                    Err(e) => Err(e),
                }
            }
            Undo::Thaw { v1, dir } => {
                if !dir.exists() {
                    return Ok(format!("nothing to undo: {} is gone", dir.display()));
                }
                freeze::thaw(*v1, dir).map(|()| format!("thawed {}", dir.display()))
            }
            Undo::Restore {
                dir,
                file,
                previous,
            } => {
                if !dir.exists() {
                    return Ok(format!("nothing to undo: {} is gone", dir.display()));
                }
                cgroup::write(dir, file, previous)
                    .map(|()| format!("{file} of {} restored to {previous}", dir.display()))
            }
            Undo::RateLimit {
                cgroup_id,
                directions,
                ..
            } => {
                let mut r = self.rate()?;
                for d in directions {
                    r.remove(*cgroup_id, rate_limit::direction_of(d))?;
                }
                Ok(format!(
                    "rate limit of cgroup id {cgroup_id} removed ({})",
                    directions.join(", ")
                ))
            }
            Undo::Block {
                cgroup_id,
                peers,
                ports,
                ..
            } => {
                let peers: Vec<Prefix> = peers.iter().filter_map(|p| Prefix::parse(p)).collect();
                self.block()?.remove(*cgroup_id, &peers, ports)?;
                Ok(format!("blocks of cgroup id {cgroup_id} removed"))
            }
            Undo::Degrade => {
                self.degrade.clear(&format!("enforcement:{id}"));
                Ok("sampling restored".into())
            }
        }
    }

    /// Detaches the kernel objects, keeping the limits `keep` says (persistent ones).
    pub fn shutdown(
        &mut self,
        keep_rate: &dyn Fn(u64, u32) -> bool,
        keep_block: &dyn Fn(u64) -> bool,
    ) {
        if let Some(r) = self
            .rate
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            r.shutdown(keep_rate);
        }
        if let Some(b) = self
            .block
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            b.shutdown(keep_block, &|_| Vec::new());
        }
        *self.signals.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
