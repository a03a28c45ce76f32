//! Protobuf messages the agent needs that no published crate provides, generated once by
//! prost-build and checked in (see README.md for how to regenerate): pprof's `profile.proto` and
//! OpAMP's `opamp.proto` + `anyvalue.proto` (spec v0.18.0).

/// pprof's profile format (`perftools.profiles`); serialize a [`pprof::Profile`] and gzip it.
#[allow(clippy::all, clippy::pedantic)] // Generated code.
pub mod pprof {
    include!("perftools.profiles.rs");
}

/// OpAMP (Open Agent Management Protocol) messages, package `opamp.proto.v1`, from
/// github.com/open-telemetry/opamp-spec tag v0.18.0 (`proto/opamp.proto`, `proto/anyvalue.proto`).
/// `AgentToServer` goes to the server, `ServerToAgent` comes back; see the spec's
/// `specification.md` at the same tag for what each field means.
#[allow(clippy::all, clippy::pedantic)] // Generated code.
pub mod opamp {
    include!("opamp.proto.v1.rs");

    /// The spec release these messages were generated from.
    pub const SPEC_VERSION: &str = "v0.18.0";
}
