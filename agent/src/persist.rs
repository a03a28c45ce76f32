//! Format versions of what the agent keeps on disk across restarts, so that an agent of another
//! version migrates what it understands and discards what it does not, rather than misreading it.
//!
//! What is persisted today (all under `/var/lib/agent` in the DaemonSet and the systemd unit):
//!
//! | file | format marker | an unknown version |
//! |---|---|---|
//! | `<output.dir>/instance-id` (`service.instance.id`) | first line `agent-instance-id <N>` ([`INSTANCE_ID`]); a bare UUID is the unversioned layout and is rewritten | the file is left alone and a fresh id is used for this run |
//! | `<spool dir>/<signal>/` (export spool: segments, `head`) | `FORMAT` file `agent-spool <N>` ([`SPOOL`]); no `FORMAT` with data is the unversioned layout (identical to version 1) | segments and `head` are deleted (logged with their size) |
//! | `<output.dir>/enforcement/journal` (limiting actions to undo) | first line `agent-enforcement-journal <N>` ([`ENFORCEMENT_JOURNAL`]); version 1 (no removal lines) is read as is | moved aside to `journal.unknown` (logged: its limits are not undone by this agent) |
//! | `<enforcement.bpffs>/enforce-v<N>/` (pinned maps and links of `persist: true` limits) | the directory name ([`ENFORCEMENT_PINS`]) | another version's directory is left alone |
//!
//! A layout change bumps the version where it is defined and adds the migration from the
//! previous version next to the reader. New persisted state (the last remote config, the
//! enforcement journal) takes a [`Format`] of its own.

use std::{
    io::{self, Write},
    path::Path,
};

/// A persisted format: its name and version, written as the line `<name> <version>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    pub name: &'static str,
    pub version: u32,
}

/// The export spool's directory layout (`export::spool`).
pub const SPOOL: Format = Format {
    name: "agent-spool",
    version: 1,
};

/// The instance id file (`export::resource::instance_id`).
pub const INSTANCE_ID: Format = Format {
    name: "agent-instance-id",
    version: 1,
};

/// The enforcement journal (`enforcement::journal`).
pub const ENFORCEMENT_JOURNAL: Format = Format {
    name: "agent-enforcement-journal",
    version: 2,
};

/// The layout of pinned enforcement maps and links (`enforcement::pins`): a map or value layout
/// change in `agent-common` (`ratelimit`, `block`) bumps it, so an agent never reuses maps of
/// another layout.
pub const ENFORCEMENT_PINS: Format = Format {
    name: "enforce",
    version: 1,
};

/// The name of the marker file in a versioned directory.
pub const MARKER_FILE: &str = "FORMAT";

/// What a marker line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// This format, this version.
    Current,
    /// This format, an older version (a migration may exist).
    Older(u32),
    /// Anything else: a newer version, another format, garbage. The text found, for the log.
    Unknown(String),
}

impl Format {
    /// The marker line, newline included.
    pub fn line(&self) -> String {
        format!("{} {}\n", self.name, self.version)
    }

    /// Classifies a marker line (surrounding whitespace ignored).
    pub fn check(&self, line: &str) -> Found {
        let line = line.trim();
        let version = line
            .strip_prefix(self.name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.parse::<u32>().ok());
        match version {
            Some(v) if v == self.version => Found::Current,
            Some(v) if v < self.version && v > 0 => Found::Older(v),
            _ => Found::Unknown(line.chars().take(80).collect()),
        }
    }

    /// The marker of directory `dir`: `None` when it has none.
    pub fn read_marker(&self, dir: &Path) -> io::Result<Option<Found>> {
        match std::fs::read_to_string(dir.join(MARKER_FILE)) {
            Ok(text) => Ok(Some(self.check(text.lines().next().unwrap_or("")))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Ok(Some(Found::Unknown("(not text)".into())))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the marker of `dir` (atomically: a temporary file renamed over it, synced).
    pub fn write_marker(&self, dir: &Path) -> io::Result<()> {
        write_atomic(&dir.join(MARKER_FILE), self.line().as_bytes())
    }
}

/// Replaces `path` with `bytes` atomically: `<path>.tmp`, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Format = Format {
        name: "agent-thing",
        version: 3,
    };

    #[test]
    fn marker_lines() {
        assert_eq!(F.line(), "agent-thing 3\n");
        assert_eq!(F.check("agent-thing 3"), Found::Current);
        assert_eq!(F.check(" agent-thing 3 \n"), Found::Current);
        assert_eq!(F.check("agent-thing 2"), Found::Older(2));
        assert_eq!(
            F.check("agent-thing 4"),
            Found::Unknown("agent-thing 4".into())
        );
        assert_eq!(
            F.check("agent-thing 0"),
            Found::Unknown("agent-thing 0".into())
        );
        assert_eq!(
            F.check("agent-things 3"),
            Found::Unknown("agent-things 3".into())
        );
        assert_eq!(
            F.check("agent-thing three"),
            Found::Unknown("agent-thing three".into())
        );
        assert_eq!(F.check(""), Found::Unknown(String::new()));
    }

    #[test]
    fn markers_on_disk() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(F.read_marker(d.path()).unwrap(), None);
        F.write_marker(d.path()).unwrap();
        assert_eq!(F.read_marker(d.path()).unwrap(), Some(Found::Current));
        assert!(!d.path().join("FORMAT.tmp").exists());
        std::fs::write(d.path().join(MARKER_FILE), b"\xff\xfe").unwrap();
        assert_eq!(
            F.read_marker(d.path()).unwrap(),
            Some(Found::Unknown("(not text)".into()))
        );
    }
}
