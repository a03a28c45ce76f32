//! The OTTL grammar (`pkg/ottl/LANGUAGE.md`) on `winnow` parser combinators: statements
//! (`editor(args) [where condition]`) and conditions (boolean expressions), into `ast` nodes.
//!
//! Lexical rules follow the Collector's lexer: strings in double quotes with Go escapes (so a
//! regex's `\d` is written `\\d`), ints `[-+]?\d+`, floats `[-+]?\d*\.\d+([eE][-+]?\d+)?`, byte
//! slices `0x` + hex, `true`/`false`/`nil`, lowercase identifiers for paths and editors,
//! uppercase ones for converters and enums. Precedence: `not` > `and` > `or`; `*` `/` > `+` `-`.
//!
//! Errors: [`SyntaxError`] carries the 1-based column (in characters) where parsing stopped, what
//! was expected there and what was found.

use winnow::{
    ascii::multispace0,
    combinator::{alt, cut_err, delimited, eof, not, opt, peek, preceded, separated, terminated},
    error::{AddContext, ContextError, ErrMode, StrContext, StrContextValue},
    prelude::*,
    stream::Stream,
    token::{any, one_of, take_while},
};

use super::{
    ast::{Arg, BoolExpr, Call, Expr, Key, KeyNode, Literal, MathOp, Node, Path, Statement},
    value::CmpOp,
};

type PResult<T> = ModalResult<T>;

/// A statement or condition that does not follow the grammar.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: expected {expected}, found {found}")]
pub struct SyntaxError {
    /// 1-based, in characters.
    pub column: usize,
    /// What would have been accepted there, e.g. `a value (path, literal, converter, list or map)`.
    pub expected: String,
    /// What is there: a quoted token or `the end of the text`.
    pub found: String,
}

fn expected(what: &'static str) -> StrContext {
    StrContext::Expected(StrContextValue::Description(what))
}

/// Parses one statement: exactly one editor invocation and an optional `where` clause.
pub fn statement(text: &str) -> Result<Statement, SyntaxError> {
    run(text, statement_parser)
}

/// Parses one condition (a filter condition, or a transform group's `conditions` entry).
pub fn condition(text: &str) -> Result<BoolExpr, SyntaxError> {
    run(text, condition_parser)
}

fn run<T>(text: &str, mut p: fn(&mut &str) -> PResult<T>) -> Result<T, SyntaxError> {
    p.parse(text).map_err(|e| {
        let offset = e.offset().min(text.len());
        syntax_error(text, offset, e.inner())
    })
}

fn syntax_error(text: &str, offset: usize, err: &ContextError) -> SyntaxError {
    // Contexts accumulate from the innermost parser outwards: the first is the most specific.
    let mut wanted: Vec<String> = Vec::new();
    for c in err.context().take(1) {
        if let StrContext::Expected(v) = c {
            let s = match v {
                StrContextValue::Description(d) => d.to_string(),
                StrContextValue::CharLiteral(ch) => format!("'{ch}'"),
                StrContextValue::StringLiteral(s) => format!("'{s}'"),
                other => other.to_string(),
            };
            if !wanted.contains(&s) {
                wanted.push(s);
            }
        }
    }
    let expected = match wanted.len() {
        0 => "a statement of the form editor(arguments) [where condition]".to_string(),
        1 => wanted.remove(0),
        _ => {
            let last = wanted.pop().unwrap_or_default();
            format!("{} or {last}", wanted.join(", "))
        }
    };
    let rest = &text[offset..];
    let found = match rest.chars().next() {
        None => "the end of the text".to_string(),
        Some(c) if c.is_alphanumeric() || c == '_' => {
            let tok: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .take(24)
                .collect();
            format!("'{tok}'")
        }
        Some(c) => format!("'{c}'"),
    };
    SyntaxError {
        column: text[..offset].chars().count() + 1,
        expected,
        found,
    }
}

