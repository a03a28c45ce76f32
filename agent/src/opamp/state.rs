//! The agent's side of the OpAMP status: the current value of every status sub-message, which
//! of them changed since they were last sent, and the one message built from that when the
//! client can send (spec "Status Reporting", "Agent Status Compression", "Retrying Messages").
//!
//! Invariants: there is never more than one pending message — a change made while the client
//! cannot send only updates the current values, and the next message carries the latest state;
//! `sequence_num` grows by one per message built; a full report (every sub-message) is built
//! first on each connection and whenever the server sets ReportFullState; otherwise unchanged
//! sub-messages are left out; a message that could not be sent puts its sub-messages back.

use super::wire::pb;

const DESCRIPTION: u8 = 1;
const HEALTH: u8 = 2;
const EFFECTIVE: u8 = 4;
const REMOTE: u8 = 8;
const CONNECTION: u8 = 16;

/// What one built message took (to put back if it could not be sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    dirty: u8,
    full: bool,
}

pub struct Reporter {
    uid: [u8; 16],
    seq: u64,
    capabilities: u64,
    description: pb::AgentDescription,
    health: Option<pb::ComponentHealth>,
    effective: Option<pb::EffectiveConfig>,
    remote: pb::RemoteConfigStatus,
    connection: Option<pb::ConnectionSettingsStatus>,
    dirty: u8,
    full: bool,
}

impl Reporter {
    pub fn new(uid: [u8; 16], capabilities: u64) -> Reporter {
        Reporter {
            uid,
            seq: 0,
            capabilities,
            description: pb::AgentDescription::default(),
            health: None,
            effective: None,
            remote: pb::RemoteConfigStatus::default(),
            connection: None,
            dirty: 0,
            full: true,
        }
    }

    pub fn uid(&self) -> [u8; 16] {
        self.uid
    }

    /// The `sequence_num` of the last message built.
    pub fn sequence_num(&self) -> u64 {
        self.seq
    }

    pub fn capabilities(&self) -> u64 {
        self.capabilities
    }

    /// A new instance uid (the server's `new_instance_uid`), used from the next message on.
    pub fn set_uid(&mut self, uid: [u8; 16]) {
        self.uid = uid;
    }

    fn set<T: PartialEq>(slot: &mut T, v: T, dirty: &mut u8, bit: u8) {
        if *slot != v {
            *slot = v;
            *dirty |= bit;
        }
    }

    pub fn set_description(&mut self, d: pb::AgentDescription) {
        Self::set(&mut self.description, d, &mut self.dirty, DESCRIPTION);
    }

    pub fn set_health(&mut self, h: pb::ComponentHealth) {
        Self::set(&mut self.health, Some(h), &mut self.dirty, HEALTH);
    }

    pub fn set_effective(&mut self, e: pb::EffectiveConfig) {
        Self::set(&mut self.effective, Some(e), &mut self.dirty, EFFECTIVE);
    }

    pub fn set_remote(&mut self, r: pb::RemoteConfigStatus) {
        Self::set(&mut self.remote, r, &mut self.dirty, REMOTE);
    }

    pub fn remote(&self) -> &pb::RemoteConfigStatus {
        &self.remote
    }

    pub fn set_connection(&mut self, c: pb::ConnectionSettingsStatus) {
        Self::set(&mut self.connection, Some(c), &mut self.dirty, CONNECTION);
    }

    /// The next message reports everything (new connection, ReportFullState).
    pub fn request_full(&mut self) {
        self.full = true;
    }

    /// Whether a status change (or a full report) waits to be sent.
    pub fn wants_send(&self) -> bool {
        self.full || self.dirty != 0
    }

