//! `block`: the connect4/connect6 programs (`agent-ebpf/src/bin/block.rs`), their attachments
//! (one pair per blocked cgroup), the rule entries, and the refusals they count — published as
//! `system.network.tcp.connection.failures` with `error.type=blocked`, beside the network
//! probe's own failures and with its attribute conventions (`metrics.rs`).

use std::{collections::HashMap, path::Path};

use agent_common::block::{
    counter, BlockData, BlockRule, RefusalKey, RefusalStats, CGROUPS_MAP, COUNTERS_MAP,
    PREFIX_BITS, REFUSALS_MAP, RULES_MAP,
};
use aya::{
    maps::{lpm_trie::Key, HashMap as BpfHashMap, LpmTrie, MapData},
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr},
    Ebpf,
};

use super::{
    super::{pins::Pins, rules::Prefix},
    links::{self, Link},
};
use crate::ebpf::{self, LoadError};

pub const PROBE: &str = "block";
const PROGS: [&str; 2] = ["block_connect4", "block_connect6"];
const STATE_MAPS: [&str; 3] = [CGROUPS_MAP, RULES_MAP, REFUSALS_MAP];

/// The LPM keys of a block on `cgroup_id`: every prefix with every port (port 0: any).
pub fn keys(cgroup_id: u64, peers: &[Prefix], ports: &[u16]) -> Vec<Key<BlockData>> {
    let ports: Vec<u16> = if ports.is_empty() {
        vec![0]
    } else {
        ports.to_vec()
    };
    let mut out = Vec::new();
    for p in peers {
        let (addr, bits) = p.mapped();
        for port in &ports {
            out.push(Key::new(
                PREFIX_BITS + bits,
                BlockData {
                    cgroup_id: cgroup_id.to_be_bytes(),
                    port: port.to_be_bytes(),
                    addr: mask(addr, bits),
                },
            ));
        }
    }
    out
}

fn mask(mut a: [u8; 16], bits: u32) -> [u8; 16] {
    for (i, b) in a.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i as u32 * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    a
}

type KeyBytes = (u32, [u8; 26]);

fn key_bytes(k: &Key<BlockData>) -> KeyBytes {
    let d = k.data();
    let mut b = [0u8; 26];
    b[..8].copy_from_slice(&d.cgroup_id);
    b[8..10].copy_from_slice(&d.port);
    b[10..].copy_from_slice(&d.addr);
    (k.prefix_len(), b)
}

/// The loaded blocker.
pub struct Blocker {
    bpf: Ebpf,
    pins: Pins,
    maps_pinned: bool,
    /// Per blocked cgroup: its attachments (connect4, connect6).
    links: HashMap<u64, Vec<Link>>,
    /// How many blocks hold each rule key (two rules may block the same peer).
    holders: HashMap<KeyBytes, u32>,
}

impl Blocker {
    pub fn load(pins: &Pins) -> Result<Blocker, LoadError> {
        let reuse = STATE_MAPS.iter().all(|m| pins.map(m).exists());
        let paths: Vec<(&str, std::path::PathBuf)> =
            STATE_MAPS.iter().map(|m| (*m, pins.map(m))).collect();
        let mut bpf = ebpf::load(PROBE, |l| {
            if reuse {
                for (m, p) in &paths {
                    l.map_pin_path(m, p.clone());
                }
            }
        })?;
        for name in PROGS {
            let p: &mut CgroupSockAddr = ebpf::program(&mut bpf, PROBE, name)?;
            p.load()
                .map_err(|e| ebpf::explain(&format!("loading {name}"), &e))?;
        }
        let mut links: HashMap<u64, Vec<Link>> = HashMap::new();
        for (name, l) in links::take_over(pins, "block-") {
            if let Some(id) = name.split('-').nth(1).and_then(|s| s.parse::<u64>().ok()) {
                links.entry(id).or_default().push(l);
            }
        }
        let mut b = Blocker {
            bpf,
            pins: pins.clone(),
            maps_pinned: reuse,
            links,
            holders: HashMap::new(),
        };
        // The rule keys a predecessor left count as held once each until the journal says
        // otherwise (`remove` of their entries).
        if reuse {
            let keys: Vec<KeyBytes> = b
                .rules()
                .map(|m| {
                    m.keys()
                        .filter_map(Result::ok)
                        .map(|k| key_bytes(&k))
                        .collect()
                })
                .unwrap_or_default();
            for k in keys {
                *b.holders.entry(k).or_default() += 1;
            }
            tracing::info!(
                cgroups = b.links.len(),
                "blocker: took over the pinned blocks of a previous agent"
            );
        }
        Ok(b)
    }

