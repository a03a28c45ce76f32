//! Reading, parsing, validating and serializing a `Config`, and turning the YAML parser's
//! errors into `ConfigError`s that show the file, line, column and field path.

use std::{fmt::Write as _, fs, path::Path};

use serde_yaml_ng::Value;
use sha2::{Digest, Sha256};

use super::{
    env,
    error::{ConfigError, Source},
    locate,
    model::Config,
    validate::{self, fix_for},
    DEFAULT_YAML,
};

/// The origin shown in errors for the embedded default config.
pub const DEFAULT_ORIGIN: &str = "<default>";

impl Config {
    /// Parses and validates a config file's text. `origin` names it in errors (`<default>` for
    /// the embedded one). An empty file (or one with only comments) is the default config.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg = parse(text, origin)?;
        cfg.validate()
            .map_err(|e| locate_invalid(e, text, origin, &[]))?;
        Ok(cfg)
    }

    /// Reads the file at `path` (the embedded default when `None`), parses it, applies the
    /// environment overrides (`ENV_OVERRIDES`), then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        load_with(path, |k| std::env::var(k).ok())
    }

    /// Applies the environment overrides that `get` returns (empty values are ignored), e.g.
    /// `cfg.apply_env(|k| std::env::var(k).ok())`. A value that does not parse or is out of
    /// range is an error naming the variable.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        env::apply(self, get)
    }

    /// Range and format checks on every field; the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// The config as YAML (every field, no comments).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("a Config always serializes to YAML")
    }

    /// Hex SHA-256 of `to_yaml()`: 64 characters, equal for equal configs.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.to_yaml().as_bytes());
        let mut hex = String::with_capacity(64);
        for b in digest {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }
}

/// `Config::load` with the environment given as a function (for tests).
pub(crate) fn load_with(
    path: Option<&Path>,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let (text, origin) = match path {
        Some(p) => {
            let text = fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            (text, p.display().to_string())
        }
        None => (DEFAULT_YAML.to_string(), DEFAULT_ORIGIN.to_string()),
    };
    let mut cfg = parse(&text, &origin)?;
    let from_env = env::present(&get);
    cfg.apply_env(&get)?;
    cfg.validate()
        .map_err(|e| locate_invalid(e, &text, &origin, &from_env))?;
    Ok(cfg)
}

/// Parses without validating.
fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    match serde_yaml_ng::from_str::<Config>(text) {
        Ok(cfg) => Ok(cfg),
        // A document that is only `~` or `null` is empty too.
        Err(_) if matches!(serde_yaml_ng::from_str::<Value>(text), Ok(Value::Null)) => {
            Ok(Config::default())
        }
        Err(e) => Err(yaml_error(&e, text, origin)),
    }
}

/// Whether the mapping in `text` has the dotted `path`.
fn file_has(text: &str, path: &str) -> bool {
    let Ok(mut v) = serde_yaml_ng::from_str::<Value>(text) else {
        return false;
    };
    for key in path.split('.') {
        match v.get(key) {
            Some(next) => v = next.clone(),
            None => return false,
        }
    }
    true
}

/// Points a `validate()` error at where the value came from: an environment variable, a line
/// of the file, or the built-in default.
fn locate_invalid(
    e: ConfigError,
    text: &str,
    origin: &str,
    from_env: &[(&str, &str, String)],
) -> ConfigError {
    let ConfigError::Invalid {
        at,
        path,
        problem,
        fix,
    } = e
    else {
        return e;
    };
    let at = if *at != Source::Unknown {
        at
    } else if let Some((var, _, value)) = from_env.iter().rev().find(|(_, p, _)| *p == path) {
        Box::new(Source::Env {
            var: var.to_string(),
            value: value.clone(),
        })
    } else if let Some((l, c)) = path
        .contains('[')
        .then(|| locate::find_item(text, &path).or_else(|| locate::find_path(text, &path)))
        .flatten()
    {
        Box::new(Source::file(origin, Some(l), Some(c)))
    } else if file_has(text, &path) {
        let pos = locate::find(text, &path);
        Box::new(Source::file(origin, pos.map(|p| p.0), pos.map(|p| p.1)))
    } else {
        Box::new(Source::Default {
            origin: origin.to_string(),
        })
    };
    ConfigError::Invalid {
        at,
        path,
        problem,
        fix,
    }
}

