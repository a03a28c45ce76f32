//! Engine tests (see below).