fn ws(i: &mut &str) -> PResult<()> {
    multispace0.void().parse_next(i)
}

/// `tok` after optional whitespace.
fn sym<'a>(tok: &'static str) -> impl Parser<&'a str, &'a str, ErrMode<ContextError>> {
    preceded(ws, tok)
}

const KEYWORDS: [&str; 7] = ["where", "and", "or", "not", "true", "false", "nil"];

fn ident_tail(i: &mut &str) -> PResult<()> {
    take_while(0.., |c: char| c.is_ascii_alphanumeric() || c == '_')
        .void()
        .parse_next(i)
}

/// A lowercase identifier that is not a keyword.
fn lower_ident<'a>(i: &mut &'a str) -> PResult<&'a str> {
    let id = (one_of('a'..='z'), ident_tail).take().parse_next(i)?;
    if KEYWORDS.contains(&id) {
        return Err(ErrMode::Backtrack(ContextError::new()));
    }
    Ok(id)
}

fn upper_ident<'a>(i: &mut &'a str) -> PResult<&'a str> {
    (one_of('A'..='Z'), ident_tail).take().parse_next(i)
}

/// A keyword, not followed by an identifier character (so `nothing` is not `not`).
fn keyword<'a>(kw: &'static str) -> impl Parser<&'a str, &'a str, ErrMode<ContextError>> {
    preceded(
        ws,
        terminated(
            kw,
            not(one_of(|c: char| c.is_ascii_alphanumeric() || c == '_')),
        ),
    )
}

fn statement_parser(i: &mut &str) -> PResult<Statement> {
    ws.parse_next(i)?;
    let at = i.len();
    let name = lower_ident
        .context(expected("an editor name (lowercase, e.g. set)"))
        .parse_next(i)?;
    let args = cut_err(call_args).parse_next(i)?;
    let editor = Call {
        name: name.to_string(),
        args,
        keys: Vec::new(),
        at,
    };
    let condition = opt(preceded(
        keyword("where"),
        cut_err(bool_expr.context(expected("a condition"))),
    ))
    .parse_next(i)?;
    ws.parse_next(i)?;
    cut_err(eof.context(expected(if condition.is_some() {
        "'and', 'or' or the end of the statement"
    } else {
        "'where' or the end of the statement"
    })))
    .parse_next(i)?;
    Ok(Statement { editor, condition })
}

fn condition_parser(i: &mut &str) -> PResult<BoolExpr> {
    let c = cut_err(bool_expr.context(expected("a condition"))).parse_next(i)?;
    ws.parse_next(i)?;
    cut_err(eof.context(expected("'and', 'or' or the end of the condition"))).parse_next(i)?;
    Ok(c)
}

/// `( [arg {, arg}] )`, the opening parenthesis included.
fn call_args(i: &mut &str) -> PResult<Vec<Arg>> {
    sym("(").context(expected("'('")).parse_next(i)?;
    ws.parse_next(i)?;
    if opt(")").parse_next(i)?.is_some() {
        return Ok(Vec::new());
    }
    let args = comma_list(i, arg)?;
    sym(")").context(expected("',' or ')'")).parse_next(i)?;
    Ok(args)
}

fn arg(i: &mut &str) -> PResult<Arg> {
    ws.parse_next(i)?;
    let at = i.len();
    let name = opt(terminated(lower_ident, (ws, "=", peek(not("="))))).parse_next(i)?;
    let value = cut_err(value).parse_next(i)?;
    Ok(Arg {
        name: name.map(str::to_string),
        value,
        at,
    })
}

// ---- boolean expressions ----

fn bool_expr(i: &mut &str) -> PResult<BoolExpr> {
    let mut terms = vec![and_expr.parse_next(i)?];
    while opt(keyword("or")).parse_next(i)?.is_some() {
        terms.push(cut_err(and_expr.context(expected("a condition after 'or'"))).parse_next(i)?);
    }
    Ok(if terms.len() == 1 {
        terms.remove(0)
    } else {
        BoolExpr::Or(terms)
    })
}