/// Splits serde_yaml_ng's `path.to.field: message` into the path and the message.
fn split_path(msg: &str) -> (Option<String>, &str) {
    if let Some((head, tail)) = msg.split_once(": ") {
        let is_path = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.[]?".contains(c));
        if is_path {
            return (Some(head.to_string()), tail);
        }
    }
    (None, msg)
}

/// The names in backticks in `s`, in order.
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The allowed name closest to `name`, if it is close enough to be a likely typo.
fn suggest(name: &str, allowed: &[String]) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (edit_distance(&lower, a), a))
        .filter(|(d, a)| *d <= 1.max(a.len() / 3) && *d < name.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a.clone())
}

/// Turns a parser error into a `ConfigError` with the field path and a fix.
fn yaml_error(e: &serde_yaml_ng::Error, text: &str, origin: &str) -> ConfigError {
    let loc = e.location().map(|l| (l.line(), l.column()));
    let mut full = e.to_string();
    if let Some((l, c)) = loc {
        full = full.replacen(&format!(" at line {l} column {c}"), "", 1);
    }
    let (serde_path, msg) = split_path(&full);
    let mut at = Box::new(Source::file(origin, loc.map(|p| p.0), loc.map(|p| p.1)));
    // serde_yaml_ng names the mapping (for field errors) or the field (for value errors);
    // no path means the top level.
    let here = serde_path.unwrap_or_default();

    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (name, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let allowed = backticked(tail);
        return ConfigError::UnknownField {
            at,
            path: join(&here, name),
            suggestion: suggest(name, &allowed),
            allowed,
        };
    }
    if let Some(rest) = msg.strip_prefix("duplicate field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let path = join(&here, name);
        if let Some((l, c)) = locate::find(text, &path) {
            at = Box::new(Source::file(origin, Some(l), Some(c)));
        }
        return ConfigError::Yaml {
            at,
            path: Some(path),
            problem: "set more than once".to_string(),
            fix: format!("keep a single {name} entry in this mapping"),
        };
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let value = rest.split('`').next().unwrap_or(rest);
        return ConfigError::Yaml {
            at,
            problem: format!("unknown value {value:?}"),
            fix: fix_for(&here),
            path: Some(here),
        };
    }
    if msg.starts_with("invalid type") || msg.starts_with("invalid value") || !here.is_empty() {
        // "expected struct OutputConfig" means a mapping of fields.
        let problem = match msg.find("expected struct ") {
            Some(i) => format!("{}expected a mapping", &msg[..i]),
            None => msg.to_string(),
        };
        return ConfigError::Yaml {
            at,
            problem,
            fix: fix_for(&here),
            path: Some(here),
        };
    }
    if msg.starts_with("deserializing from YAML containing more than one document") {
        return ConfigError::Yaml {
            at,
            path: None,
            problem: "more than one YAML document".to_string(),
            fix: "keep a single document: remove the `---` separators".to_string(),
        };
    }
    let tab_indent = loc
        .and_then(|(l, _)| text.lines().nth(l.wrapping_sub(1)))
        .is_some_and(|raw| raw.trim_start_matches(' ').starts_with('\t'));
    if tab_indent {
        return ConfigError::Yaml {
            at,
            path: None,
            problem: "tab in the indentation".to_string(),
            fix: "indent with spaces: YAML does not allow tabs".to_string(),
        };
    }
    let near = loc
        .and_then(|(l, _)| locate::path_before_line(text, l))
        .map(|p| format!(" (after {p})"))
        .unwrap_or_default();
    ConfigError::Yaml {
        at,
        path: None,
        problem: format!("invalid YAML{near}: {msg}"),
        fix: "indent with spaces (not tabs), put a space after each `key:`, and quote values \
              that contain `: ` or ` #`"
            .to_string(),
    }
}
