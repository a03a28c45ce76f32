//! What `/status` shows under `opamp`: the connection, the last messages, the instance uid, and
//! the remote config and connection settings the server sent, with the agent's own timestamps
//! (Unix milliseconds) so deadlines such as "applied within 2 s of receipt" can be checked.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// The OpAMP client's state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OpampStatus {
    /// The server URL in use (an accepted connection settings offer may have changed it).
    pub endpoint: String,
    /// `websocket` or `http`.
    pub transport: &'static str,
    /// WebSocket: the connection is up. HTTP: the last request got an answer.
    pub connected: bool,
    /// Canonical UUID text of the `instance_uid` (also the OTLP `service.instance.id`).
    pub instance_uid: String,
    /// `sequence_num` of the last message sent.
    pub sequence_num: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub last_sent_unix_ms: Option<u64>,
    pub last_received_unix_ms: Option<u64>,
    pub connected_since_unix_ms: Option<u64>,
    /// Connections made (WebSocket) or request streaks started (HTTP) since start.
    pub connects: u64,
    /// Heartbeat (HTTP: polling) interval in use; `None`: heartbeats turned off by the server.
    pub heartbeat_interval_seconds: Option<u64>,
    /// Capability names this agent declares.
    pub capabilities: Vec<&'static str>,
    /// Capability names the server declared.
    pub server_capabilities: Vec<&'static str>,
    /// The last connection or protocol problem (cleared by the next answer).
    pub last_error: Option<String>,
    pub remote_config: RemoteConfigState,
    pub connection_settings: ConnectionSettingsState,
    pub own_telemetry: OwnTelemetryState,
}

/// The last remote config the server offered and what became of it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RemoteConfigState {
    /// Hex of `config_hash` as received.
    pub hash: Option<String>,
    /// `UNSET`, `APPLYING`, `APPLIED` or `FAILED` (the RemoteConfigStatus sent).
    pub status: &'static str,
    pub error: Option<String>,
    /// `server`, or `persisted` (the last applied one, used at start).
    pub source: Option<&'static str>,
    pub received_unix_ms: Option<u64>,
    pub applied_unix_ms: Option<u64>,
    pub failed_unix_ms: Option<u64>,
    /// Rollbacks to the last good config since start.
    pub rollbacks: u64,
}

/// The last ConnectionSettingsOffers and what became of it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectionSettingsState {
    pub hash: Option<String>,
    pub status: &'static str,
    pub error: Option<String>,
}

/// Own telemetry sent to the endpoints the server offered (own_metrics, own_logs).
#[derive(Clone, Debug, Default, Serialize)]
pub struct OwnTelemetryState {
    pub metrics_endpoint: Option<String>,
    pub logs_endpoint: Option<String>,
    pub metrics_requests_sent: u64,
    pub logs_requests_sent: u64,
    pub log_records_sent: u64,
    /// Log records dropped because the buffer was full between two sends.
    pub log_records_dropped: u64,
    pub failed_requests: u64,
    pub last_error: Option<String>,
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}
