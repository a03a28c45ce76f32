//! `agent`: the command line (being wired up).
fn main() {}
