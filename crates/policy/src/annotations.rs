//! The annotations the gateway reads from permits (`@approval`, `@approvals_required`,
//! `@approval_timeout`). They are parsed once at load so that a typo fails the load
//! instead of quietly turning an approval into a plain permit.

use std::time::Duration;

use cedar_policy::Effect;

/// Marks a permit as needing approval by members of this group.
pub(crate) const APPROVAL: &str = "approval";
/// How many distinct approvals are needed; default 1.
pub(crate) const APPROVALS_REQUIRED: &str = "approvals_required";
/// How long the request may wait, e.g. "10m"; default: the gateway's.
pub(crate) const APPROVAL_TIMEOUT: &str = "approval_timeout";
/// The policy id (Cedar has no id syntax of its own).
pub(crate) const ID: &str = "id";

/// The approval terms of one permit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApprovalSpec {
    pub(crate) group: String,
    pub(crate) approvals_required: u32,
    pub(crate) timeout: Option<Duration>,
}

/// Reads the approval annotations of a policy; `Err` says what is wrong in a sentence.
pub(crate) fn parse_approval<'a>(
    effect: Effect,
    annotations: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Option<ApprovalSpec>, String> {
    let mut group = None;
    let mut required = None;
    let mut timeout = None;
    for (key, value) in annotations {
        match key {
            APPROVAL => group = Some(value),
            APPROVALS_REQUIRED => required = Some(value),
            APPROVAL_TIMEOUT => timeout = Some(value),
            // A misspelt approval annotation would make the permit apply without
            // approval; refuse anything that looks like one.
            other if other.contains("approv") => {
                return Err(format!(
                    "unknown annotation @{other} (approval annotations are @{APPROVAL}, \
                     @{APPROVALS_REQUIRED} and @{APPROVAL_TIMEOUT})"
                ));
            }
            _ => {}
        }
    }
    let Some(group) = group else {
        if required.is_some() || timeout.is_some() {
            return Err(format!(
                "@{APPROVALS_REQUIRED} and @{APPROVAL_TIMEOUT} need @{APPROVAL}(\"<group>\") on the same policy"
            ));
        }
        return Ok(None);
    };
    if effect == Effect::Forbid {
        return Err(format!(
            "@{APPROVAL} on a forbid has no meaning: a forbid always denies"
        ));
    }
    let group = group.trim();
    if group.is_empty() {
        return Err(format!("@{APPROVAL} needs a group name"));
    }
    let approvals_required = match required {
        None => 1,
        Some(text) => match text.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(format!(
                    "@{APPROVALS_REQUIRED}({text:?}) must be a whole number of at least 1"
                ));
            }
        },
    };
    let timeout = match timeout {
        None => None,
        Some(text) => match humantime::parse_duration(text.trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                return Err(format!("@{APPROVAL_TIMEOUT}({text:?}) must be longer than zero"));
            }
            Err(e) => {
                return Err(format!(
                    "@{APPROVAL_TIMEOUT}({text:?}) is not a duration such as \"90s\", \"10m\" or \"1h\": {e}"
                ));
            }
        },
    };
    Ok(Some(ApprovalSpec {
        group: group.to_owned(),
        approvals_required,
        timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(effect: Effect, pairs: &[(&str, &str)]) -> Result<Option<ApprovalSpec>, String> {
        parse_approval(effect, pairs.iter().copied())
    }

    #[test]
    fn no_approval_annotations_means_no_approval() {
        assert_eq!(parse(Effect::Permit, &[("id", "x"), ("doc", "y")]), Ok(None));
        assert_eq!(parse(Effect::Forbid, &[]), Ok(None));
    }

    #[test]
    fn approval_alone_defaults_to_one_approval_and_gateway_timeout() {
        assert_eq!(
            parse(Effect::Permit, &[("approval", "dba-leads")]),
            Ok(Some(ApprovalSpec {
                group: "dba-leads".into(),
                approvals_required: 1,
                timeout: None,
            }))
        );
    }

    #[test]
    fn count_and_timeout_are_read() {
        assert_eq!(
            parse(
                Effect::Permit,
                &[
                    ("approval", "ops-leads"),
                    ("approvals_required", "2"),
                    ("approval_timeout", "10m"),
                ]
            ),
            Ok(Some(ApprovalSpec {
                group: "ops-leads".into(),
                approvals_required: 2,
                timeout: Some(Duration::from_secs(600)),
            }))
        );
        assert_eq!(
            parse(Effect::Permit, &[("approval", "g"), ("approval_timeout", "1h 30s")])
                .map(|s| s.and_then(|s| s.timeout)),
            Ok(Some(Duration::from_secs(3630)))
        );
    }

    #[test]
    fn bad_values_are_errors() {
        for pairs in [
            &[("approval", "")][..],
            &[("approval", "  ")],
            &[("approval", "g"), ("approvals_required", "0")],
            &[("approval", "g"), ("approvals_required", "two")],
            &[("approval", "g"), ("approvals_required", "-1")],
            &[("approval", "g"), ("approval_timeout", "soon")],
            &[("approval", "g"), ("approval_timeout", "0s")],
            &[("approvals_required", "2")],
            &[("approval_timeout", "5m")],
            &[("approvals", "g")],
            &[("approval", "g"), ("approval_time_out", "5m")],
        ] {
            assert!(parse(Effect::Permit, pairs).is_err(), "{pairs:?} was accepted");
        }
    }

    #[test]
    fn approval_on_forbid_is_an_error() {
        let err = parse(Effect::Forbid, &[("approval", "g")]).expect_err("accepted");
        assert!(err.contains("forbid"), "{err}");
    }
}