    fn rules(&mut self) -> Result<LpmTrie<&mut MapData, BlockData, BlockRule>, String> {
        let m = self
            .bpf
            .map_mut(RULES_MAP)
            .ok_or_else(|| format!("{RULES_MAP} missing from the blocker object"))?;
        LpmTrie::try_from(m).map_err(|e| e.to_string())
    }

    fn cgroups(&mut self) -> Result<BpfHashMap<&mut MapData, u64, u32>, String> {
        let m = self
            .bpf
            .map_mut(CGROUPS_MAP)
            .ok_or_else(|| format!("{CGROUPS_MAP} missing from the blocker object"))?;
        BpfHashMap::try_from(m).map_err(|e| e.to_string())
    }

    fn pin_maps(&mut self) -> Result<(), String> {
        if self.maps_pinned {
            return Ok(());
        }
        self.pins.pin_maps(&self.bpf, &STATE_MAPS)?;
        self.maps_pinned = true;
        Ok(())
    }

    /// Blocks connects from cgroup `cgroup_id` (directory `dir`) to `peers` on `ports`.
    pub fn add(
        &mut self,
        dir: &Path,
        cgroup_id: u64,
        id: u64,
        peers: &[Prefix],
        ports: &[u16],
        persist: bool,
    ) -> Result<(), String> {
        if persist {
            self.pin_maps()?;
        }
        let ks = keys(cgroup_id, peers, ports);
        {
            let mut rules = self.rules()?;
            for k in &ks {
                rules
                    .insert(k, BlockRule { id, refusals: 0 }, 0)
                    .map_err(|e| format!("cannot write the rule into {RULES_MAP}: {e}"))?;
            }
        }
        for k in &ks {
            *self.holders.entry(key_bytes(k)).or_default() += 1;
        }
        let n = {
            let mut cg = self.cgroups()?;
            let n = cg.get(&cgroup_id, 0).unwrap_or(0) + 1;
            cg.insert(cgroup_id, n, 0)
                .map_err(|e| format!("cannot write {CGROUPS_MAP}: {e}"))?;
            n
        };
        if let Err(e) = self.attach(dir, cgroup_id, persist) {
            let _ = self.remove(cgroup_id, peers, ports);
            return Err(e);
        }
        tracing::debug!(cgroup_id, blocks = n, "blocker: rules added");
        Ok(())
    }

    fn attach(&mut self, dir: &Path, cgroup_id: u64, persist: bool) -> Result<(), String> {
        let pin = |i: usize| persist.then(|| self.pins.link(&format!("block-{cgroup_id}-{i}")));
        if let Some(ls) = self.links.remove(&cgroup_id) {
            let mut out = Vec::new();
            for (i, l) in ls.into_iter().enumerate() {
                out.push(match pin(i) {
                    Some(p) => l.pinned(p)?,
                    None => l,
                });
            }
            self.links.insert(cgroup_id, out);
            return Ok(());
        }
        let pins: Vec<Option<std::path::PathBuf>> = (0..PROGS.len()).map(pin).collect();
        let mut out = Vec::new();
        for (name, pin) in PROGS.iter().zip(pins) {
            let p: &mut CgroupSockAddr =
                ebpf::program(&mut self.bpf, PROBE, name).map_err(|e| e.cause)?;
            out.push(links::attach_cgroup(dir, pin, |cg| {
                let lid = p
                    // Single: the flags of a bpf_link attach (which aya uses on 5.7+) must be
                    // 0 — the kernel refuses BPF_F_ALLOW_MULTI there with EINVAL — and cgroup
                    // links are always multi-attach, beside other programs on the same cgroup.
                    .attach(cg, CgroupAttachMode::Single)
                    .map_err(|e| {
                        ebpf::explain(&format!("attaching {name} to {}", dir.display()), &e)
                            .to_string()
                    })?;
                FdLink::try_from(p.take_link(lid).map_err(|e| e.to_string())?)
                    .map_err(|e| format!("{name} link: {e}"))
            })?);
        }
        self.links.insert(cgroup_id, out);
        Ok(())
    }