fn and_expr(i: &mut &str) -> PResult<BoolExpr> {
    let mut terms = vec![not_expr.parse_next(i)?];
    while opt(keyword("and")).parse_next(i)?.is_some() {
        terms.push(cut_err(not_expr.context(expected("a condition after 'and'"))).parse_next(i)?);
    }
    Ok(if terms.len() == 1 {
        terms.remove(0)
    } else {
        BoolExpr::And(terms)
    })
}

/// `first {, next}` where an item must follow each comma.
fn comma_list<O>(i: &mut &str, mut item: impl FnMut(&mut &str) -> PResult<O>) -> PResult<Vec<O>> {
    let mut out = vec![item(i)?];
    while opt(sym(",")).parse_next(i)?.is_some() {
        out.push(cut_err(|i: &mut &str| item(i)).parse_next(i)?);
    }
    Ok(out)
}

fn not_expr(i: &mut &str) -> PResult<BoolExpr> {
    if opt(keyword("not")).parse_next(i)?.is_some() {
        let inner = cut_err(not_expr.context(expected("a condition after 'not'"))).parse_next(i)?;
        return Ok(BoolExpr::Not(Box::new(inner)));
    }
    bool_primary.parse_next(i)
}

fn bool_primary(i: &mut &str) -> PResult<BoolExpr> {
    alt((
        quiet(comparison),
        quiet(delimited(sym("("), bool_expr, sym(")"))),
        quiet(value.map(BoolExpr::Value)),
    ))
    .context(expected("a comparison, true, false or a converter"))
    .parse_next(i)
}

/// `p` with the contexts of a backtracking failure dropped (so the caller's context is the one
/// reported); cut errors keep theirs.
fn quiet<'a, O>(
    mut p: impl Parser<&'a str, O, ErrMode<ContextError>>,
) -> impl Parser<&'a str, O, ErrMode<ContextError>> {
    move |i: &mut &'a str| {
        p.parse_next(i).map_err(|e| match e {
            ErrMode::Backtrack(_) => ErrMode::Backtrack(ContextError::new()),
            other => other,
        })
    }
}

fn cmp_op(i: &mut &str) -> PResult<CmpOp> {
    preceded(
        ws,
        alt((
            "==".value(CmpOp::Eq),
            "!=".value(CmpOp::Ne),
            "<=".value(CmpOp::Le),
            ">=".value(CmpOp::Ge),
            "<".value(CmpOp::Lt),
            ">".value(CmpOp::Gt),
        )),
    )
    .parse_next(i)
}

fn comparison(i: &mut &str) -> PResult<BoolExpr> {
    let left = value.parse_next(i)?;
    let op = cmp_op.parse_next(i)?;
    let right = cut_err(value).parse_next(i)?;
    Ok(BoolExpr::Compare(left, op, right))
}

// ---- values ----

/// A value: a math expression over terms, or a single term.
fn value(i: &mut &str) -> PResult<Node> {
    ws.parse_next(i)?;
    let at = i.len();
    let mut left = term.parse_next(i)?;
    loop {
        let op = opt(preceded(
            ws,
            alt(("+".value(MathOp::Add), "-".value(MathOp::Sub))),
        ))
        .parse_next(i)?;
        let Some(op) = op else { break };
        let right = cut_err(term.context(expected("a value after the operator"))).parse_next(i)?;
        left = Node {
            expr: Expr::Math(Box::new(left), op, Box::new(right)),
            at,
        };
    }
    Ok(left)
}

