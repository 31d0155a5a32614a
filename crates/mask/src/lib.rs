//! Gatehouse masks sensitive values in responses on the data path: this crate finds them
//! (emails, card numbers, SSNs, phone numbers, IBANs, tokens, private keys, named secrets) and
//! replaces them, with pure functions that cost little when a value holds nothing sensitive.
//!
//! # Replacement formats
//!
//! | class | example input | masked |
//! |---|---|---|
//! | `email` | `alice@example.com` | `a***@example.com` (first character of the local part, then the domain) |
//! | `card` | `4111 1111 1111 1111` | `**** **** **** 1111` (last 4 digits; separators and length kept) |
//! | `ssn` | `123-45-6789` | `***-**-6789` (last 4 digits) |
//! | `phone` | `+1 415-555-2671` | `+* ***-***-**71` (the `+` and the last 2 digits) |
//! | `iban` | `GB82 WEST 1234 5698 7654 32` | `GB** **** **** **** **54 32` (country and last 4) |
//! | `token` | `ghp_…`, a JWT, `Bearer …` | `<masked:token>` (`Bearer <masked:token>` keeps the scheme) |
//! | `private_key` | `-----BEGIN … PRIVATE KEY----- … -----END …-----` | `<masked:private_key>` |
//! | `secret` | the value of a `password` column or key | `<masked:secret>` |
//!
//! A value that a column or key name marks as one class but that no detector recognises is
//! masked whole: `<masked:email>` for emails, and for card, SSN, phone and IBAN every ASCII
//! letter and digit is starred except those the table above keeps. Every format is a fixed point:
//! masking a masked value changes nothing and counts nothing.

mod detect;
mod hint;
mod kube;
mod masker;
mod rules;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use hint::column_hint;
pub use kube::{KUBE_MASKED_DATA, KUBE_MASKED_STRING, mask_kube_secret, mask_kube_secret_json};
pub use masker::{Masker, carries_masked_value};
pub use rules::{ColumnRules, MaskConfig, TableRef};

/// A kind of sensitive value. Policy decides per class, once per session, who sees it unmasked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataClass {
    /// An email address.
    Email,
    /// A payment card number (Luhn-valid, known issuer prefix).
    Card,
    /// A US social security number in `123-45-6789` form.
    Ssn,
    /// A phone number in E.164 form (`+` and 8–15 digits).
    Phone,
    /// An international bank account number (mod-97 valid, known country length).
    Iban,
    /// A bearer credential: JWT, cloud or SaaS API key, Gatehouse credential.
    Token,
    /// A PEM private key block.
    PrivateKey,
    /// A value that only its column or key name reveals as secret (`password`, `api_key`, …).
    Secret,
}

/// A set of data classes (a column derived from several sources carries all of theirs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DataClasses(u8);

/// How many values of each class were masked; never the values themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaskCounts([u64; DataClass::ALL.len()]);

/// Errors of this crate: only naming a data class can fail.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaskError {
    /// A configuration or policy named a data class that does not exist.
    #[error("unknown data class {0:?} (expected one of email, card, ssn, phone, iban, token, private_key, secret)")]
    UnknownClass(String),
}

impl DataClass {
    /// Every class, in declaration order.
    pub const ALL: [DataClass; 8] = [
        DataClass::Email,
        DataClass::Card,
        DataClass::Ssn,
        DataClass::Phone,
        DataClass::Iban,
        DataClass::Token,
        DataClass::PrivateKey,
        DataClass::Secret,
    ];

