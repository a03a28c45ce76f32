//! `agent`: the command line (placeholder until the CLI lands).
fn main() {}
