//! Test-only helpers: real servers on free ports in temp dirs, development tokens, and a
//! real gateway process. Every server stops when its handle drops, even when a test fails.

pub mod gateway;
pub mod kube;
mod kube_exec;
mod kube_portforward;
pub mod postgres;
pub mod sshd;
pub mod tls;
