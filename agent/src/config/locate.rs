//! Finds fields in the YAML source text by indentation, to point errors at a line: the dotted
//! path of the last key before a line, and the line of a dotted path.
//!
//! Best effort, block style only (`key: value` lines); flow mappings (`{a: 1}`), sequences and
//! the contents of block scalars (`|`, `>`) are not walked. Lines and columns are 1-based and
//! columns count characters, like the YAML parser's.

/// One `key:` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyLine {
    /// Dotted path of the key, e.g. `probes.syscalls.interval`.
    pub path: String,
    pub line: usize,
    /// Column of the key.
    pub key_column: usize,
    /// Column of the value when it is on the same line.
    pub value_column: Option<usize>,
}

/// Splits `key: value` (already without indentation); `None` when the line is not a key.
/// Returns the key and the byte offset of the value (if any) within `s`.
fn split_key(s: &str) -> Option<(String, Option<usize>)> {
    let (key, after) = if let Some(q) = s.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let close = s[1..].find(q)? + 1;
        let key = s[1..close].to_string();
        let rest = &s[close + 1..];
        (key, close + 1 + rest.strip_prefix(':').map(|_| 1)?)
    } else {
        let bytes = s.as_bytes();
        let mut colon = None;
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'#' && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
                return None;
            }
            if *b == b':' && matches!(bytes.get(i + 1), None | Some(b' ') | Some(b'\t')) {
                colon = Some(i);
                break;
            }
        }
        let colon = colon?;
        let key = s[..colon].trim_end();
        if key.is_empty() || key.starts_with(['-', '{', '[', '?']) {
            return None;
        }
        (key.to_string(), colon + 1)
    };
    if !matches!(s.as_bytes().get(after), None | Some(b' ') | Some(b'\t')) {
        return None;
    }
    let rest = &s[after..];
    let value = rest.trim_start();
    let value_at = if value.is_empty() || value.starts_with('#') {
        None
    } else {
        Some(after + (rest.len() - value.len()))
    };
    Some((key, value_at))
}

/// Every `key:` line of `text` with its dotted path, in order.
pub(crate) fn key_lines(text: &str) -> Vec<KeyLine> {
    let mut out = Vec::new();
    // (indent, key) of the enclosing mappings.
    let mut stack: Vec<(usize, String)> = Vec::new();
    // Lines more indented than this belong to a block scalar.
    let mut block_scalar: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let body = raw.trim_start_matches([' ', '\t']);
        let indent = raw.len() - body.len();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if let Some(b) = block_scalar {
            if indent > b {
                continue;
            }
            block_scalar = None;
        }
        if indent == 0 && (body.starts_with("---") || body.starts_with("...")) {
            stack.clear();
            continue;
        }
        let Some((key, value_at)) = split_key(body) else {
            continue;
        };
        while stack.last().is_some_and(|(ind, _)| *ind >= indent) {
            stack.pop();
        }
        let mut path = String::new();
        for (_, k) in &stack {
            path.push_str(k);
            path.push('.');
        }
        path.push_str(&key);
        let chars_before = |bytes: usize| raw[..bytes].chars().count();
        let value_column = value_at.map(|v| chars_before(indent + v) + 1);
        if let Some(v) = value_at {
            if body[v..].starts_with(['|', '>']) {
                block_scalar = Some(indent);
            }
        }
        out.push(KeyLine {
            path,
            line: i + 1,
            key_column: chars_before(indent) + 1,
            value_column,
        });
        stack.push((indent, key));
    }
    out
}

/// The dotted path of the last key before `line` (for "the error is after this field").
pub(crate) fn path_before_line(text: &str, line: usize) -> Option<String> {
    key_lines(text)
        .into_iter()
        .take_while(|k| k.line < line)
        .last()
        .map(|k| k.path)
}

/// The line of `path` and the column of its value (of its key when the value is on later
/// lines). The last occurrence wins, like a YAML mapping with a repeated key would.
pub(crate) fn find(text: &str, path: &str) -> Option<(usize, usize)> {
    key_lines(text)
        .into_iter()
        .rev()
        .find(|k| k.path == path)
        .map(|k| (k.line, k.value_column.unwrap_or(k.key_column)))
}

/// The line and column of a list item's string value at a path with indices, e.g.
/// `transform.metric_statements[0].statements[1]` (OTTL statements): the value is looked up in
/// the parsed YAML, then its text is searched for after the line of the path's first key (as
/// written, or as a single- or double-quoted YAML scalar writes it).
pub(crate) fn find_item(text: &str, path: &str) -> Option<(usize, usize)> {
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        v = v.get(key)?.clone();
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            let i: usize = idx.trim_end_matches(']').parse().ok()?;
            v = v.get(i)?.clone();
        }
    }
    let want = v.as_str()?;
    let top = path.split(['.', '[']).next()?;
    let start = find(text, top).map_or(1, |(l, _)| l);
    let forms = [
        want.to_string(),
        want.replace('\'', "''"),
        serde_json::Value::String(want.to_string())
            .to_string()
            .trim_matches('"')
            .to_string(),
    ];
    for (i, raw) in text.lines().enumerate().skip(start - 1) {
        for f in &forms {
            if let Some(b) = raw.find(f.as_str()) {
                return Some((i + 1, raw[..b].chars().count() + 1));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
log:
  level: info   # trailing
  format: json

probes:
  syscalls:
    notes: |
      level: not a key
    interval: 5s
\"status\":
  'listen': 127.0.0.1:1
";

    #[test]
    fn paths_and_columns() {
        let got: Vec<(String, usize, usize, Option<usize>)> = key_lines(TEXT)
            .into_iter()
            .map(|k| (k.path, k.line, k.key_column, k.value_column))
            .collect();
        let want = vec![
            ("log", 2, 1, None),
            ("log.level", 3, 3, Some(10)),
            ("log.format", 4, 3, Some(11)),
            ("probes", 6, 1, None),
            ("probes.syscalls", 7, 3, None),
            ("probes.syscalls.notes", 8, 5, Some(12)),
            ("probes.syscalls.interval", 10, 5, Some(15)),
            ("status", 11, 1, None),
            ("status.listen", 12, 3, Some(13)),
        ];
        let want: Vec<(String, usize, usize, Option<usize>)> = want
            .into_iter()
            .map(|(p, l, k, v)| (p.to_string(), l, k, v))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn list_items_are_found_by_their_text() {
        let text = "transform:\n  metric_statements:\n    - context: datapoint\n      statements:\n        - set(a, 1)\n        - 'set(attributes[\"x\"], \"it''s\")'\n";
        assert_eq!(
            find_item(text, "transform.metric_statements[0].statements[0]"),
            Some((5, 11))
        );
        assert_eq!(
            find_item(text, "transform.metric_statements[0].statements[1]"),
            Some((6, 12))
        );
        assert_eq!(
            find_item(text, "transform.metric_statements[0].statements[2]"),
            None
        );
    }

    #[test]
    fn find_and_path_before_line() {
        assert_eq!(find(TEXT, "probes.syscalls.interval"), Some((10, 15)));
        assert_eq!(find(TEXT, "probes.syscalls"), Some((7, 3)));
        assert_eq!(find(TEXT, "probes.syscalls.max_entries"), None);
        assert_eq!(
            path_before_line(TEXT, 10).as_deref(),
            Some("probes.syscalls.notes")
        );
        assert_eq!(path_before_line(TEXT, 3).as_deref(), Some("log"));
        assert_eq!(path_before_line(TEXT, 2), None);
    }
}
