//! What the OpAMP client keeps on disk under `<output.dir>/opamp/`: the last applied remote
//! config (`remote-config.json`, used at the next start, so an unreachable server leaves the
//! agent as the fleet last configured it) and accepted OpAMP connection settings
//! (`connection.json`, so an offered endpoint or client certificate survives a restart). The
//! instance uid is `<output.dir>/instance-id`, shared with OTLP (`export::resource`).
//!
//! Every file carries `format_version`; a file of another version, or one that does not parse, is
//! ignored with a warning (never an error that stops the agent). Writes go to a temporary file
//! that is renamed, so a crash leaves the old file or the new one.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{connection::ConnSettings, remote_config::RemoteDoc, status::hex};
use crate::config::TlsConfig;

/// The on-disk format version of both files.
pub const FORMAT_VERSION: u32 = 1;

/// The directory under the output dir.
pub fn dir(output_dir: &Path) -> PathBuf {
    output_dir.join("opamp")
}

#[derive(Serialize, Deserialize)]
struct StoredRemote {
    format_version: u32,
    /// Hex of the server's config_hash.
    hash: String,
    key: String,
    content_type: String,
    body: String,
    saved_unix_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredConnection {
    format_version: u32,
    /// The `opamp.endpoint` of the local config these settings replaced: when the local config
    /// names another server, the local config wins and this file is ignored.
    replaces: String,
    endpoint: String,
    headers: BTreeMap<String, String>,
    tls: TlsConfig,
    heartbeat_interval_seconds: Option<u64>,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path, version: impl Fn(&T) -> u32) -> Option<T> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}; ignoring it", path.display());
            return None;
        }
    };
    match serde_json::from_str::<T>(&text) {
        Ok(v) if version(&v) == FORMAT_VERSION => Some(v),
        Ok(v) => {
            tracing::warn!(
                "{} has format version {}, this agent reads {FORMAT_VERSION}; ignoring it",
                path.display(),
                version(&v)
            );
            None
        }
        Err(e) => {
            tracing::warn!("{} does not parse ({e}); ignoring it", path.display());
            None
        }
    }
}

/// The last applied remote config.
pub struct RemoteStore {
    path: PathBuf,
}

impl RemoteStore {
    pub fn new(output_dir: &Path) -> RemoteStore {
        RemoteStore {
            path: dir(output_dir).join("remote-config.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Option<RemoteDoc> {
        let s: StoredRemote = read(&self.path, |s: &StoredRemote| s.format_version)?;
        Some(RemoteDoc {
            hash: unhex(&s.hash)?,
            key: s.key,
            content_type: s.content_type,
            body: s.body,
        })
    }

    /// Stores `doc` (`None`: forgets the stored one).
    pub fn save(&self, doc: Option<&RemoteDoc>) {
        let r = match doc {
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Some(d) => {
                let s = StoredRemote {
                    format_version: FORMAT_VERSION,
                    hash: hex(&d.hash),
                    key: d.key.clone(),
                    content_type: d.content_type.clone(),
                    body: d.body.clone(),
                    saved_unix_ms: super::status::now_ms(),
                };
                let json = serde_json::to_vec_pretty(&s).expect("plain data serializes");
                write_atomic(&self.path, &json)
            }
        };
        if let Err(e) = r {
            tracing::warn!(
                "cannot store the remote config in {}: {e}; the next start uses the local file only",
                self.path.display()
            );
        }
    }
}

/// Accepted OpAMP connection settings.
pub struct ConnectionStore {
    path: PathBuf,
}

impl ConnectionStore {
    pub fn new(output_dir: &Path) -> ConnectionStore {
        ConnectionStore {
            path: dir(output_dir).join("connection.json"),
        }
    }

    /// The stored settings over `local` (same timeouts and limits), when they replace the
    /// endpoint `local` names; and the stored heartbeat interval.
    pub fn load(&self, local: &ConnSettings) -> Option<(ConnSettings, Option<u64>)> {
        let s: StoredConnection = read(&self.path, |s: &StoredConnection| s.format_version)?;
        if s.replaces != local.endpoint {
            tracing::info!(
                "the local config names another OpAMP server than {} replaced; using the local one",
                self.path.display()
            );
            return None;
        }
        let (uri, kind) = super::connection::parse_endpoint(&s.endpoint).ok()?;
        Some((
            ConnSettings {
                endpoint: s.endpoint,
                uri,
                kind,
                headers: s.headers,
                tls: s.tls,
                ..local.clone()
            },
            s.heartbeat_interval_seconds,
        ))
    }

    pub fn save(&self, local_endpoint: &str, s: &ConnSettings, heartbeat: Option<u64>) {
        let stored = StoredConnection {
            format_version: FORMAT_VERSION,
            replaces: local_endpoint.to_string(),
            endpoint: s.endpoint.clone(),
            headers: s.headers.clone(),
            tls: s.tls.clone(),
            heartbeat_interval_seconds: heartbeat,
        };
        let json = serde_json::to_vec_pretty(&stored).expect("plain data serializes");
        if let Err(e) = write_atomic(&self.path, &json) {
            tracing::warn!(
                "cannot store the accepted OpAMP connection settings in {}: {e}; they last until restart",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_config_round_trip_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let s = RemoteStore::new(dir.path());
        assert_eq!(s.load(), None);
        let d = RemoteDoc {
            hash: vec![0xab, 0x01],
            key: "agent".into(),
            content_type: "application/yaml".into(),
            body: "probes: {}\n".into(),
        };
        s.save(Some(&d));
        assert_eq!(s.load(), Some(d));
        let text = std::fs::read_to_string(s.path()).unwrap();
        assert!(text.contains("\"format_version\": 1"), "{text}");
        std::fs::write(
            s.path(),
            text.replace("\"format_version\": 1", "\"format_version\": 2"),
        )
        .unwrap();
        assert_eq!(s.load(), None, "another format version is ignored");
        std::fs::write(s.path(), "{not json").unwrap();
        assert_eq!(s.load(), None);
        s.save(None);
        assert!(!s.path().exists());
    }

    #[test]
    fn connection_settings_apply_only_to_the_server_they_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let local = ConnSettings::from_config(&crate::opamp::config::OpampConfig {
            endpoint: "ws://a:4320/v1/opamp".into(),
            ..Default::default()
        })
        .unwrap();
        let store = ConnectionStore::new(dir.path());
        let mut next = local.clone();
        next.endpoint = "http://b:4320/v1/opamp".into();
        store.save(&local.endpoint, &next, Some(5));
        let (got, hb) = store.load(&local).unwrap();
        assert_eq!(got.endpoint, "http://b:4320/v1/opamp");
        assert_eq!(got.kind, super::super::connection::Kind::Http);
        assert_eq!(hb, Some(5));
        let mut other = local.clone();
        other.endpoint = "ws://c:4320/v1/opamp".into();
        assert!(store.load(&other).is_none());
    }
}
