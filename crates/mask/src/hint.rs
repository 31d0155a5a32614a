//! Column and JSON key names reveal what a value is even when its content does not (a password
//! looks like any other string): this module maps a name to the class it announces, word by
//! word, so that `user_password` and `apiKey` are hints but `password_changed_at`,
//! `secretName` and `prompt_tokens` are not.

use crate::DataClass;

/// Words after the class word that make the name describe metadata about the value rather
/// than the value itself (`password_changed_at`, `token_type`, `secretKeyRef`, `card_last4`).
const METADATA_SUFFIXES: &[&str] = &[
    "alg",
    "algorithm",
    "at",
    "audience",
    "bounced",
    "brand",
    "changed",
    "change",
    "cnt",
    "confirmed",
    "count",
    "country",
    "created",
    "date",
    "days",
    "description",
    "domain",
    "duration",
    "enabled",
    "endpoint",
    "exp",
    "expired",
    "expires",
    "expiration",
    "expiry",
    "field",
    "file",
    "first6",
    "format",
    "hint",
    "id",
    "ids",
    "issuer",
    "kind",
    "label",
    "last",
    "last4",
    "len",
    "length",
    "mask",
    "masked",
    "minutes",
    "modified",
    "name",
    "names",
    "network",
    "on",
    "opt",
    "optin",
    "optout",
    "owner",
    "path",
    "policy",
    "prefix",
    "provider",
    "ref",
    "refs",
    "region",
    "required",
    "reset",
    "rotated",
    "rotation",
    "scheme",
    "scope",
    "scopes",
    "score",
    "seconds",
    "secs",
    "selector",
    "sent",
    "set",
    "size",
    "source",
    "status",
    "strength",
    "suffix",
    "time",
    "timestamp",
    "ts",
    "ttl",
    "type",
    "updated",
    "uri",
    "url",
    "used",
    "uuid",
    "valid",
    "validity",
    "verified",
    "version",
];

/// First words that make the name a flag or a measure (`has_password`, `num_tokens`).
const FLAG_PREFIXES: &[&str] = &[
    "allow", "allows", "can", "count", "enable", "enabled", "has", "is", "max", "min", "n", "need", "needs", "num",
    "require", "requires", "should", "use", "uses",
];

/// Words that name a secret by themselves. Plural `tokens` is missing on purpose: it counts
/// tokens in LLM usage tables far more often than it holds them.
const SECRET_WORDS: &[&str] = &[
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "credentials",
    "passphrase",
    "passwd",
    "password",
    "passwords",
    "pwd",
    "secret",
    "secrets",
    "token",
];

const PHONE_WORDS: &[&str] = &[
    "cellphone",
    "fax",
    "mobile",
    "msisdn",
    "phone",
    "phones",
    "tel",
    "telephone",
];

const CARD_WORDS: &[&str] = &[
    "cardnum",
    "cardnumber",
    "ccnum",
    "ccnumber",
    "creditcard",
    "creditcardnumber",
    "pan",
];

const NUMBER_WORDS: &[&str] = &["no", "nr", "num", "number", "pan"];

/// Splits a name into words at non-alphanumeric characters and lower-to-upper case changes.
struct Words<'a> {
    name: &'a str,
    pos: usize,
}

impl Iterator for Words<'_> {
    /// A word's byte range in the name.
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let b = self.name.as_bytes();
        while self.pos < b.len() && !b[self.pos].is_ascii_alphanumeric() {
            self.pos += 1;
        }
        if self.pos == b.len() {
            return None;
        }
        let start = self.pos;
        self.pos += 1;
        while self.pos < b.len() && b[self.pos].is_ascii_alphanumeric() {
            let camel = b[self.pos].is_ascii_uppercase()
                && (b[self.pos - 1].is_ascii_lowercase() || b[self.pos - 1].is_ascii_digit());
            if camel {
                break;
            }
            self.pos += 1;
        }
        Some((start, self.pos))
    }
}

/// The class a column or JSON key name announces, if any: `email`, `e_mail` → email;
/// `card_number`, `pan` → card; `ssn` → ssn; `phone`, `mobile` → phone; `iban` → iban;
/// `private_key` → private key; `password`, `passwd`, `secret`, `api_key`, `token`,
/// `credentials`, `authorization` → secret. A name that only describes such a value
/// (`password_changed_at`, `email_verified`, `token_type`, `has_password`) announces nothing.
pub fn column_hint(name: &str) -> Option<DataClass> {
    // Words are compared lowercased, from one lowercased copy: this runs for every JSON key.
    let mut lower = [0u8; 96];
    let prefix = &name.as_bytes()[..name.len().min(lower.len())];
    for (dst, src) in lower.iter_mut().zip(prefix) {
        *dst = src.to_ascii_lowercase();
    }
    let mut buf = [""; 12];
    let mut n = 0;
    for (start, end) in (Words { name, pos: 0 }) {
        let Some(word) = lower.get(start..end).and_then(|w| std::str::from_utf8(w).ok()) else {
            break;
        };
        if n == buf.len() {
            break;
        }
        buf[n] = word;
        n += 1;
    }
    let words = &buf[..n];
    if words.first().is_some_and(|w| is_any(w, FLAG_PREFIXES)) {
        return None;
    }
    let mut best: Option<DataClass> = None;
    let mut i = 0;
    while i < words.len() {
        let Some((class, len)) = class_word(&words[i..]) else {
            i += 1;
            continue;
        };
        let describes = words[i + len..].iter().any(|w| is_any(w, METADATA_SUFFIXES));
        if !describes && best.is_none_or(|b| class.sensitivity() > b.sensitivity()) {
            best = Some(class);
        }
        i += len;
    }
    best
}