fn term(i: &mut &str) -> PResult<Node> {
    ws.parse_next(i)?;
    let at = i.len();
    let mut left = factor.parse_next(i)?;
    loop {
        let op = opt(preceded(
            ws,
            alt(("*".value(MathOp::Mul), "/".value(MathOp::Div))),
        ))
        .parse_next(i)?;
        let Some(op) = op else { break };
        let right =
            cut_err(factor.context(expected("a value after the operator"))).parse_next(i)?;
        left = Node {
            expr: Expr::Math(Box::new(left), op, Box::new(right)),
            at,
        };
    }
    Ok(left)
}

fn factor(i: &mut &str) -> PResult<Node> {
    ws.parse_next(i)?;
    let at = i.len();
    let expr = alt((
        delimited("(", value, sym(")")).map(|n| n.expr),
        literal.map(Expr::Literal),
        list,
        map,
        converter_or_enum,
        nested_editor,
        path.map(Expr::Path),
    ))
    .context(expected("a value (path, literal, converter, list or map)"))
    .parse_next(i)?;
    Ok(Node { expr, at })
}

/// A lowercase name followed by `(`: an editor where a value belongs.
fn nested_editor(i: &mut &str) -> PResult<Expr> {
    let start = i.checkpoint();
    (lower_ident, peek("(")).parse_next(i)?;
    i.reset(&start);
    Err(ErrMode::Cut(ContextError::new().add_context(
        i,
        &start,
        expected("a value; an editor (lowercase) cannot be nested, converters are uppercase"),
    )))
}

fn list(i: &mut &str) -> PResult<Expr> {
    "[".parse_next(i)?;
    ws.parse_next(i)?;
    if opt("]").parse_next(i)?.is_some() {
        return Ok(Expr::List(Vec::new()));
    }
    let items = comma_list(i, |i: &mut &str| cut_err(value).parse_next(i))?;
    cut_err(sym("]").context(expected("',' or ']'"))).parse_next(i)?;
    Ok(Expr::List(items))
}

fn map(i: &mut &str) -> PResult<Expr> {
    "{".parse_next(i)?;
    ws.parse_next(i)?;
    if opt("}").parse_next(i)?.is_some() {
        return Ok(Expr::Map(Vec::new()));
    }
    let entries = comma_list(i, |i: &mut &str| {
        cut_err((
            preceded(ws, string_lit.context(expected("a map key (a string)"))),
            preceded(sym(":").context(expected("':'")), value),
        ))
        .parse_next(i)
    })?;
    cut_err(sym("}").context(expected("',' or '}'"))).parse_next(i)?;
    Ok(Expr::Map(entries))
}

fn converter_or_enum(i: &mut &str) -> PResult<Expr> {
    let at = i.len();
    let name = upper_ident.parse_next(i)?;
    if peek(opt(sym("("))).parse_next(i)?.is_none() {
        return Ok(Expr::Enum(name.to_string()));
    }
    let args = cut_err(call_args).parse_next(i)?;
    let keys = keys.parse_next(i)?;
    Ok(Expr::Converter(Call {
        name: name.to_string(),
        args,
        keys,
        at,
    }))
}

fn path(i: &mut &str) -> PResult<Path> {
    let segments: Vec<&str> = separated(1.., lower_ident, ".").parse_next(i)?;
    let keys = keys.parse_next(i)?;
    Ok(Path {
        segments: segments.into_iter().map(str::to_string).collect(),
        keys,
    })
}

/// Zero or more `[key]` after a path or converter (no whitespace before `[`).
fn keys(i: &mut &str) -> PResult<Vec<KeyNode>> {
    let mut out = Vec::new();
    loop {
        let at = i.len();
        if opt("[").parse_next(i)?.is_none() {
            return Ok(out);
        }
        ws.parse_next(i)?;
        let key = cut_err(
            alt((
                string_lit.map(Key::Str),
                int_lit.map(Key::Int),
                converter_or_enum.map(|e| Key::Expr(Box::new(Node { expr: e, at }))),
                path.map(|p| {
                    Key::Expr(Box::new(Node {
                        expr: Expr::Path(p),
                        at,
                    }))
                }),
            ))
            .context(expected("a key (a string, an int, a path or a converter)")),
        )
        .parse_next(i)?;
        cut_err(sym("]").context(expected("']'"))).parse_next(i)?;
        out.push(KeyNode { key, at });
    }
}