    /// Removes one block's rules; the cgroup's programs are detached with its last block.
    pub fn remove(
        &mut self,
        cgroup_id: u64,
        peers: &[Prefix],
        ports: &[u16],
    ) -> Result<(), String> {
        let ks = keys(cgroup_id, peers, ports);
        let mut gone = Vec::new();
        for k in &ks {
            let kb = key_bytes(k);
            let h = self.holders.entry(kb).or_insert(1);
            *h = h.saturating_sub(1);
            if *h == 0 {
                self.holders.remove(&kb);
                gone.push(k);
            }
        }
        {
            let mut rules = self.rules()?;
            for k in gone {
                let _ = rules.remove(k);
            }
        }
        let left = {
            let mut cg = self.cgroups()?;
            let n = cg.get(&cgroup_id, 0).unwrap_or(1).saturating_sub(1);
            if n == 0 {
                let _ = cg.remove(&cgroup_id);
            } else {
                let _ = cg.insert(cgroup_id, n, 0);
            }
            n
        };
        if left == 0 {
            for l in self.links.remove(&cgroup_id).unwrap_or_default() {
                l.detach()?;
            }
        }
        Ok(())
    }

    /// Whether cgroup `cgroup_id` has blocks.
    pub fn has(&self, cgroup_id: u64) -> bool {
        self.links.contains_key(&cgroup_id)
    }

    /// Per (process, peer) refusals.
    pub fn refusals(&self) -> Vec<(RefusalKey, RefusalStats)> {
        let Some(m) = self.bpf.map(REFUSALS_MAP) else {
            return Vec::new();
        };
        let Ok(h) = aya::maps::HashMap::<_, RefusalKey, RefusalStats>::try_from(m) else {
            return Vec::new();
        };
        h.iter().filter_map(Result::ok).collect()
    }

    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        ebpf::per_cpu_counters(&self.bpf, COUNTERS_MAP)
    }

    /// Detaches what `keep` does not keep (by cgroup); unpins the maps when nothing is kept.
    pub fn shutdown(
        mut self,
        keep: &dyn Fn(u64) -> bool,
        remove: &dyn Fn(u64) -> Vec<(Vec<Prefix>, Vec<u16>)>,
    ) {
        let ids: Vec<u64> = self.links.keys().copied().collect();
        let mut kept = 0;
        for id in ids {
            if keep(id) {
                kept += 1;
                continue;
            }
            for (peers, ports) in remove(id) {
                if let Err(e) = self.remove(id, &peers, &ports) {
                    tracing::warn!("blocker: removing the blocks of cgroup {id}: {e}");
                }
            }
            // Whatever is left attached (entries the journal did not know) goes too.
            for l in self.links.remove(&id).unwrap_or_default() {
                let _ = l.detach();
            }
        }
        if kept == 0 && self.maps_pinned {
            for m in STATE_MAPS {
                Pins::unpin(&self.pins.map(m));
            }
            self.pins.remove_if_empty();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cover_every_peer_and_port_with_masked_prefixes() {
        let p = [
            Prefix::parse("10.1.2.3/16").unwrap(),
            Prefix::parse("fd00::1").unwrap(),
        ];
        let ks = keys(7, &p, &[80, 443]);
        assert_eq!(ks.len(), 4);
        let d = ks[0].data();
        assert_eq!(d.cgroup_id, 7u64.to_be_bytes());
        assert_eq!(d.port, 80u16.to_be_bytes());
        assert_eq!(&d.addr[10..], &[0xff, 0xff, 10, 1, 0, 0]);
        assert_eq!(ks[0].prefix_len(), PREFIX_BITS + 96 + 16);
        assert_eq!(ks[2].prefix_len(), PREFIX_BITS + 128);
        let any = keys(7, &p[..1], &[]);
        assert_eq!(any[0].data().port, [0, 0]);
    }
}
