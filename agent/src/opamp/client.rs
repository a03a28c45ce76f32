//! The OpAMP client: connects, reports, answers the server, reconnects (spec "Operation",
//! "Connection Management").
//!
//! Invariants: the first message (and the first on every WebSocket connection) is a full
//! report; after that a message is
//! sent only when the agent's status changed, the server set ReportFullState, or a heartbeat
//! (HTTP: poll) is due — a ServerToAgent that changes nothing gets no reply; one message is
//! pending at most (`state::Reporter`); BAD_REQUEST answers are never retried; UNAVAILABLE and
//! lost connections wait the server's `retry_after` or back off exponentially with jitter; the
//! client sends `agent_disconnect` before it closes a WebSocket (shutdown, restart, moving to
//! offered settings, UNAVAILABLE); offered OpAMP settings are kept only once a connection made
//! with them got an answer.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{
    apply::{apply_config, Job, Outcome},
    connection::{ConnSettings, Kind},
    describe,
    health::HealthTracker,
    own::OwnTargets,
    persist::ConnectionStore,
    remote_config,
    state::Reporter,
    status::{hex, unix_ms, OpampStatus},
    transport::{Conn, TransportError},
    wire::{self, pb},
};
use crate::{config::Config, runtime::ApplyRequest, status::state::AgentState};

/// First reconnect delay; doubled per failure up to [`MAX_BACKOFF`], ±20% jitter.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A server's `retry_after` is honoured up to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How often health is rebuilt from the agent's state.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How long the last message (`agent_disconnect`) may take.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Backoff before the attempt after `failures` failures.
pub fn backoff(failures: u32) -> Duration {
    let exp = INITIAL_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    exp.mul_f64(0.8 + 0.4 * crate::export::retry::jitter())
}

/// How the client ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Stopped,
    /// The server sent the Restart command.
    Restart,
}

pub(super) enum End {
    Shutdown,
    Restart,
    Reconnect(TransportError),
    /// Offered OpAMP settings to try (offer hash).
    Switch(Box<ConnSettings>, Vec<u8>),
}

pub struct Engine {
    /// The settings of the local config.
    pub local: ConnSettings,
    /// The settings in use.
    pub settings: ConnSettings,
    pub local_heartbeat: Duration,
    /// The server's heartbeat interval (`None`: it turned heartbeats off).
    pub heartbeat: Option<Duration>,
    pub reporter: Reporter,
    pub health: HealthTracker,
    pub state: Arc<AgentState>,
    pub output_dir: PathBuf,
    pub apply: mpsc::Sender<ApplyRequest>,
    pub running: watch::Receiver<Arc<Config>>,
    pub jobs: watch::Sender<Option<Job>>,
    pub outcomes: mpsc::Receiver<Outcome>,
    pub own: watch::Sender<OwnTargets>,
    pub accept_remote: bool,
    /// The last remote config offered (its hash), so a repeated offer changes nothing.
    pub last_remote_hash: Option<Vec<u8>>,
    pub last_offer_hash: Option<Vec<u8>>,
    pub failures: u32,
}

impl Engine {
    pub(super) fn status(&self, f: impl FnOnce(&mut OpampStatus)) {
        self.state.update_opamp(f);
    }

    fn uid_text(&self) -> String {
        wire::uid_text(&self.reporter.uid())
    }

    /// Heartbeat / poll interval in use.
    pub(super) fn interval(&self) -> Option<Duration> {
        match self.settings.kind {
            Kind::WebSocket => self.heartbeat,
            // HTTP must poll to hear from the server at all.
            Kind::Http => Some(self.heartbeat.unwrap_or(self.local_heartbeat)),
        }
    }

    pub fn refresh_description(&mut self) {
        let d = describe::description(&self.uid_text(), |k| std::env::var(k).ok());
        self.reporter.set_description(d);
    }

    fn refresh_effective(&mut self) {
        let e = describe::effective_config(&self.running.borrow());
        self.reporter.set_effective(e);
    }

    fn refresh_health(&mut self) {
        let h = self.health.build(&self.state, SystemTime::now());
        self.reporter.set_health(h);
    }

