//! The OTLP spec's retry rules: which gRPC codes and HTTP statuses are retryable, the server's
//! own delay (gRPC `RetryInfo`, HTTP `Retry-After`), and exponential backoff with jitter.

use std::time::Duration;

use prost::Message;

/// First backoff delay, doubled per failed attempt up to `MAX_BACKOFF`.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// A server-requested delay is honoured up to this.
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(300);

/// gRPC codes the spec says to retry. `RESOURCE_EXHAUSTED` only when the server sent
/// `RetryInfo` (it can recover), so the caller passes whether it did.
pub fn grpc_retryable(code: tonic::Code, has_retry_info: bool) -> bool {
    use tonic::Code::*;
    match code {
        Cancelled | DeadlineExceeded | Aborted | OutOfRange | Unavailable | DataLoss => true,
        ResourceExhausted => has_retry_info,
        _ => false,
    }
}

/// HTTP statuses the spec says to retry.
pub fn http_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// `Retry-After` as delay-seconds (HTTP dates are not honoured: backoff applies).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[derive(Clone, PartialEq, Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.Status`, as carried in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

/// The `RetryInfo` delay in a gRPC status's details, if the server sent one.
pub fn grpc_retry_delay(details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(details).ok()?;
    status
        .details
        .iter()
        .find(|a| a.type_url.ends_with("google.rpc.RetryInfo"))
        .and_then(|a| RetryInfo::decode(a.value.as_slice()).ok())
        .and_then(|r| r.retry_delay)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// Backoff before attempt `attempt + 1` (attempt counts failures so far, from 1), with ±20%
/// jitter from `random` in [0, 1); a server-requested delay wins when given.
pub fn delay(attempt: u32, server: Option<Duration>, random: f64) -> Duration {
    if let Some(d) = server {
        return d.min(MAX_SERVER_DELAY);
    }
    let exp = INITIAL_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    exp.mul_f64(0.8 + 0.4 * random.clamp(0.0, 1.0))
}

/// A cheap random number in [0, 1) for jitter (no cryptographic needs).
pub fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let x = (nanos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_retryable_codes_and_statuses() {
        assert!(grpc_retryable(tonic::Code::Unavailable, false));
        assert!(grpc_retryable(tonic::Code::DeadlineExceeded, false));
        assert!(!grpc_retryable(tonic::Code::ResourceExhausted, false));
        assert!(grpc_retryable(tonic::Code::ResourceExhausted, true));
        assert!(!grpc_retryable(tonic::Code::InvalidArgument, false));
        assert!(!grpc_retryable(tonic::Code::Unauthenticated, false));
        for s in [429, 502, 503, 504] {
            assert!(http_retryable(s));
        }
        for s in [400, 401, 403, 404, 413, 500] {
            assert!(!http_retryable(s));
        }
    }

    #[test]
    fn retry_info_and_retry_after() {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: 3,
                nanos: 500_000_000,
            }),
        };
        let status = RpcStatus {
            code: 14,
            message: "busy".into(),
            details: vec![Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: info.encode_to_vec(),
            }],
        };
        assert_eq!(
            grpc_retry_delay(&status.encode_to_vec()),
            Some(Duration::from_millis(3500))
        );
        assert_eq!(grpc_retry_delay(b"\xff\xff"), None);
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_server_delay_wins() {
        assert_eq!(delay(1, None, 0.5), Duration::from_secs(1));
        assert_eq!(delay(3, None, 0.5), Duration::from_secs(4));
        assert_eq!(delay(30, None, 0.5), MAX_BACKOFF);
        assert_eq!(delay(1, None, 0.0), Duration::from_millis(800));
        assert!(delay(1, None, 0.999) < Duration::from_millis(1200));
        assert_eq!(
            delay(5, Some(Duration::from_secs(2)), 0.5),
            Duration::from_secs(2)
        );
        assert_eq!(
            delay(5, Some(Duration::from_secs(9999)), 0.5),
            MAX_SERVER_DELAY
        );
        let j = jitter();
        assert!((0.0..1.0).contains(&j));
    }
}
