//! CPU profiles: the symbolized model and its output formats (OTLP, pprof, folded stacks, SVG
//! flame graphs), plus the agent profiling itself.

pub mod folded;
pub mod model;
pub mod otlp;
pub mod pprof;
pub mod selfprof;
pub mod svg;

pub use model::*;
