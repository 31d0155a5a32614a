//! Per-issuer configuration. Each trusted issuer is named explicitly with the audience
//! the gateway expects and the principal kind its tokens stand for; nothing about trust
//! is inferred from a token.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::identity::PrincipalKind;

/// The largest clock-skew allowance we accept: more would let expired tokens live on.
pub const MAX_LEEWAY_SECS: u64 = 60;

/// One trusted OIDC issuer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer URL, compared byte for byte with the `iss` claim.
    pub issuer: String,
    /// The audience this gateway is known as at the issuer; `aud` must contain it.
    pub audience: String,
    /// The claim holding group names (an array of strings).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Whether tokens of this issuer are users or agents.
    pub principal: PrincipalKind,
    /// The claim naming the person responsible for an agent.
    #[serde(default = "default_owner_claim")]
    pub owner_claim: String,
    /// A static JWKS file (air-gapped deployments): no network access for this issuer.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The JWKS URL, skipping OIDC discovery.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Allowed clock skew for `exp`, `nbf` and `iat`, at most 60 seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_owner_claim() -> String {
    "owner".to_owned()
}

fn default_leeway() -> u64 {
    MAX_LEEWAY_SECS
}

impl IssuerConfig {
    /// A configuration with the defaults for everything but the three required keys.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, principal: PrincipalKind) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            groups_claim: default_groups_claim(),
            principal,
            owner_claim: default_owner_claim(),
            jwks_file: None,
            jwks_uri: None,
            leeway_secs: default_leeway(),
        }
    }

    /// Checks the configuration; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.issuer;
        let (scheme, _) =
            parse_url(&self.issuer).map_err(|e| format!("issuer `{name}`: `issuer` must be an http(s) URL ({e})"))?;
        if scheme.is_none() {
            return Err(format!("issuer `{name}`: `issuer` must be an http(s) URL"));
        }
        if self.issuer.contains(['?', '#']) {
            return Err(format!("issuer `{name}`: `issuer` must not have a query or fragment"));
        }
        if self.audience.trim().is_empty() {
            return Err(format!("issuer `{name}`: `audience` must not be empty"));
        }
        if self.groups_claim.trim().is_empty() {
            return Err(format!("issuer `{name}`: `groups_claim` must not be empty"));
        }
        if self.owner_claim.trim().is_empty() {
            return Err(format!("issuer `{name}`: `owner_claim` must not be empty"));
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(format!(
                "issuer `{name}`: `leeway_secs` is {} but must be at most {MAX_LEEWAY_SECS}",
                self.leeway_secs
            ));
        }
        if self.jwks_file.is_some() && self.jwks_uri.is_some() {
            return Err(format!("issuer `{name}`: set `jwks_file` or `jwks_uri`, not both"));
        }
        if let Some(uri) = &self.jwks_uri {
            check_fetch_url(uri).map_err(|e| format!("issuer `{name}`: `jwks_uri` {e}"))?;
        }
        Ok(())
    }
}

/// The scheme (`Some(true)` for https, `Some(false)` for http) and host of a URL.
pub(crate) fn parse_url(url: &str) -> Result<(Option<bool>, String), String> {
    let uri: http::Uri = url.parse().map_err(|_| "is not a URL".to_owned())?;
    let https = match uri.scheme_str() {
        Some("https") => Some(true),
        Some("http") => Some(false),
        _ => None,
    };
    let host = uri.host().ok_or_else(|| "has no host".to_owned())?.to_owned();
    Ok((https, host))
}

/// Keys may only be fetched over https, or over plain http from this machine (tests and
/// local development): anything else would let a network attacker substitute keys.
pub(crate) fn check_fetch_url(url: &str) -> Result<(), String> {
    match parse_url(url)? {
        (Some(true), _) => Ok(()),
        (Some(false), host) if is_loopback(&host) => Ok(()),
        (Some(false), _) => Err("must use https (plain http only for loopback hosts)".to_owned()),
        (None, _) => Err("must be an http(s) URL".to_owned()),
    }
}

pub(crate) fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> IssuerConfig {
        IssuerConfig::new("https://idp.example.com", "gatehouse", PrincipalKind::User)
    }

    #[test]
    fn defaults_apply_and_unknown_keys_fail() {
        let c: IssuerConfig = serde_json::from_value(serde_json::json!({
            "issuer": "https://idp.example.com", "audience": "gh", "principal": "Agent"
        }))
        .unwrap();
        assert_eq!(c.groups_claim, "groups");
        assert_eq!(c.owner_claim, "owner");
        assert_eq!(c.leeway_secs, 60);
        assert_eq!(c.principal, PrincipalKind::Agent);
        let bad = serde_json::from_value::<IssuerConfig>(serde_json::json!({
            "issuer": "https://i", "audience": "gh", "principal": "User", "leeway": 5
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn validate_names_the_bad_key() {
        assert!(good().validate().is_ok());
        let mut c = good();
        c.leeway_secs = 61;
        assert!(c.validate().unwrap_err().contains("leeway_secs"));
        let mut c = good();
        c.audience = " ".into();
        assert!(c.validate().unwrap_err().contains("audience"));
        let mut c = good();
        c.issuer = "ftp://idp.example.com".into();
        assert!(c.validate().unwrap_err().contains("`issuer`"));
        let mut c = good();
        c.issuer = "idp.example.com".into();
        assert!(c.validate().unwrap_err().contains("`issuer`"));
        let mut c = good();
        c.jwks_uri = Some("http://keys.example.com/jwks".into());
        assert!(c.validate().unwrap_err().contains("jwks_uri"));
        c.jwks_uri = Some("http://127.0.0.1:8080/jwks".into());
        assert!(c.validate().is_ok());
        c.jwks_file = Some("/tmp/jwks.json".into());
        assert!(c.validate().unwrap_err().contains("jwks_file"));
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("localhost"));
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("10.0.0.1"));
        assert!(!is_loopback("example.com"));
    }
}
