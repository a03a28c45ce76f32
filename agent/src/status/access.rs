//! Who may read what on the status endpoint, and its listeners (`status.listen`, and
//! `status.debug_listen` when set).
//!
//! `/healthz`, `/readyz` and `/metrics` answer on every listener: the kubelet's probes and a
//! Prometheus scrape reach the pod IP. `/status` and `/debug/*` name every process on the host
//! and cost CPU per request (a flame graph capture samples for seconds), so they answer on a
//! listener bound to a loopback address, or to a request carrying `Authorization: Bearer
//! <token>` when `status.token_file` is set; anything else gets 403 with the fix.
//!
//! The decision is per listener (the address it is bound to), not per peer address: a local
//! proxy (a service mesh sidecar) forwards remote requests from a loopback source address, so
//! the peer address proves nothing.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use tokio::{net::TcpListener, sync::watch};

use super::{bind, router, serve_router, StatusContext};
use crate::config::StatusConfig;

/// Paths that need a loopback listener or the token (a prefix match).
pub const PRIVATE_PREFIXES: &[&str] = &["/status", "/debug/"];

/// Whether `path` is one of the private routes.
pub fn is_private(path: &str) -> bool {
    PRIVATE_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// The access rule of one listener.
#[derive(Clone, Debug)]
pub struct Access {
    /// Bound to a loopback address: every route is open.
    pub loopback: bool,
    /// The bearer token that opens the private routes elsewhere.
    pub token: Option<Arc<str>>,
}

impl Access {
    pub fn for_listener(addr: SocketAddr, token: Option<Arc<str>>) -> Access {
        Access {
            loopback: addr.ip().is_loopback(),
            token,
        }
    }

    /// Whether a request for `path` with this `Authorization` header value may be served.
    pub fn allows(&self, path: &str, authorization: Option<&[u8]>) -> bool {
        if self.loopback || !is_private(path) {
            return true;
        }
        let (Some(token), Some(auth)) = (&self.token, authorization) else {
            return false;
        };
        match auth.strip_prefix(b"Bearer ") {
            Some(given) => constant_time_eq(given, token.as_bytes()),
            None => false,
        }
    }
}

/// Compares without an early exit on the first differing byte (no timing oracle on the token).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn guard(State(access): State<Access>, req: Request, next: Next) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if access.allows(req.uri().path(), auth) {
        return next.run(req).await;
    }
    let why = if access.token.is_some() {
        "forbidden: /status and /debug/* need the status token on this address\n\
         fix: send Authorization: Bearer <the content of status.token_file>, or use a loopback \
         listener (status.debug_listen)\n"
    } else {
        "forbidden: /status and /debug/* answer on loopback addresses only\n\
         fix: use status.debug_listen (e.g. 127.0.0.1:9465, through kubectl port-forward), or set \
         status.token_file\n"
    };
    (StatusCode::FORBIDDEN, why).into_response()
}

/// Every route of [`router`], behind this listener's access rule.
pub fn guarded_router(ctx: StatusContext, access: Access) -> Router {
    router(ctx).layer(middleware::from_fn_with_state(access, guard))
}

/// The token file could not be used. Displays as two lines: cause, then `fix: ...`.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("status.token_file {path}: {source}\nfix: create the file with the token, or set status.token_file to null; until then /status and /debug/* answer only on loopback")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("status.token_file {path} is empty\nfix: write a token (e.g. 32 random hex digits) into it; until then /status and /debug/* answer only on loopback")]
    Empty { path: PathBuf },
}

/// The token: the file's content without surrounding whitespace.
pub fn read_token(path: &Path) -> Result<Arc<str>, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let t = text.trim();
    if t.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Arc::from(t))
}

/// The bound listeners of one status config.
pub struct Listeners {
    list: Vec<(TcpListener, Access)>,
}

impl Listeners {
    /// The addresses actually bound (port 0 resolved), `listen` first.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.list
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }
}

/// Binds `status.listen` (its failure is the error) and `status.debug_listen` (its failure is
/// logged: the main listener still serves); reads the token (a bad file is logged, and the
/// private routes stay closed off loopback).
pub async fn bind_all(cfg: &StatusConfig) -> Result<Listeners, super::StatusError> {
    let token = cfg.token_file.as_deref().and_then(|p| match read_token(p) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!("{e}");
            None
        }
    });
    let main = bind(cfg.listen).await?;
    let mut list = vec![(main, Access::for_listener(cfg.listen, token.clone()))];
    if let Some(addr) = cfg.debug_listen {
        match bind(addr).await {
            Ok(l) => list.push((l, Access::for_listener(addr, token))),
            Err(e) => tracing::error!("status.debug_listen: {e}"),
        }
    }
    Ok(Listeners { list })
}

