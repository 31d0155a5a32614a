//! Gatehouse's SSH frontend: a russh server facing clients, a russh client facing hosts,
//! and between them every channel and request decided by the core (Cedar `Ssh::` actions),
//! shells recorded as asciicast v2, refused commands never reaching the host.

pub mod ca;
mod channel;
pub mod command;
pub mod config;
mod error;
pub mod recording;
mod scp;
mod server;
pub mod sftp;
pub mod upstream;

pub use ca::{IssuedCertificate, SshCa};
pub use channel::{MAX_HELD_INPUT, REFUSED_EXIT_STATUS, env_allowed, scp_transfer};
pub use command::{ParsedCommand, parse, parse_bytes};
pub use config::{SshConfig, SshTarget};
pub use error::SshError;
pub use server::SshFrontend;