    /// Runs until `shutdown` (or a Restart command).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Exit {
        self.refresh_description();
        self.refresh_effective();
        self.refresh_health();
        let mut wait: Option<Duration> = None;
        let mut ready: Option<(Conn, pb::ServerToAgent)> = None;
        loop {
            if let Some(w) = wait.take() {
                tracing::debug!(?w, "OpAMP: reconnecting after");
                tokio::select! {
                    _ = tokio::time::sleep(w) => {}
                    _ = shutdown.changed() => return Exit::Stopped,
                }
            }
            if *shutdown.borrow() {
                return Exit::Stopped;
            }
            let (conn, first) = match ready.take() {
                Some((c, m)) => (c, Some(m)),
                None => match Conn::open(&self.settings, &self.uid_text()).await {
                    Ok(c) => (c, None),
                    Err(e) => {
                        wait = Some(self.failed(&e));
                        continue;
                    }
                },
            };
            self.on_connected();
            match self.session(conn, first, &mut shutdown).await {
                End::Shutdown => return Exit::Stopped,
                End::Restart => return Exit::Restart,
                End::Reconnect(e) => wait = Some(self.failed(&e)),
                End::Switch(next, hash) => match self.try_settings(&next).await {
                    Ok((conn, first)) => {
                        tracing::info!(endpoint = %next.endpoint, "OpAMP: moved to the offered connection settings");
                        self.settings = *next;
                        ConnectionStore::new(&self.output_dir).save(
                            &self.local.endpoint,
                            &self.settings,
                            self.heartbeat.map(|h| h.as_secs()),
                        );
                        self.connection_status(&hash, pb::ConnectionSettingsStatuses::Applied, "");
                        ready = Some((conn, first));
                    }
                    Err(e) => {
                        let msg = format!(
                            "the offered OpAMP connection settings did not connect ({}); kept the previous ones",
                            e.message
                        );
                        tracing::warn!("OpAMP: {msg}");
                        self.connection_status(&hash, pb::ConnectionSettingsStatuses::Failed, &msg);
                    }
                },
            }
        }
    }

    fn on_connected(&mut self) {
        // A new WebSocket starts with a full report. Over HTTP each request stands alone: after
        // failed requests the undelivered changes are resent, and a server that lost state
        // sees the sequence gap and asks for ReportFullState (the first report of all is full).
        if self.settings.kind == Kind::WebSocket {
            self.reporter.request_full();
        }
        let (endpoint, kind) = (self.settings.endpoint.clone(), self.settings.kind.name());
        let hb = self.interval().map(|d| d.as_secs());
        self.status(|s| {
            s.endpoint = endpoint;
            s.transport = kind;
            s.connects += 1;
            s.heartbeat_interval_seconds = hb;
            if kind == "websocket" {
                s.connected = true;
                s.connected_since_unix_ms = Some(super::status::now_ms());
            }
        });
    }

    /// Records a failed attempt; returns how long to wait.
    fn failed(&mut self, e: &TransportError) -> Duration {
        self.failures += 1;
        let wait = match e.retry_after {
            Some(d) => d.min(MAX_RETRY_AFTER),
            None => backoff(self.failures),
        };
        let msg = e.message.clone();
        if self.failures == 1 || e.unauthorized {
            tracing::warn!("OpAMP: {msg}; retrying in {wait:.1?}");
            if e.unauthorized {
                tracing::warn!("fix: set the credentials the server expects in opamp.headers (e.g. authorization) or opamp.tls");
            }
        } else {
            tracing::debug!("OpAMP: {msg}; retrying in {wait:.1?}");
        }
        self.status(|s| {
            s.connected = false;
            s.connected_since_unix_ms = None;
            s.last_error = Some(msg);
        });
        wait
    }

    /// Connects with offered settings and waits for the answer to a full report.
    async fn try_settings(
        &mut self,
        next: &ConnSettings,
    ) -> Result<(Conn, pb::ServerToAgent), TransportError> {
        let mut conn = Conn::open(next, &self.uid_text()).await?;
        self.reporter.request_full();
        let (msg, taken) = self.reporter.build(false);
        let r = async {
            conn.send(&msg).await?;
            let answer = tokio::time::timeout(next.timeout, conn.recv())
                .await
                .map_err(|_| {
                    TransportError::new(format!("no answer within {:?}", next.timeout))
                })??;
            if let Some(e) = &answer.error_response {
                return Err(TransportError::new(format!(
                    "the server answered with an error: {}",
                    e.error_message
                )));
            }
            Ok(answer)
        }
        .await;
        match r {
            Ok(answer) => {
                self.sent(&msg);
                Ok((conn, answer))
            }
            Err(e) => {
                self.reporter.restore(taken);
                conn.close().await;
                Err(e)
            }
        }
    }

    fn sent(&mut self, msg: &pb::AgentToServer) {
        let seq = msg.sequence_num;
        self.status(|s| {
            s.sequence_num = seq;
            s.messages_sent += 1;
            s.last_sent_unix_ms = Some(super::status::now_ms());
        });
    }

    async fn send_disconnect(&mut self, conn: &mut Conn) {
        let (msg, _) = self.reporter.build(true);
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, conn.send(&msg)).await;
        self.sent(&msg);
        conn.close().await;
        self.status(|s| {
            s.connected = false;
            s.connected_since_unix_ms = None;
        });
    }

    async fn session(
        &mut self,
        mut conn: Conn,
        first: Option<pb::ServerToAgent>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        if let Some(m) = first {
            if let Some(end) = self.on_message(m, &mut conn).await {
                return end;
            }
        }
        let mut health = tokio::time::interval(HEALTH_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent = Instant::now();
        let mut running_open = true;
        loop {
            let due = if self.reporter.wants_send() {
                Some(Instant::now())
            } else {
                self.interval().map(|i| last_sent + i)
            };
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.send_disconnect(&mut conn).await;
                    return End::Shutdown;
                }
                r = conn.recv() => match r {
                    Ok(m) => {
                        if let Some(end) = self.on_message(m, &mut conn).await {
                            return end;
                        }
                    }
                    Err(e) => return End::Reconnect(e),
                },
                Some(o) = self.outcomes.recv() => self.on_outcome(o),
                r = self.running.changed(), if running_open => {
                    if r.is_err() {
                        running_open = false;
                    } else {
                        self.refresh_effective();
                    }
                }
                _ = health.tick() => self.refresh_health(),
                _ = async {
                    match due {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let (msg, taken) = self.reporter.build(false);
                    match conn.send(&msg).await {
                        Ok(()) => {
                            last_sent = Instant::now();
                            self.sent(&msg);
                        }
                        Err(e) => {
                            self.reporter.restore(taken);
                            if self.settings.kind == Kind::Http {
                                self.status(|s| s.connected = false);
                            }
                            return End::Reconnect(e);
                        }
                    }
                }
            }
        }
    }

    /// Processes one ServerToAgent; `Some` ends the session.
    async fn on_message(&mut self, m: pb::ServerToAgent, conn: &mut Conn) -> Option<End> {
        let now = super::status::now_ms();
        let caps = (m.capabilities != 0).then(|| wire::server_capability_names(m.capabilities));
        let http = self.settings.kind == Kind::Http;
        self.status(|s| {
            s.messages_received += 1;
            s.last_received_unix_ms = Some(now);
            if let Some(c) = caps {
                s.server_capabilities = c;
            }
            if http {
                s.connected = true;
                s.connected_since_unix_ms.get_or_insert(now);
            }
        });
        if let Some(e) = &m.error_response {
            return self.on_error(e, conn).await;
        }
        self.failures = 0;
        self.status(|s| s.last_error = None);
        if !m.instance_uid.is_empty() && m.instance_uid != self.reporter.uid() {
            tracing::warn!(
                "OpAMP: ignoring a message for instance {} (this agent is {})",
                wire::uid_text(&m.instance_uid),
                self.uid_text()
            );
            return None;
        }
        if let Some(cmd) = &m.command {
            // The spec: a command comes alone and the rest of the message is ignored.
            if cmd.r#type == pb::CommandType::Restart as i32 {
                tracing::info!("OpAMP: the server asked for a restart");
                self.send_disconnect(conn).await;
                return Some(End::Restart);
            }
            tracing::warn!("OpAMP: ignoring unknown command type {}", cmd.r#type);
            return None;
        }
        if let Some(id) = &m.agent_identification {
            self.on_new_uid(&id.new_instance_uid, conn);
        }
        if m.flags & wire::FLAG_REPORT_FULL_STATE != 0 {
            self.reporter.request_full();
        }
        if let Some(rc) = &m.remote_config {
            self.on_remote_config(rc);
        }
        if let Some(cs) = &m.connection_settings {
            if let Some(end) = self.on_offers(cs) {
                self.send_disconnect(conn).await;
                return Some(end);
            }
        }
        if m.packages_available.is_some() {
            tracing::debug!("OpAMP: packages offered; this agent does not accept packages");
        }
        None
    }

    async fn on_error(&mut self, e: &pb::ServerErrorResponse, conn: &mut Conn) -> Option<End> {
        use pb::ServerErrorResponseType as T;
        match T::try_from(e.r#type) {
            Ok(T::BadRequest) => {
                let msg = format!(
                    "the server refused a message as malformed (not retried): {}",
                    e.error_message
                );
                tracing::error!("OpAMP: {msg}");
                self.status(|s| s.last_error = Some(msg));
                None
            }
            Ok(T::Unavailable) => {
                let after =
                    e.details
                        .as_ref()
                        .map(|pb::server_error_response::Details::RetryInfo(r)| {
                            Duration::from_nanos(r.retry_after_nanoseconds)
                        });
                let error = TransportError {
                    message: format!("the server is unavailable: {}", e.error_message),
                    retry_after: after,
                    unauthorized: false,
                };
                if self.settings.kind == Kind::WebSocket {
                    self.send_disconnect(conn).await;
                }
                Some(End::Reconnect(error))
            }
            _ => {
                let msg = format!("the server reported an error: {}", e.error_message);
                tracing::warn!("OpAMP: {msg}");
                self.status(|s| s.last_error = Some(msg));
                None
            }
        }
    }

    fn on_new_uid(&mut self, uid: &[u8], conn: &mut Conn) {
        let Ok(new) = <[u8; 16]>::try_from(uid) else {
            tracing::warn!(
                "OpAMP: ignoring a new_instance_uid of {} bytes (it must be 16)",
                uid.len()
            );
            return;
        };
        if new == self.reporter.uid() {
            return;
        }
        let text = wire::uid_text(&new);
        tracing::info!(old = %self.uid_text(), new = %text, "OpAMP: the server assigned a new instance uid");
        if let Err(e) = crate::export::resource::store_instance_id(&self.output_dir, &text) {
            tracing::warn!("cannot store the new instance uid: {e}; it lasts until restart");
        }
        self.reporter.set_uid(new);
        conn.set_uid(&text);
        self.refresh_description();
        self.status(|s| s.instance_uid = text);
        // The OTLP resource's service.instance.id follows: rebuild the exporter.
        let (tx, cfg) = (self.apply.clone(), (**self.running.borrow()).clone());
        tokio::spawn(async move { apply_config(&tx, cfg, true).await });
    }

    fn remote_status(&mut self, hash: &[u8], status: pb::RemoteConfigStatuses, error: &str) {
        self.reporter.set_remote(pb::RemoteConfigStatus {
            last_remote_config_hash: hash.to_vec(),
            status: status as i32,
            error_message: error.to_string(),
        });
        let (name, error) = (wire::remote_status_name(status as i32), error.to_string());
        let h = hex(hash);
        self.status(|s| {
            s.remote_config.hash = Some(h);
            s.remote_config.status = name;
            s.remote_config.error = (!error.is_empty()).then_some(error);
        });
    }

    fn on_remote_config(&mut self, rc: &pb::AgentRemoteConfig) {
        if !self.accept_remote {
            tracing::debug!("OpAMP: remote config offered; opamp.accept_remote_config is false");
            return;
        }
        let key = if rc.config_hash.is_empty() {
            use prost::Message;
            use sha2::Digest;
            sha2::Sha256::digest(rc.encode_to_vec()).to_vec()
        } else {
            rc.config_hash.clone()
        };
        if self.last_remote_hash.as_ref() == Some(&key) {
            return;
        }
        self.last_remote_hash = Some(key);
        let now = super::status::now_ms();
        self.status(|s| {
            s.remote_config.received_unix_ms = Some(now);
            s.remote_config.applied_unix_ms = None;
            s.remote_config.failed_unix_ms = None;
            s.remote_config.source = Some("server");
        });
        match remote_config::from_offer(rc) {
            Err(e) => {
                tracing::warn!("OpAMP: remote config refused: {}", e.cause);
                self.remote_status(
                    &rc.config_hash,
                    pb::RemoteConfigStatuses::Failed,
                    &e.to_string(),
                );
                self.status(|s| s.remote_config.failed_unix_ms = Some(now));
            }
            Ok(doc) => {
                self.remote_status(&rc.config_hash, pb::RemoteConfigStatuses::Applying, "");
                self.jobs.send_replace(Some(Job { doc }));
            }
        }
    }

    fn on_outcome(&mut self, o: Outcome) {
        match o {
            Outcome::Applied { hash, at } => {
                self.remote_status(&hash, pb::RemoteConfigStatuses::Applied, "");
                self.status(|s| s.remote_config.applied_unix_ms = Some(unix_ms(at)));
            }
            Outcome::Failed { hash, message, at } | Outcome::RolledBack { hash, message, at } => {
                self.remote_status(&hash, pb::RemoteConfigStatuses::Failed, &message);
                self.status(|s| s.remote_config.failed_unix_ms = Some(unix_ms(at)));
            }
        }
        // The effective config may have changed with it.
        self.refresh_effective();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        for _ in 0..50 {
            let b1 = backoff(1).as_secs_f64();
            assert!((0.8..=1.2).contains(&b1), "{b1}");
            let b3 = backoff(3).as_secs_f64();
            assert!((3.2..=4.8).contains(&b3), "{b3}");
            let big = backoff(100).as_secs_f64();
            assert!((48.0..=72.0).contains(&big), "{big}");
        }
    }
}
