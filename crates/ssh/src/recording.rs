//! Shell recordings: the asciicast v2 writer and reader shared with the Kubernetes frontend.

pub use gatehouse_core::recording::*;
