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

/// One piece of a block-style line: a sequence item marker (`- `) or text (a `key: value`, a
/// flow collection or a scalar), with its 0-based line and its indentation in characters.
#[derive(Clone, Copy, Debug)]
enum Piece<'a> {
    Item {
        line: usize,
        indent: usize,
    },
    Text {
        line: usize,
        indent: usize,
        body: &'a str,
    },
}

impl Piece<'_> {
    fn indent(&self) -> usize {
        match self {
            Piece::Item { indent, .. } | Piece::Text { indent, .. } => *indent,
        }
    }
}

fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    for (line, raw) in text.lines().enumerate() {
        let mut body = raw.trim_start_matches(' ');
        let mut indent = raw.len() - body.len();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        while let Some(rest) = body
            .strip_prefix("- ")
            .or_else(|| (body == "-").then_some(""))
        {
            out.push(Piece::Item { line, indent });
            let trimmed = rest.trim_start_matches(' ');
            indent += 2 + (rest.len() - trimmed.len());
            body = trimmed;
        }
        if !body.is_empty() {
            out.push(Piece::Text { line, indent, body });
        }
    }
    out
}

/// The line and column (1-based) of a dotted path with sequence indices, such as
/// `enforcement.rules[0].when.above`, in block-style YAML: the key's own position; inside a
/// one-line flow mapping (`when: {signal: x, above: 1}`) the position of that key on the line.
/// Best effort, like the rest of this module.
pub(crate) fn find_path(text: &str, path: &str) -> Option<(usize, usize)> {
    let ps = pieces(text);
    let (mut a, mut b) = (0usize, ps.len());
    let mut parent: Option<usize> = None;
    // A flow collection line already reached: later keys are searched on it.
    let mut flow: Option<(usize, usize, &str)> = None;
    let mut found: Option<(usize, usize)> = None;
    for part in path.split('.') {
        let (key, idx) = part.split_once('[').unwrap_or((part, ""));
        let indices: Vec<usize> = idx
            .split('[')
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.trim_end_matches(']').parse().ok())
            .collect();
        if let Some((line, from, body)) = flow {
            let at = find_flow_key(&body[from..], key)? + from;
            let col = body[..at].chars().count();
            let indent = text.lines().nth(line)?.len() - body.len();
            found = Some((line + 1, indent + col + 1));
            flow = Some((line, at + key.len(), body));
            continue;
        }
        // The block's own key level: its shallowest text.
        let level = ps[a..b]
            .iter()
            .filter(|p| matches!(p, Piece::Text { .. }))
            .map(Piece::indent)
            .filter(|i| parent.is_none_or(|p| *i > p))
            .min()?;
        let hit = (a..b).find(|&i| match ps[i] {
            Piece::Text { indent, body, .. } => {
                indent == level
                    && (body.starts_with(&format!("{key}:"))
                        || body.starts_with(&format!("\"{key}\":"))
                        || body.starts_with(&format!("'{key}':")))
            }
            _ => false,
        });
        match hit {
            Some(i) => {
                let Piece::Text { line, indent, body } = ps[i] else {
                    unreachable!()
                };
                found = Some((line + 1, indent + 1));
                let end = (i + 1..b)
                    .find(|&j| {
                        let p = ps[j];
                        p.indent() < level
                            || (p.indent() == level && matches!(p, Piece::Text { .. }))
                    })
                    .unwrap_or(b);
                let value = body[key.len() + 1..].trim_start();
                if value.starts_with('{') || value.starts_with('[') {
                    flow = Some((line, body.len() - value.len(), body));
                }
                (a, b, parent) = (i + 1, end, Some(indent));
            }
            None => {
                // A flow mapping on one of the block's lines.
                let (i, at) = (a..b).find_map(|i| match ps[i] {
                    Piece::Text { body, .. } => find_flow_key(body, key).map(|at| (i, at)),
                    _ => None,
                })?;
                let Piece::Text { line, indent, body } = ps[i] else {
                    unreachable!()
                };
                found = Some((line + 1, indent + body[..at].chars().count() + 1));
                flow = Some((line, at + key.len(), body));
                continue;
            }
        }
        for n in indices {
            let item_indent = ps[a..b]
                .iter()
                .filter(|p| matches!(p, Piece::Item { .. }))
                .map(Piece::indent)
                .min()?;
            let items: Vec<usize> = (a..b)
                .filter(|&i| matches!(ps[i], Piece::Item { indent, .. } if indent == item_indent))
                .collect();
            let start = *items.get(n)?;
            let end = items.get(n + 1).copied().unwrap_or_else(|| {
                (start + 1..b)
                    .find(|&j| ps[j].indent() < item_indent)
                    .unwrap_or(b)
            });
            if let Piece::Item { line, indent } = ps[start] {
                found = Some((line + 1, indent + 1));
            }
            (a, b, parent) = (start + 1, end, Some(item_indent));
        }
    }
    found
}

/// Byte offset of `key:` inside a flow mapping on `body` (after `{`, `,` or a space).
fn find_flow_key(body: &str, key: &str) -> Option<usize> {
    let pat = format!("{key}:");
    let mut from = 0;
    while let Some(i) = body[from..].find(&pat) {
        let at = from + i;
        let before = body[..at].trim_end().chars().last();
        if matches!(before, Some('{') | Some(',')) {
            return Some(at);
        }
        from = at + pat.len();
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
    fn indexed_paths_in_blocks_and_flow_mappings() {
        let text = "\
enforcement:
  mode: enforce
  rules:
    - name: a
      when: {signal: process.syscall.rate, above: 5, for: 2}
      action:
        type: signal
    - name: b
      scope: {executable: storm}
      ttl: 8s
";
        assert_eq!(find_path(text, "enforcement.mode"), Some((2, 3)));
        assert_eq!(find_path(text, "enforcement.rules[0]"), Some((4, 5)));
        assert_eq!(find_path(text, "enforcement.rules[0].name"), Some((4, 7)));
        assert_eq!(find_path(text, "enforcement.rules[0].when"), Some((5, 7)));
        assert_eq!(
            find_path(text, "enforcement.rules[0].when.above"),
            Some((5, 44))
        );
        assert_eq!(
            find_path(text, "enforcement.rules[0].when.for"),
            Some((5, 54))
        );
        assert_eq!(
            find_path(text, "enforcement.rules[0].action.type"),
            Some((7, 9))
        );
        assert_eq!(find_path(text, "enforcement.rules[1].ttl"), Some((10, 7)));
        assert_eq!(
            find_path(text, "enforcement.rules[1].scope.executable"),
            Some((9, 15))
        );
        assert_eq!(find_path(text, "enforcement.rules[2]"), None);
        assert_eq!(find_path(text, "enforcement.rules[1].when"), None);
        let compact = "rules:\n- name: x\n  ttl: 1s\n- name: y\n  ttl: 2s\n";
        assert_eq!(find_path(compact, "rules[1].ttl"), Some((5, 3)));
    }

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
