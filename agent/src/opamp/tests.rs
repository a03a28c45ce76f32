//! Property test of the ServerToAgent decoder: no input panics it, nor the first steps the
//! client takes with what it decoded (offer parsing, names, uid text). A seeded generator (no
//! extra dependency) makes random bytes, structurally valid protobuf streams with random field
//! numbers and wire types (nested, with lengths that overrun), and real ServerToAgent messages
//! mutated by bit flips, truncation and splicing. The seed is printed, so a failure replays.

use prost::Message;

use super::{
    remote_config,
    wire::{self, pb},
};

/// xorshift64*: small, seeded, good enough to explore inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn varint(out: &mut Vec<u8>, v: u64) {
    prost::encoding::encode_varint(v, out);
}

/// A protobuf-shaped stream: fields 1..=16 (those of ServerToAgent and below), any wire type
/// (0-7, so invalid ones too), lengths sometimes wrong, nested up to `depth`.
fn stream(r: &mut Rng, depth: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..r.below(8) {
        let field = 1 + r.below(16);
        let wt = r.below(8);
        varint(&mut out, field << 3 | wt);
        match wt {
            0 => {
                let v = match r.below(4) {
                    0 => 0,
                    1 => r.below(300),
                    2 => u64::MAX,
                    _ => r.next(),
                };
                varint(&mut out, v);
            }
            1 => out.extend(r.bytes(8)),
            5 => out.extend(r.bytes(4)),
            2 => {
                let body = if depth > 0 && r.below(2) == 0 {
                    stream(r, depth - 1)
                } else {
                    let n = r.below(40) as usize;
                    r.bytes(n)
                };
                let len = match r.below(6) {
                    0 => body.len() as u64 + r.below(10) + 1, // overruns
                    1 => r.next(),
                    _ => body.len() as u64,
                };
                varint(&mut out, len);
                out.extend(body);
            }
            _ => {
                // Groups (3, 4) and undefined wire types (6, 7): whatever follows.
                let n = r.below(6) as usize;
                out.extend(r.bytes(n));
            }
        }
    }
    out
}

/// A real message with random content.
fn message(r: &mut Rng) -> pb::ServerToAgent {
    let mut m = pb::ServerToAgent {
        instance_uid: {
            let n = r.below(20) as usize;
            r.bytes(n)
        },
        flags: r.below(4),
        capabilities: r.next(),
        ..Default::default()
    };
    if r.below(2) == 0 {
        let mut map = std::collections::HashMap::new();
        for i in 0..r.below(3) {
            map.insert(
                format!("f{i}"),
                pb::AgentConfigFile {
                    body: {
                        let n = r.below(64) as usize;
                        r.bytes(n)
                    },
                    content_type: ["application/yaml", "", "text/plain"][r.below(3) as usize]
                        .into(),
                },
            );
        }
        m.remote_config = Some(pb::AgentRemoteConfig {
            config: Some(pb::AgentConfigMap { config_map: map }),
            config_hash: r.bytes(32),
        });
    }
    if r.below(3) == 0 {
        m.error_response = Some(pb::ServerErrorResponse {
            r#type: r.below(5) as i32,
            error_message: "x".into(),
            details: Some(pb::server_error_response::Details::RetryInfo(
                pb::RetryInfo {
                    retry_after_nanoseconds: r.next(),
                },
            )),
        });
    }
    if r.below(3) == 0 {
        m.connection_settings = Some(pb::ConnectionSettingsOffers {
            hash: r.bytes(8),
            opamp: Some(pb::OpAmpConnectionSettings {
                destination_endpoint: "ws://x/v1/opamp".into(),
                heartbeat_interval_seconds: r.next(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if r.below(4) == 0 {
        m.command = Some(pb::ServerToAgentCommand {
            r#type: r.below(3) as i32,
        });
    }
    m
}

fn mutate(r: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + r.below(4) {
        if b.is_empty() {
            b.extend(r.bytes(4));
        }
        let i = r.below(b.len() as u64) as usize;
        match r.below(4) {
            0 => b[i] ^= 1 << r.below(8),
            1 => b.truncate(i),
            2 => {
                let extra = {
                    let n = r.below(8) as usize;
                    r.bytes(n)
                };
                b.splice(i..i, extra);
            }
            _ => {
                let j = r.below(b.len() as u64) as usize;
                let (lo, hi) = (i.min(j), i.max(j));
                let dup = b[lo..hi].to_vec();
                b.extend(dup);
            }
        }
    }
    b
}

/// What the client does first with a decoded message.
fn use_it(m: &pb::ServerToAgent) {
    let _ = wire::uid_text(&m.instance_uid);
    let _ = wire::server_capability_names(m.capabilities);
    if let Some(rc) = &m.remote_config {
        let _ = remote_config::from_offer(rc);
    }
    if let Some(cs) = &m.connection_settings {
        if let Some(o) = &cs.opamp {
            let _ = super::connection::parse_endpoint(&o.destination_endpoint);
        }
    }
    if let Some(id) = &m.agent_identification {
        let _ = <[u8; 16]>::try_from(id.new_instance_uid.as_slice());
    }
}

#[test]
fn server_to_agent_decoder_never_panics() {
    let seed = std::env::var("OPAMP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0a9a_u64);
    let rounds: u64 = std::env::var("OPAMP_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60_000);
    eprintln!("fuzz seed {seed}, {rounds} rounds (OPAMP_FUZZ_SEED / OPAMP_FUZZ_ROUNDS to change)");
    let mut r = Rng(seed | 1);
    let (mut decoded, mut refused) = (0u64, 0u64);
    for _ in 0..rounds {
        let body = match r.below(3) {
            0 => {
                let n = r.below(256) as usize;
                r.bytes(n)
            }
            1 => stream(&mut r, 3),
            _ => {
                let m = message(&mut r);
                mutate(&mut r, m.encode_to_vec())
            }
        };
        let mut frame = match r.below(8) {
            0 => {
                let n = 1 + r.below(3) as usize;
                r.bytes(n)
            } // any header
            1 => vec![0x80, 0x00], // non-minimal zero
            _ => vec![0],
        };
        frame.extend_from_slice(&body);
        for result in [wire::decode(&body), wire::decode_frame(&frame)] {
            match result {
                Ok(m) => {
                    decoded += 1;
                    use_it(&m);
                }
                Err(_) => refused += 1,
            }
        }
    }
    // Both kinds of input were explored.
    assert!(decoded > rounds / 10, "decoded {decoded}");
    assert!(refused > rounds / 10, "refused {refused}");
}

#[test]
fn real_messages_round_trip_through_frames() {
    let mut r = Rng(42);
    for _ in 0..2000 {
        let m = message(&mut r);
        let mut frame = vec![0];
        m.encode(&mut frame).unwrap();
        assert_eq!(wire::decode_frame(&frame).unwrap(), m);
    }
}
