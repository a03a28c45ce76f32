//! Protobuf messages the agent needs that no published crate provides, generated once by
//! prost-build and checked in (see README.md for how to regenerate): pprof's `profile.proto`.

/// pprof's profile format (`perftools.profiles`); serialize a [`pprof::Profile`] and gzip it.
#[allow(clippy::all, clippy::pedantic)] // Generated code.
pub mod pprof {
    include!("perftools.profiles.rs");
}