/// `word` is lowercase, as are the sets.
fn is_any(word: &str, set: &[&str]) -> bool {
    set.contains(&word)
}

/// The class announced by the (lowercase) word(s) at the start of `words`, and how many words
/// it took.
fn class_word(words: &[&str]) -> Option<(DataClass, usize)> {
    let w0 = words[0];
    let w1 = words.get(1).copied().unwrap_or("");
    let is = |w: &str, s: &str| w == s;
    let hit = if is(w0, "private") && is(w1, "key") {
        (DataClass::PrivateKey, 2)
    } else if is_any(w0, &["privkey", "privatekey"]) {
        (DataClass::PrivateKey, 1)
    } else if is_any(w0, &["api", "signing", "encryption", "master"]) && is_any(w1, &["key", "keys"]) {
        (DataClass::Secret, 2)
    } else if is_any(w0, SECRET_WORDS) {
        (DataClass::Secret, 1)
    } else if is(w0, "e") && is(w1, "mail") {
        (DataClass::Email, 2)
    } else if is_any(w0, &["email", "emails", "emailaddress"]) {
        (DataClass::Email, 1)
    } else if is(w0, "ssn") {
        (DataClass::Ssn, 1)
    } else if is(w0, "social") && is(w1, "security") {
        (DataClass::Ssn, 2)
    } else if is(w0, "iban") {
        (DataClass::Iban, 1)
    } else if is_any(w0, CARD_WORDS) {
        (DataClass::Card, 1)
    } else if (is(w0, "credit") && is(w1, "card")) || (is_any(w0, &["card", "cc"]) && is_any(w1, NUMBER_WORDS)) {
        (DataClass::Card, 2)
    } else if is(w0, "card") && words.len() == 1 {
        (DataClass::Card, 1)
    } else if is_any(w0, PHONE_WORDS) {
        (DataClass::Phone, 1)
    } else {
        return None;
    };
    Some(hit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_announce_their_class() {
        for (name, class) in [
            ("email", DataClass::Email),
            ("e_mail", DataClass::Email),
            ("userEmail", DataClass::Email),
            ("contact_email_address", DataClass::Email),
            ("card_number", DataClass::Card),
            ("cardNumber", DataClass::Card),
            ("credit_card", DataClass::Card),
            ("pan", DataClass::Card),
            ("cc_no", DataClass::Card),
            ("ssn", DataClass::Ssn),
            ("social_security_number", DataClass::Ssn),
            ("phone_number", DataClass::Phone),
            ("mobile", DataClass::Phone),
            ("IBAN", DataClass::Iban),
            ("private_key", DataClass::PrivateKey),
            ("privateKey", DataClass::PrivateKey),
            ("password", DataClass::Secret),
            ("user_passwd", DataClass::Secret),
            ("password_hash", DataClass::Secret),
            ("client_secret", DataClass::Secret),
            ("api_key", DataClass::Secret),
            ("apiKey", DataClass::Secret),
            ("access_token", DataClass::Secret),
            ("password_reset_token", DataClass::Secret),
            ("Authorization", DataClass::Secret),
            ("DB_PASSWORD", DataClass::Secret),
            ("email_password", DataClass::Secret),
        ] {
            assert_eq!(column_hint(name), Some(class), "{name}");
        }
    }

    #[test]
    fn names_about_a_value_announce_nothing() {
        for name in [
            "id",
            "order_number",
            "card_last4",
            "card_brand",
            "cardholder_name",
            "password_changed_at",
            "password_reset_at",
            "email_verified",
            "token_type",
            "token_expires_at",
            "prompt_tokens",
            "max_tokens",
            "has_password",
            "is_email_verified",
            "secretName",
            "secretKeyRef",
            "tokenExpirationSeconds",
            "phone_country_code",
            "keyboard",
            "passenger",
            "tls.key",
            "cc",
            "",
        ] {
            assert_eq!(column_hint(name), None, "{name}");
        }
    }
}
