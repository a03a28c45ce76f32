//! The OpAMP wire format (spec v0.18.0, "WebSocket Message Format" and "Plain HTTP Transport"):
//! protobuf `AgentToServer` out and `ServerToAgent` in; over WebSocket each binary message starts
//! with a varint header that must be 0. Also the capability and flag bits by name.
//!
//! Decoding never panics on any input (fuzzed in `tests.rs`): a bad header, a truncated varint or
//! a message prost rejects is a [`WireError`].

use prost::Message;
pub use proto::opamp as pb;

/// Why a received message could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the WebSocket message has no complete header varint")]
    Header,
    #[error("WebSocket message header {0}: this spec version only defines 0")]
    UnknownHeader(u64),
    #[error("not a ServerToAgent message: {0}")]
    Decode(String),
}

/// Spec section "WebSocket Message Format": header varint 0, then the protobuf message.
pub fn encode_frame(msg: &pb::AgentToServer) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + msg.encoded_len());
    out.push(0);
    msg.encode(&mut out)
        .expect("a Vec grows to take any message");
    out
}

/// Reads the header varint of a WebSocket message: (value, bytes used).
fn header(data: &[u8]) -> Result<(u64, usize), WireError> {
    let mut rest = data;
    let v = prost::encoding::decode_varint(&mut rest).map_err(|_| WireError::Header)?;
    Ok((v, data.len() - rest.len()))
}

/// A WebSocket message from the server.
pub fn decode_frame(data: &[u8]) -> Result<pb::ServerToAgent, WireError> {
    let (h, n) = header(data)?;
    if h != 0 {
        return Err(WireError::UnknownHeader(h));
    }
    decode(&data[n..])
}

/// An HTTP response body from the server (already decompressed).
pub fn decode(body: &[u8]) -> Result<pb::ServerToAgent, WireError> {
    pb::ServerToAgent::decode(body).map_err(|e| WireError::Decode(e.to_string()))
}

/// AgentCapabilities bits (opamp.proto `AgentCapabilities`).
pub mod agent_caps {
    pub const REPORTS_STATUS: u64 = 0x1;
    pub const ACCEPTS_REMOTE_CONFIG: u64 = 0x2;
    pub const REPORTS_EFFECTIVE_CONFIG: u64 = 0x4;
    pub const ACCEPTS_PACKAGES: u64 = 0x8;
    pub const REPORTS_PACKAGE_STATUSES: u64 = 0x10;
    pub const REPORTS_OWN_TRACES: u64 = 0x20;
    pub const REPORTS_OWN_METRICS: u64 = 0x40;
    pub const REPORTS_OWN_LOGS: u64 = 0x80;
    pub const ACCEPTS_OPAMP_CONNECTION_SETTINGS: u64 = 0x100;
    pub const ACCEPTS_OTHER_CONNECTION_SETTINGS: u64 = 0x200;
    pub const ACCEPTS_RESTART_COMMAND: u64 = 0x400;
    pub const REPORTS_HEALTH: u64 = 0x800;
    pub const REPORTS_REMOTE_CONFIG: u64 = 0x1000;
    pub const REPORTS_HEARTBEAT: u64 = 0x2000;
    pub const REPORTS_AVAILABLE_COMPONENTS: u64 = 0x4000;
    pub const REPORTS_CONNECTION_SETTINGS_STATUS: u64 = 0x8000;
}

/// ServerCapabilities bits.
pub mod server_caps {
    pub const ACCEPTS_STATUS: u64 = 0x1;
    pub const OFFERS_REMOTE_CONFIG: u64 = 0x2;
    pub const ACCEPTS_EFFECTIVE_CONFIG: u64 = 0x4;
    pub const OFFERS_PACKAGES: u64 = 0x8;
    pub const ACCEPTS_PACKAGES_STATUS: u64 = 0x10;
    pub const OFFERS_CONNECTION_SETTINGS: u64 = 0x20;
    pub const ACCEPTS_CONNECTION_SETTINGS_REQUEST: u64 = 0x40;
}

/// ServerToAgentFlags_ReportFullState.
pub const FLAG_REPORT_FULL_STATE: u64 = 0x1;

