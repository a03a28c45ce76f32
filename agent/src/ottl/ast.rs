//! The syntax tree of OTTL statements and conditions, as the parser (`parser.rs`) builds it and
//! the checker (`compile.rs`) consumes it. Every node remembers where it starts (`at`: bytes
//! from the end of the text, turned into a 1-based column for errors).

use super::value::CmpOp;

/// Where a node starts: the number of bytes left in the text at that point.
pub type At = usize;

/// A literal as written.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Nil,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
    Bytes(Vec<u8>),
}

/// `+ - * /`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// A value expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Literal(Literal),
    Path(Path),
    Converter(Call),
    /// An uppercase identifier without `(`: an enum symbol, or a converter passed as a function
    /// argument (`replace_pattern(..., SHA256)`).
    Enum(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
    Math(Box<Node>, MathOp, Box<Node>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub expr: Expr,
    pub at: At,
}

/// `a.b.c["k"][0]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub segments: Vec<String>,
    pub keys: Vec<KeyNode>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Key {
    Str(String),
    Int(i64),
    /// A path or converter whose value is the key.
    Expr(Box<Node>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyNode {
    pub key: Key,
    pub at: At,
}

/// An editor or converter invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub name: String,
    pub args: Vec<Arg>,
    /// Converters only: indexes into the result (`Split(x, ",")[1]`).
    pub keys: Vec<KeyNode>,
    pub at: At,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// `name = value` (named arguments come after positional ones).
    pub name: Option<String>,
    pub value: Node,
    pub at: At,
}

/// A boolean expression (`where` clauses and filter conditions).
#[derive(Clone, Debug, PartialEq)]
pub enum BoolExpr {
    Or(Vec<BoolExpr>),
    And(Vec<BoolExpr>),
    Not(Box<BoolExpr>),
    Compare(Node, CmpOp, Node),
    /// `true`, `false` or a converter returning a bool.
    Value(Node),
}

/// `editor(args) [where condition]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub editor: Call,
    pub condition: Option<BoolExpr>,
}
