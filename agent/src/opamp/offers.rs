//! ConnectionSettingsOffers (spec "Connection Settings Management", "Own Telemetry
//! Reporting"): own telemetry endpoints and the heartbeat interval take effect at once; new
//! OpAMP settings end the session so the client can try them (see `client.rs`). The status
//! (ConnectionSettingsStatus) is APPLIED, APPLYING (while new OpAMP settings are tried) or
//! FAILED with why; a repeated offer (same hash) changes nothing.

use std::time::Duration;

use super::{
    client::{End, Engine},
    connection, persist,
    status::hex,
    wire::pb,
};

impl Engine {
    pub(super) fn connection_status(
        &mut self,
        hash: &[u8],
        st: pb::ConnectionSettingsStatuses,
        error: &str,
    ) {
        self.reporter.set_connection(pb::ConnectionSettingsStatus {
            last_connection_settings_hash: hash.to_vec(),
            status: st as i32,
            error_message: error.to_string(),
        });
        let name = match st {
            pb::ConnectionSettingsStatuses::Applied => "APPLIED",
            pb::ConnectionSettingsStatuses::Applying => "APPLYING",
            pb::ConnectionSettingsStatuses::Failed => "FAILED",
            pb::ConnectionSettingsStatuses::Unset => "UNSET",
        };
        let (h, error) = (hex(hash), error.to_string());
        self.status(|s| {
            s.connection_settings.hash = Some(h);
            s.connection_settings.status = name;
            s.connection_settings.error = (!error.is_empty()).then_some(error);
        });
    }

    /// ConnectionSettingsOffers: own telemetry at once, the heartbeat at once, new OpAMP
    /// settings by ending the session to try them.
    pub(super) fn on_offers(&mut self, cs: &pb::ConnectionSettingsOffers) -> Option<End> {
        if !cs.hash.is_empty() && self.last_offer_hash.as_ref() == Some(&cs.hash) {
            return None;
        }
        self.last_offer_hash = Some(cs.hash.clone());
        let certs = persist::dir(&self.output_dir).join("certs");
        let mut errors = Vec::new();
        let mut own = self.own.borrow().clone();
        use crate::export::spool::Signal;
        for (name, offer, signal, slot) in [
            (
                "own_metrics",
                &cs.own_metrics,
                Signal::Metrics,
                &mut own.metrics,
            ),
            ("own_logs", &cs.own_logs, Signal::Logs, &mut own.logs),
        ] {
            if let Some(o) = offer {
                match connection::telemetry_offer(&certs, name, signal, o) {
                    Ok(t) => *slot = t,
                    Err(e) => errors.push(format!("{name}: {e}")),
                }
            }
        }
        self.own.send_if_modified(|cur| {
            let changed = *cur != own;
            *cur = own;
            changed
        });
        let mut switch = None;
        if let Some(o) = &cs.opamp {
            let hb = (o.heartbeat_interval_seconds > 0)
                .then(|| Duration::from_secs(o.heartbeat_interval_seconds));
            if hb != self.heartbeat {
                tracing::info!(
                    seconds = o.heartbeat_interval_seconds,
                    "OpAMP: heartbeat interval from the server (0: off)"
                );
                self.heartbeat = hb;
                let secs = self.interval().map(|d| d.as_secs());
                self.status(|s| s.heartbeat_interval_seconds = secs);
            }
            match connection::opamp_offer(&self.settings, &certs, o) {
                Ok(next) => switch = next,
                Err(e) => errors.push(format!("opamp: {e}")),
            }
        }
        if !errors.is_empty() {
            let msg = errors.join("; ");
            tracing::warn!("OpAMP: connection settings refused: {msg}");
            self.connection_status(&cs.hash, pb::ConnectionSettingsStatuses::Failed, &msg);
            return None;
        }
        match switch {
            Some(next) => {
                self.connection_status(&cs.hash, pb::ConnectionSettingsStatuses::Applying, "");
                Some(End::Switch(Box::new(next), cs.hash.clone()))
            }
            None => {
                self.connection_status(&cs.hash, pb::ConnectionSettingsStatuses::Applied, "");
                None
            }
        }
    }
}