/// Serves every listener until `shutdown` completes (each with the graceful stop of
/// [`serve_router`]).
pub async fn serve_all(
    listeners: Listeners,
    ctx: StatusContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let fire = tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let mut tasks = Vec::new();
    for (listener, access) in listeners.list {
        let mut rx = rx.clone();
        let app = guarded_router(ctx.clone(), access);
        tasks.push(tokio::spawn(serve_router(listener, app, async move {
            let _ = rx.wait_for(|v| *v).await;
        })));
    }
    let mut result = Ok(());
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(io::Error::other(e)),
        }
    }
    fire.abort();
    result
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        sync::oneshot,
    };

    use super::*;
    use crate::{metrics::Store, status::state::AgentState};

    fn ctx() -> StatusContext {
        StatusContext {
            state: Arc::new(AgentState::new("h".into())),
            store: Store::new(),
            version: "0",
            buckets: crate::metrics::prometheus::Buckets::Full,
            transform: crate::transform::Transformer::passthrough(),
        }
    }

    async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (
            head.split(' ').nth(1).unwrap().parse().unwrap(),
            body.to_string(),
        )
    }

    #[test]
    fn rules() {
        let open = Access::for_listener("127.0.0.1:1".parse().unwrap(), None);
        let v6 = Access::for_listener("[::1]:1".parse().unwrap(), None);
        let pod = Access::for_listener("10.1.2.3:1".parse().unwrap(), None);
        let tok = Access::for_listener("0.0.0.0:1".parse().unwrap(), Some(Arc::from("s3cret")));
        for p in ["/status", "/debug/flamegraph.svg", "/debug/pprof/profile"] {
            assert!(open.allows(p, None) && v6.allows(p, None), "{p}");
            assert!(!pod.allows(p, None), "{p}");
            assert!(!pod.allows(p, Some(b"Bearer s3cret")), "{p}");
            assert!(!tok.allows(p, None), "{p}");
            assert!(tok.allows(p, Some(b"Bearer s3cret")), "{p}");
            for wrong in [
                &b"Bearer s3cre"[..],
                b"Bearer s3cretx",
                b"bearer s3cret",
                b"s3cret",
            ] {
                assert!(!tok.allows(p, Some(wrong)), "{p} {wrong:?}");
            }
        }
        for p in ["/healthz", "/readyz", "/metrics", "/nope"] {
            assert!(pod.allows(p, None) && tok.allows(p, None), "{p}");
        }
    }

    #[test]
    fn token_file_is_trimmed_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("token");
        std::fs::write(&f, "abc123\n").unwrap();
        assert_eq!(&*read_token(&f).unwrap(), "abc123");
        std::fs::write(&f, " \n").unwrap();
        let e = read_token(&f).unwrap_err().to_string();
        assert_eq!(e.lines().count(), 2, "{e}");
        assert!(e.contains("is empty") && e.lines().nth(1).unwrap().starts_with("fix: "));
        let e = read_token(&d.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert_eq!(e.lines().count(), 2, "{e}");
        assert!(e.starts_with("status.token_file "), "{e}");
    }

    /// The pod layout: `listen` on a non-loopback address (here every address, reached through
    /// this host's own non-loopback address when it has one, else through 127.0.0.1 which
    /// still lands on the 0.0.0.0 listener), `debug_listen` on loopback.
    #[tokio::test]
    async fn main_listener_hides_private_routes_debug_listener_serves_them() {
        let d = tempfile::tempdir().unwrap();
        let token = d.path().join("token");
        std::fs::write(&token, "t0k\n").unwrap();
        let cfg = StatusConfig {
            enabled: true,
            listen: "0.0.0.0:0".parse().unwrap(),
            debug_listen: Some("127.0.0.1:0".parse().unwrap()),
            token_file: Some(token),
            ..Default::default()
        };
        let listeners = bind_all(&cfg).await.unwrap();
        let addrs = listeners.addrs();
        assert_eq!(addrs.len(), 2);
        let main: SocketAddr = format!("127.0.0.1:{}", addrs[0].port()).parse().unwrap();
        let debug = addrs[1];
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_all(listeners, ctx(), async move {
            let _ = rx.await;
        }));

        assert_eq!(get(main, "/healthz", None).await, (200, "ok\n".into()));
        assert_eq!(get(main, "/readyz", None).await.0, 503);
        assert_eq!(get(main, "/metrics", None).await.0, 200);
        let (code, body) = get(main, "/status", None).await;
        assert_eq!(code, 403, "{body}");
        assert_eq!(body.lines().count(), 2, "{body}");
        assert!(body.lines().nth(1).unwrap().starts_with("fix: "), "{body}");
        assert_eq!(get(main, "/debug/pprof/profile", None).await.0, 403);
        assert_eq!(get(main, "/status", Some("Bearer nope")).await.0, 403);
        assert_eq!(get(main, "/status", Some("Bearer t0k")).await.0, 200);
        assert_eq!(get(debug, "/status", None).await.0, 200);
        assert_eq!(get(debug, "/healthz", None).await.0, 200);

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("both listeners stop")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_debug_listener_that_cannot_bind_leaves_the_main_one() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = StatusConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().unwrap(),
            debug_listen: Some(taken.local_addr().unwrap()),
            token_file: Some(PathBuf::from("/nonexistent/token")),
            ..Default::default()
        };
        assert_eq!(bind_all(&cfg).await.unwrap().addrs().len(), 1);
        let cfg = StatusConfig {
            listen: taken.local_addr().unwrap(),
            debug_listen: None,
            ..cfg
        };
        assert!(bind_all(&cfg).await.is_err());
    }
}