    /// The next message: `sequence_num` + 1, capabilities, and the sub-messages that changed
    /// (all when a full report is due). With nothing changed it is a heartbeat (uid, sequence
    /// number, capabilities). `disconnect` sets `agent_disconnect` (the last message).
    pub fn build(&mut self, disconnect: bool) -> (pb::AgentToServer, Taken) {
        let taken = Taken {
            dirty: self.dirty,
            full: self.full,
        };
        let all = self.full;
        let has = |bit: u8| all || taken.dirty & bit != 0;
        self.seq += 1;
        let msg = pb::AgentToServer {
            instance_uid: self.uid.to_vec(),
            sequence_num: self.seq,
            capabilities: self.capabilities,
            agent_description: has(DESCRIPTION).then(|| self.description.clone()),
            health: if has(HEALTH) {
                self.health.clone()
            } else {
                None
            },
            effective_config: if has(EFFECTIVE) {
                self.effective.clone()
            } else {
                None
            },
            // Only agents that declare ReportsRemoteConfig report it.
            remote_config_status: (has(REMOTE)
                && self.capabilities & super::wire::agent_caps::REPORTS_REMOTE_CONFIG != 0)
                .then(|| self.remote.clone()),
            connection_settings_status: if has(CONNECTION) {
                self.connection.clone()
            } else {
                None
            },
            agent_disconnect: disconnect.then_some(pb::AgentDisconnect {}),
            ..Default::default()
        };
        self.dirty = 0;
        self.full = false;
        (msg, taken)
    }

    /// The message built with `t` was not delivered: its sub-messages are due again.
    pub fn restore(&mut self, t: Taken) {
        self.dirty |= t.dirty;
        self.full |= t.full;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(ok: bool) -> pb::ComponentHealth {
        pb::ComponentHealth {
            healthy: ok,
            ..Default::default()
        }
    }

    #[test]
    fn full_first_then_only_changes_then_heartbeats() {
        let mut r = Reporter::new([1; 16], 0x1003);
        r.set_description(pb::AgentDescription::default());
        r.set_health(health(true));
        let (m, _) = r.build(false);
        assert_eq!(m.sequence_num, 1);
        assert_eq!(m.capabilities, 0x1003);
        assert!(m.agent_description.is_some() && m.health.is_some());
        assert!(
            m.remote_config_status.is_some(),
            "full state has the remote status"
        );
        assert!(!r.wants_send());

        // The same value again is no change: nothing to send.
        r.set_health(health(true));
        assert!(!r.wants_send());
        r.set_health(health(false));
        let (m, _) = r.build(false);
        assert_eq!(m.sequence_num, 2);
        assert!(m.health.is_some());
        assert!(m.agent_description.is_none() && m.remote_config_status.is_none());

        let (hb, _) = r.build(false);
        assert_eq!(hb.sequence_num, 3);
        assert_eq!(hb.instance_uid, vec![1; 16]);
        assert!(hb.health.is_none() && hb.agent_disconnect.is_none());
    }

    #[test]
    fn one_pending_message_carries_the_latest_state() {
        let mut r = Reporter::new([2; 16], 0x1001);
        let _ = r.build(false);
        for s in [1, 2, 3] {
            r.set_remote(pb::RemoteConfigStatus {
                status: s,
                ..Default::default()
            });
        }
        let (m, _) = r.build(false);
        assert_eq!(m.remote_config_status.unwrap().status, 3);
        assert!(!r.wants_send());
    }

    #[test]
    fn no_remote_status_without_reports_remote_config() {
        let mut r = Reporter::new([4; 16], 0x1);
        let (m, _) = r.build(false);
        assert!(m.remote_config_status.is_none());
    }

    #[test]
    fn undelivered_changes_are_due_again_and_full_state_on_request() {
        let mut r = Reporter::new([3; 16], 1);
        let (_, t) = r.build(false);
        r.restore(t);
        assert!(r.wants_send(), "the first (full) report was not delivered");
        let _ = r.build(false);
        r.set_health(health(true));
        let (_, t) = r.build(false);
        r.restore(t);
        let (m, _) = r.build(false);
        assert!(m.health.is_some());
        r.request_full();
        let (m, _) = r.build(true);
        assert!(m.agent_description.is_some() && m.health.is_some());
        assert!(m.agent_disconnect.is_some());
        assert_eq!(m.sequence_num, 5);
    }
}
