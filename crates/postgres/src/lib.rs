//! PostgreSQL frontend of Gatehouse: classifies statements with PostgreSQL's own grammar,
//! logs in upstream with the gateway's credential, and relays messages through a gate.

pub mod classify;
pub mod relay;
pub mod upstream;
pub mod wire;
