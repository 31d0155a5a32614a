//! Kubernetes API frontend of Gatehouse: derives each request's authorization attributes,
//! asks policy per request, forwards with the gateway's own credential, streams responses
//! back and masks Secret values on the way.

pub mod attributes;
pub mod config;
pub mod detect;
pub mod secrets;
pub mod server;
pub mod status;
pub mod tunnel;
pub mod upstream;
pub mod websocket;

pub use attributes::{Attributes, PathError, PathKind};
pub use config::{KubeCluster, KubeConfig};
pub use server::KubeFrontend;