fn literal(i: &mut &str) -> PResult<Literal> {
    alt((
        string_lit.map(Literal::Str),
        bytes_lit.map(Literal::Bytes),
        float_lit.map(Literal::Double),
        int_lit.map(Literal::Int),
        keyword("true").value(Literal::Bool(true)),
        keyword("false").value(Literal::Bool(false)),
        keyword("nil").value(Literal::Nil),
    ))
    .parse_next(i)
}

fn int_lit(i: &mut &str) -> PResult<i64> {
    let text = (
        opt(one_of(['+', '-'])),
        take_while(1.., |c: char| c.is_ascii_digit()),
    )
        .take()
        .parse_next(i)?;
    text.parse::<i64>().map_err(|_| {
        ErrMode::Cut(ContextError::new().add_context(
            i,
            &i.checkpoint(),
            expected("an int within 64 bits"),
        ))
    })
}

fn float_lit(i: &mut &str) -> PResult<f64> {
    let text = (
        opt(one_of(['+', '-'])),
        take_while(0.., |c: char| c.is_ascii_digit()),
        ".",
        take_while(1.., |c: char| c.is_ascii_digit()),
        opt((
            one_of(['e', 'E']),
            opt(one_of(['+', '-'])),
            take_while(1.., |c: char| c.is_ascii_digit()),
        )),
    )
        .take()
        .parse_next(i)?;
    text.parse::<f64>()
        .map_err(|_| ErrMode::Backtrack(ContextError::new()))
}

fn bytes_lit(i: &mut &str) -> PResult<Vec<u8>> {
    let digits = preceded("0x", take_while(1.., |c: char| c.is_ascii_hexdigit())).parse_next(i)?;
    if digits.len() % 2 == 1 {
        return Err(ErrMode::Cut(ContextError::new().add_context(
            i,
            &i.checkpoint(),
            expected("an even number of hex digits after 0x"),
        )));
    }
    Ok((0..digits.len())
        .step_by(2)
        .map(|k| u8::from_str_radix(&digits[k..k + 2], 16).unwrap_or(0))
        .collect())
}

/// A double-quoted string with Go's escapes (`strconv.Unquote`).
fn string_lit(i: &mut &str) -> PResult<String> {
    "\"".parse_next(i)?;
    let mut out = String::new();
    loop {
        let before = *i;
        let c = cut_err(any.context(expected("'\"' to close the string"))).parse_next(i)?;
        match c {
            '"' => return Ok(out),
            '\\' => {
                let esc_at = before;
                let e = cut_err(any.context(expected("an escape after '\\'"))).parse_next(i)?;
                match e {
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'v' => out.push('\x0b'),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: &str = cut_err(
                            take_while(n..=n, |c: char| c.is_ascii_hexdigit())
                                .context(expected("hex digits of the escape")),
                        )
                        .parse_next(i)?;
                        let code = u32::from_str_radix(hex, 16).unwrap_or(0);
                        match char::from_u32(code) {
                            Some(ch) => out.push(ch),
                            None => {
                                *i = esc_at;
                                return Err(bad_escape(i));
                            }
                        }
                    }
                    _ => {
                        *i = esc_at;
                        return Err(bad_escape(i));
                    }
                }
            }
            c => out.push(c),
        }
    }
}

fn bad_escape(i: &mut &str) -> ErrMode<ContextError> {
    ErrMode::Cut(ContextError::new().add_context(
        i,
        &i.checkpoint(),
        expected(
            "a valid escape (\\\\ \\\" \\n \\t \\r \\xHH \\uHHHH); \
             a regex's \\d is written \\\\d inside an OTTL string",
        ),
    ))
}