    /// The snake_case name used in policies, configuration and audit records.
    pub fn as_str(&self) -> &'static str {
        match self {
            DataClass::Email => "email",
            DataClass::Card => "card",
            DataClass::Ssn => "ssn",
            DataClass::Phone => "phone",
            DataClass::Iban => "iban",
            DataClass::Token => "token",
            DataClass::PrivateKey => "private_key",
            DataClass::Secret => "secret",
        }
    }

    /// The class named `s` (ASCII case-insensitive), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|class| class.as_str().eq_ignore_ascii_case(s))
    }

    /// The fixed text that replaces a whole value of this class.
    pub fn marker(&self) -> &'static str {
        match self {
            DataClass::Email => "<masked:email>",
            DataClass::Card => "<masked:card>",
            DataClass::Ssn => "<masked:ssn>",
            DataClass::Phone => "<masked:phone>",
            DataClass::Iban => "<masked:iban>",
            DataClass::Token => "<masked:token>",
            DataClass::PrivateKey => "<masked:private_key>",
            DataClass::Secret => "<masked:secret>",
        }
    }

    /// How costly a leak of this class is; when a value belongs to several classes it is
    /// masked as the most sensitive one.
    pub fn sensitivity(self) -> u8 {
        match self {
            DataClass::PrivateKey => 8,
            DataClass::Secret => 7,
            DataClass::Token => 6,
            DataClass::Card => 5,
            DataClass::Ssn => 4,
            DataClass::Iban => 3,
            DataClass::Phone => 2,
            DataClass::Email => 1,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl DataClasses {
    /// No class.
    pub const EMPTY: DataClasses = DataClasses(0);

    /// This set and `class`.
    pub fn with(self, class: DataClass) -> Self {
        DataClasses(self.0 | (1 << class.index()))
    }

    /// This set and `class`, if any.
    pub fn with_opt(self, class: Option<DataClass>) -> Self {
        class.map_or(self, |c| self.with(c))
    }

    /// Both sets.
    pub fn union(self, other: DataClasses) -> Self {
        DataClasses(self.0 | other.0)
    }

    /// Whether `class` is in the set.
    pub fn contains(self, class: DataClass) -> bool {
        self.0 & (1 << class.index()) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The classes of the set, in class order.
    pub fn iter(self) -> impl Iterator<Item = DataClass> {
        DataClass::ALL.into_iter().filter(move |&c| self.contains(c))
    }

    /// The most sensitive class of the set (see [`DataClass::sensitivity`]).
    pub fn most_sensitive(self) -> Option<DataClass> {
        self.iter().max_by_key(|c| c.sensitivity())
    }
}

impl FromIterator<DataClass> for DataClasses {
    fn from_iter<I: IntoIterator<Item = DataClass>>(iter: I) -> Self {
        iter.into_iter().fold(DataClasses::EMPTY, DataClasses::with)
    }
}

impl fmt::Display for DataClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataClass {
    type Err = MaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| MaskError::UnknownClass(s.to_owned()))
    }
}

impl MaskCounts {
    /// Records `n` more masked values of `class`.
    pub fn add(&mut self, class: DataClass, n: u64) {
        let slot = &mut self.0[class.index()];
        *slot = slot.saturating_add(n);
    }

    /// How many values of `class` were masked.
    pub fn get(&self, class: DataClass) -> u64 {
        self.0[class.index()]
    }

    /// Adds every count of `other` to this one (one request's counts into a session's).
    pub fn merge(&mut self, other: &MaskCounts) {
        for class in DataClass::ALL {
            self.add(class, other.get(class));
        }
    }

    /// True when nothing was masked.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }

    /// All masked values, over every class.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |acc, &n| acc.saturating_add(n))
    }

    /// The classes with a non-zero count, in class order.
    pub fn iter(&self) -> impl Iterator<Item = (DataClass, u64)> + '_ {
        DataClass::ALL
            .into_iter()
            .map(|class| (class, self.get(class)))
            .filter(|&(_, n)| n > 0)
    }

    /// The non-zero counts keyed by class name, as audit records carry them.
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        self.iter().map(|(class, n)| (class.as_str().to_owned(), n)).collect()
    }
}

impl From<&MaskCounts> for BTreeMap<String, u64> {
    fn from(counts: &MaskCounts) -> Self {
        counts.to_map()
    }
}

#[cfg(test)]
mod tests;
