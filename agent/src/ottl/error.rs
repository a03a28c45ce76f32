//! OTTL errors: a statement that does not parse or check at config load ([`OttlError`], with
//! the column and what was expected), and a statement that fails on one item at run time
//! ([`EvalError`], handled by the error mode).

use super::parser::SyntaxError;

/// A statement or condition rejected at load: syntax, or a check (unknown function or path,
/// wrong argument, read-only target). `Display`: `column N: ...`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OttlError {
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    #[error("column {column}: {problem}")]
    Check { column: usize, problem: String },
}

impl OttlError {
    pub fn column(&self) -> usize {
        match self {
            OttlError::Syntax(s) => s.column,
            OttlError::Check { column, .. } => *column,
        }
    }

    /// The error with the text and a caret under the column, for logs and `config validate`.
    pub fn render(&self, text: &str) -> String {
        let pad: String = text
            .chars()
            .take(self.column().saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        format!("{self}\n  {text}\n  {pad}^")
    }
}

/// A check error at byte position `at` (bytes left in `text`).
pub(crate) fn check_error(text: &str, at: usize, problem: impl Into<String>) -> OttlError {
    let offset = text.len().saturating_sub(at);
    OttlError::Check {
        column: text[..offset.min(text.len())].chars().count() + 1,
        problem: problem.into(),
    }
}

/// A statement that failed on one item (a converter got the wrong type, a map editor's target
/// is not a map, ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

impl EvalError {
    pub fn new(msg: impl Into<String>) -> Self {
        EvalError(msg.into())
    }
}
