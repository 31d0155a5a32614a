//! Gatehouse identity: turns the OIDC token a caller presents into a verified
//! [`Identity`], or refuses it.
//!
//! # Threat model
//!
//! The token arrives from an untrusted client, through a PostgreSQL password, an SSH
//! password or a Kubernetes bearer header. An attacker may send any bytes, replay tokens
//! minted for other services, and flood the gateway. Each rule below closes one attack:
//!
//! - **Size cap (16 KiB) and exactly three segments** bound the work done before any
//!   cryptography, and rule out JWE and JSON-serialised JWS tricks.
//! - **Only asymmetric algorithms, bound to the key**: the algorithm comes from the JWK
//!   (`kty`/`crv`/`alg`) and the header must equal it. `none` would need no signature;
//!   `HS*` would accept an HMAC keyed with the issuer's *public* key; letting the header
//!   pick the algorithm enables both downgrades.
//! - **No key from the token**: headers `jwk`, `jku`, `x5u`, `x5c` are refused, as is
//!   `crit`; keys come only from the configured issuer (discovery, `jwks_uri` or a file).
//! - **Issuer by exact match**: the unverified `iss` only chooses which key set to try;
//!   after the signature verifies, `iss` must equal the configured issuer byte for byte,
//!   and the principal kind (user or agent) comes from the issuer configuration, never a
//!   claim.
//! - **Audience** (`aud`, string or array) must name this gateway, so a token minted for
//!   another relying party cannot be replayed here.
//! - **Time**: `exp` and `iat` are required, `nbf` is honoured, and clock skew leeway is
//!   at most 60 s, so stolen tokens die on schedule.
//! - **Types are explicit**: claims are read from the verified JSON by hand; a claim of
//!   the wrong type (string `exp`, numeric `sub`, non-array groups) is an error, never
//!   "absent", so a confused issuer or parser difference cannot widen access.
//! - **Key fetching** is https-only (plain http for loopback hosts), with 5 s timeouts
//!   and a 1 MiB response cap; the JWKS cache refreshes ahead of expiry and refetches on
//!   an unknown `kid` at most once per 30 s cooldown (single flight, negative cache), so
//!   random `kid`s cannot turn the gateway into a flood against the issuer.
//! - **Errors never echo the token** and say whose fault it was
//!   ([`IdentityError::is_client_fault`]), so protocol frontends can answer and audit
//!   correctly.

mod config;
mod dev;
mod error;
mod identity;
mod jwks;
mod secret;
mod verifier;

pub use config::{IssuerConfig, MAX_LEEWAY_SECS};
pub use dev::{DevIssuer, MAX_DEV_TOKEN_TTL, MintRequest};
pub use error::IdentityError;
pub use identity::{Identity, PrincipalKind};
pub use secret::Secret;
pub use verifier::{MAX_TOKEN_BYTES, Verifier};

#[cfg(test)]
mod tests;
