//! Gatehouse's SSH frontend. For now, the I/O-free part: how an `exec` request's command
//! line is split into words and judged for shell syntax before Cedar decides on it.

pub mod command;

pub use command::{ParsedCommand, parse, parse_bytes};
