//! `ConfigError`: every way loading a config can fail, shown as two lines: the cause (file, line,
//! column, field path, problem), then `fix: ` and what is allowed.

use std::{io, path::PathBuf};

/// Where a bad value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The config file; `origin` is its name as given (`<default>` for the embedded one).
    /// Line and column are 1-based; `None` when the position is not known.
    File {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// Not set in the file `origin`: the built-in default applies.
    Default { origin: String },
    /// An environment variable override.
    Env { var: String, value: String },
    /// Unknown, e.g. `validate()` on a config built or changed in code.
    Unknown,
}

impl Source {
    pub(crate) fn file(origin: &str, line: Option<usize>, column: Option<usize>) -> Source {
        Source::File {
            origin: origin.to_string(),
            line,
            column,
        }
    }

    /// `agent.yaml:3:11: `, `agent.yaml: `, `env AGENT_X="v": ` or nothing.
    fn prefix(&self) -> String {
        match self {
            Source::File {
                origin,
                line: Some(l),
                column: Some(c),
            } => format!("{origin}:{l}:{c}: "),
            Source::File {
                origin,
                line: Some(l),
                column: None,
            } => format!("{origin}:{l}: "),
            Source::File { origin, .. } | Source::Default { origin } => format!("{origin}: "),
            Source::Env { var, value } => format!("env {var}={value:?}: "),
            Source::Unknown => String::new(),
        }
    }

    fn suffix(&self) -> &'static str {
        match self {
            Source::Default { .. } => " (not set in the file: this is the built-in default)",
            _ => "",
        }
    }
}

/// A config that cannot be read, parsed or validated. `Display` is two lines: `cause()`, then
/// `fix: ` followed by `fix()`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{}\nfix: {}", self.cause(), self.fix())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Not valid YAML, or a value of the wrong type (e.g. a word where a number belongs).
    #[error("{}\nfix: {}", self.cause(), self.fix())]
    Yaml {
        at: Box<Source>,
        /// The dotted field path when known (`""` is the whole file).
        path: Option<String>,
        problem: String,
        fix: String,
    },
    /// A field that does not exist (usually a typo).
    #[error("{}\nfix: {}", self.cause(), self.fix())]
    UnknownField {
        at: Box<Source>,
        /// The dotted path of the unknown field itself, e.g. `probes.syscalls.intervall`.
        path: String,
        /// The fields allowed in that mapping.
        allowed: Vec<String>,
        /// The allowed field the name most resembles.
        suggestion: Option<String>,
    },
    /// A value of the right type that is out of range or malformed.
    #[error("{}\nfix: {}", self.cause(), self.fix())]
    Invalid {
        at: Box<Source>,
        path: String,
        problem: String,
        fix: String,
    },
}

impl ConfigError {
    /// The first line: where and what.
    pub fn cause(&self) -> String {
        match self {
            ConfigError::Read { path, source } => {
                format!("cannot read {}: {source}", path.display())
            }
            ConfigError::Yaml {
                at, path, problem, ..
            } => match path.as_deref() {
                Some(p) if !p.is_empty() => format!("{}{p}: {problem}", at.prefix()),
                _ => format!("{}{problem}", at.prefix()),
            },
            ConfigError::UnknownField { at, path, .. } => {
                format!("{}unknown field {path}", at.prefix())
            }
            ConfigError::Invalid {
                at, path, problem, ..
            } => format!("{}{path}: {problem}{}", at.prefix(), at.suffix()),
        }
    }

    /// The second line without its `fix: ` label: what to change and what is allowed.
    pub fn fix(&self) -> String {
        match self {
            ConfigError::Read { source, .. } => match source.kind() {
                io::ErrorKind::InvalidData => "save the file as UTF-8 text".to_string(),
                io::ErrorKind::PermissionDenied => {
                    "check the path given to --config and that the agent may read it".to_string()
                }
                _ => "check the path given to --config".to_string(),
            },
            ConfigError::Yaml { fix, .. } | ConfigError::Invalid { fix, .. } => fix.clone(),
            ConfigError::UnknownField {
                allowed,
                suggestion,
                ..
            } => {
                if allowed.is_empty() {
                    return "remove it: this mapping takes no fields".to_string();
                }
                let mut s = format!("allowed fields here: {}", allowed.join(", "));
                if let Some(g) = suggestion {
                    s.push_str(&format!(" (did you mean {g}?)"));
                }
                s
            }
        }
    }

    /// The dotted field path the error is about, when there is one.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Yaml { path, .. } => path.as_deref(),
            ConfigError::UnknownField { path, .. } | ConfigError::Invalid { path, .. } => {
                Some(path)
            }
        }
    }

    /// Where the bad value came from (`None` for read errors).
    pub fn source_of_value(&self) -> Option<&Source> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Yaml { at, .. }
            | ConfigError::UnknownField { at, .. }
            | ConfigError::Invalid { at, .. } => Some(at.as_ref()),
        }
    }

    /// The 1-based line in the file, when known.
    pub fn line(&self) -> Option<usize> {
        match self.source_of_value() {
            Some(Source::File { line, .. }) => *line,
            _ => None,
        }
    }
}
