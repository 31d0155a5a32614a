//! PostgreSQL frontend of Gatehouse: classifies statements with PostgreSQL's own grammar,
//! logs in upstream with the gateway's credential, and relays messages through a gate.

pub mod catalog;
pub mod classify;
pub mod completion;
pub mod config;
pub mod provenance;
pub mod relay;
pub mod server;
pub mod upstream;
pub mod wire;

pub use config::{PostgresConfig, PostgresTarget};
pub use server::PostgresFrontend;
