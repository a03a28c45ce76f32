//! `rate_limit`: the kernel token buckets (`agent-ebpf/src/bin/ratelimit.rs`) and their
//! attachments. One `cgroup_skb` link per (limited cgroup, direction); the limit itself is an
//! `RL_LIMITS` entry keyed by the cgroup's id. `persist: true` pins the map and the link.

use std::{collections::HashMap, path::Path};

use agent_common::ratelimit::{
    counter, Limit, LimitKey, COUNTERS_MAP, EGRESS, INGRESS, LIMITS_MAP,
};
use aya::{
    maps::HashMap as BpfHashMap,
    programs::{links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
    Ebpf,
};

use super::{
    super::{pins::Pins, rules::Rate},
    links::{self, Link},
};
use crate::ebpf::{self, LoadError};

pub const PROBE: &str = "ratelimit";
const EGRESS_PROG: &str = "ratelimit_egress";
const INGRESS_PROG: &str = "ratelimit_ingress";

pub fn direction_name(d: u32) -> &'static str {
    if d == INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

pub fn direction_of(s: &str) -> u32 {
    if s == "ingress" {
        INGRESS
    } else {
        EGRESS
    }
}

/// The loaded rate limiter.
pub struct RateLimiter {
    bpf: Ebpf,
    pins: Pins,
    maps_pinned: bool,
    links: HashMap<(u64, u32), Link>,
}

fn link_name(cgroup_id: u64, direction: u32) -> String {
    format!("rl-{cgroup_id}-{}", direction_name(direction))
}

impl RateLimiter {
    /// Loads the object, on the pinned map if a predecessor left one, and takes over the links
    /// it pinned.
    pub fn load(pins: &Pins) -> Result<RateLimiter, LoadError> {
        let pinned = pins.map(LIMITS_MAP);
        let reuse = pinned.exists();
        let mut bpf = ebpf::load(PROBE, |l| {
            if reuse {
                l.map_pin_path(LIMITS_MAP, pinned.clone());
            }
        })?;
        for name in [EGRESS_PROG, INGRESS_PROG] {
            let p: &mut CgroupSkb = ebpf::program(&mut bpf, PROBE, name)?;
            p.load()
                .map_err(|e| ebpf::explain(&format!("loading {name}"), &e))?;
        }
        let mut links = HashMap::new();
        for (name, l) in links::take_over(pins, "rl-") {
            let mut parts = name.split('-').skip(1);
            if let (Some(id), Some(dir)) = (parts.next().and_then(|s| s.parse().ok()), parts.next())
            {
                links.insert((id, direction_of(dir)), l);
            }
        }
        if reuse {
            tracing::info!(
                links = links.len(),
                "rate limiter: took over the pinned limits of a previous agent"
            );
        }
        Ok(RateLimiter {
            bpf,
            pins: pins.clone(),
            maps_pinned: reuse,
            links,
        })
    }

    fn limits(&mut self) -> Result<BpfHashMap<&mut aya::maps::MapData, LimitKey, Limit>, String> {
        let m = self
            .bpf
            .map_mut(LIMITS_MAP)
            .ok_or_else(|| format!("{LIMITS_MAP} missing from the rate limiter object"))?;
        BpfHashMap::try_from(m).map_err(|e| e.to_string())
    }

    fn pin_maps(&mut self) -> Result<(), String> {
        if self.maps_pinned {
            return Ok(());
        }
        self.pins.pin_maps(&self.bpf, &[LIMITS_MAP])?;
        self.maps_pinned = true;
        Ok(())
    }

    /// Sets the limit of cgroup `cgroup_id` (directory `dir`) in `direction` and attaches the
    /// program there if it is not yet. The buckets start full.
    pub fn set(
        &mut self,
        dir: &Path,
        cgroup_id: u64,
        direction: u32,
        rate: &Rate,
        persist: bool,
    ) -> Result<(), String> {
        if persist {
            self.pin_maps()?;
        }
        let key = LimitKey {
            cgroup_id,
            direction,
            _pad: 0,
        };
        let limit = Limit {
            bytes_per_second: rate.bytes_per_second,
            packets_per_second: rate.packets_per_second,
            burst_ns: rate.burst_ns(),
            ..Default::default()
        };
        self.limits()?
            .insert(key, limit, 0)
            .map_err(|e| format!("cannot write the limit into {LIMITS_MAP}: {e}"))?;
        if let Err(e) = self.attach(dir, cgroup_id, direction, persist) {
            let _ = self.limits().map(|mut m| m.remove(&key));
            return Err(e);
        }
        Ok(())
    }

    fn attach(
        &mut self,
        dir: &Path,
        cgroup_id: u64,
        direction: u32,
        persist: bool,
    ) -> Result<(), String> {
        let k = (cgroup_id, direction);
        let name = link_name(cgroup_id, direction);
        let pin = persist.then(|| self.pins.link(&name));
        if let Some(l) = self.links.remove(&k) {
            let l = match pin {
                Some(p) => l.pinned(p)?,
                None => l,
            };
            self.links.insert(k, l);
            return Ok(());
        }
        let (prog, kind) = if direction == INGRESS {
            (INGRESS_PROG, CgroupSkbAttachType::Ingress)
        } else {
            (EGRESS_PROG, CgroupSkbAttachType::Egress)
        };
        let p: &mut CgroupSkb = ebpf::program(&mut self.bpf, PROBE, prog).map_err(|e| e.cause)?;
        let l = links::attach_cgroup(dir, pin, |cg| {
            let id = p
                // Single: see `block.rs` (bpf_link flags must be 0; links are multi-attach).
                .attach(cg, kind, CgroupAttachMode::Single)
                .map_err(|e| {
                    ebpf::explain(&format!("attaching {prog} to {}", dir.display()), &e).to_string()
                })?;
            let link = p.take_link(id).map_err(|e| e.to_string())?;
            FdLink::try_from(link).map_err(|e| format!("{prog} link: {e}"))
        })?;
        self.links.insert(k, l);
        Ok(())
    }

    /// Removes the limit and detaches (unpinning what was pinned).
    pub fn remove(&mut self, cgroup_id: u64, direction: u32) -> Result<(), String> {
        let key = LimitKey {
            cgroup_id,
            direction,
            _pad: 0,
        };
        let removed = self.limits()?.remove(&key);
        if let Some(l) = self.links.remove(&(cgroup_id, direction)) {
            l.detach()?;
        }
        removed.or_else(|e| match e {
            aya::maps::MapError::KeyNotFound => Ok(()),
            e => Err(format!("cannot remove the limit: {e}")),
        })
    }

    /// Whether a limit is set for (cgroup, direction).
    pub fn has(&mut self, cgroup_id: u64, direction: u32) -> bool {
        self.links.contains_key(&(cgroup_id, direction))
    }

    /// Every limit with its counters.
    pub fn entries(&mut self) -> Vec<(LimitKey, Limit)> {
        self.limits()
            .map(|m| m.iter().filter_map(Result::ok).collect())
            .unwrap_or_default()
    }

    /// The program's own counters summed over CPUs (`counter::NAMES`).
    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        ebpf::per_cpu_counters(&self.bpf, COUNTERS_MAP)
    }

    /// The loaded programs' ids (for `bpf_stats`).
    pub fn program_ids(&self) -> Vec<(String, u32)> {
        [EGRESS_PROG, INGRESS_PROG]
            .iter()
            .filter_map(|n| {
                let p: &CgroupSkb = self.bpf.program(n)?.try_into().ok()?;
                Some((n.to_string(), p.info().ok()?.id()))
            })
            .collect()
    }

    /// Detaches everything not in `keep` (cgroup, direction) and removes its limit; the kept
    /// ones stay pinned. Unpins the map when nothing is kept.
    pub fn shutdown(mut self, keep: &dyn Fn(u64, u32) -> bool) {
        let keys: Vec<(u64, u32)> = self.links.keys().copied().collect();
        let mut kept = 0;
        for (id, d) in keys {
            if keep(id, d) {
                kept += 1;
                continue;
            }
            if let Err(e) = self.remove(id, d) {
                tracing::warn!("rate limiter: removing the limit of cgroup {id}: {e}");
            }
        }
        if kept == 0 && self.maps_pinned {
            Pins::unpin(&self.pins.map(LIMITS_MAP));
            self.pins.remove_if_empty();
        }
    }
}