const AGENT_CAP_NAMES: &[(u64, &str)] = &[
    (agent_caps::REPORTS_STATUS, "ReportsStatus"),
    (agent_caps::ACCEPTS_REMOTE_CONFIG, "AcceptsRemoteConfig"),
    (
        agent_caps::REPORTS_EFFECTIVE_CONFIG,
        "ReportsEffectiveConfig",
    ),
    (agent_caps::ACCEPTS_PACKAGES, "AcceptsPackages"),
    (
        agent_caps::REPORTS_PACKAGE_STATUSES,
        "ReportsPackageStatuses",
    ),
    (agent_caps::REPORTS_OWN_TRACES, "ReportsOwnTraces"),
    (agent_caps::REPORTS_OWN_METRICS, "ReportsOwnMetrics"),
    (agent_caps::REPORTS_OWN_LOGS, "ReportsOwnLogs"),
    (
        agent_caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS,
        "AcceptsOpAMPConnectionSettings",
    ),
    (
        agent_caps::ACCEPTS_OTHER_CONNECTION_SETTINGS,
        "AcceptsOtherConnectionSettings",
    ),
    (agent_caps::ACCEPTS_RESTART_COMMAND, "AcceptsRestartCommand"),
    (agent_caps::REPORTS_HEALTH, "ReportsHealth"),
    (agent_caps::REPORTS_REMOTE_CONFIG, "ReportsRemoteConfig"),
    (agent_caps::REPORTS_HEARTBEAT, "ReportsHeartbeat"),
    (
        agent_caps::REPORTS_AVAILABLE_COMPONENTS,
        "ReportsAvailableComponents",
    ),
    (
        agent_caps::REPORTS_CONNECTION_SETTINGS_STATUS,
        "ReportsConnectionSettingsStatus",
    ),
];

const SERVER_CAP_NAMES: &[(u64, &str)] = &[
    (server_caps::ACCEPTS_STATUS, "AcceptsStatus"),
    (server_caps::OFFERS_REMOTE_CONFIG, "OffersRemoteConfig"),
    (
        server_caps::ACCEPTS_EFFECTIVE_CONFIG,
        "AcceptsEffectiveConfig",
    ),
    (server_caps::OFFERS_PACKAGES, "OffersPackages"),
    (
        server_caps::ACCEPTS_PACKAGES_STATUS,
        "AcceptsPackagesStatus",
    ),
    (
        server_caps::OFFERS_CONNECTION_SETTINGS,
        "OffersConnectionSettings",
    ),
    (
        server_caps::ACCEPTS_CONNECTION_SETTINGS_REQUEST,
        "AcceptsConnectionSettingsRequest",
    ),
];

fn names(bits: u64, table: &[(u64, &'static str)]) -> Vec<&'static str> {
    table
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// The names of the AgentCapabilities bits set in `bits`.
pub fn agent_capability_names(bits: u64) -> Vec<&'static str> {
    names(bits, AGENT_CAP_NAMES)
}

/// The names of the ServerCapabilities bits set in `bits`.
pub fn server_capability_names(bits: u64) -> Vec<&'static str> {
    names(bits, SERVER_CAP_NAMES)
}

/// Canonical UUID text of a 16-byte uid (hex for any other length).
pub fn uid_text(uid: &[u8]) -> String {
    match <[u8; 16]>::try_from(uid) {
        Ok(b) => uuid::Uuid::from_bytes(b).hyphenated().to_string(),
        Err(_) => super::status::hex(uid),
    }
}

/// `RemoteConfigStatuses` by name.
pub fn remote_status_name(s: i32) -> &'static str {
    match pb::RemoteConfigStatuses::try_from(s) {
        Ok(pb::RemoteConfigStatuses::Applied) => "APPLIED",
        Ok(pb::RemoteConfigStatuses::Applying) => "APPLYING",
        Ok(pb::RemoteConfigStatuses::Failed) => "FAILED",
        _ => "UNSET",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_header_zero() {
        let msg = pb::AgentToServer {
            instance_uid: vec![7; 16],
            sequence_num: 3,
            ..Default::default()
        };
        let f = encode_frame(&msg);
        assert_eq!(f[0], 0);
        assert_eq!(pb::AgentToServer::decode(&f[1..]).unwrap(), msg);
        // An empty message is a valid frame of one byte.
        assert_eq!(encode_frame(&pb::AgentToServer::default()), vec![0]);
        assert_eq!(decode_frame(&[0]).unwrap(), pb::ServerToAgent::default());
    }

    #[test]
    fn headers_other_than_zero_are_refused() {
        let body = pb::ServerToAgent {
            flags: FLAG_REPORT_FULL_STATE,
            ..Default::default()
        }
        .encode_to_vec();
        // A non-minimal varint 0 (0x80 0x00) is still header 0.
        let mut two = vec![0x80, 0x00];
        two.extend_from_slice(&body);
        assert_eq!(decode_frame(&two).unwrap().flags, 1);
        let mut one = vec![0x01];
        one.extend_from_slice(&body);
        assert_eq!(decode_frame(&one), Err(WireError::UnknownHeader(1)));
        assert_eq!(decode_frame(&[]), Err(WireError::Header));
        assert_eq!(decode_frame(&[0x80]), Err(WireError::Header));
        assert!(matches!(
            decode_frame(&[0, 0xff]),
            Err(WireError::Decode(_))
        ));
    }

    #[test]
    fn capability_names() {
        assert_eq!(
            agent_capability_names(0x1 | 0x2 | 0x2000),
            ["ReportsStatus", "AcceptsRemoteConfig", "ReportsHeartbeat"]
        );
        assert_eq!(
            server_capability_names(0x3),
            ["AcceptsStatus", "OffersRemoteConfig"]
        );
        assert_eq!(
            uid_text(&[0x01; 16]),
            "01010101-0101-0101-0101-010101010101"
        );
    }
}
