//! The `Masker` applies one session's masking decision to response values: built once from
//! the classes policy says to hide, then called for every cell and every JSON string, so the
//! path where nothing matches borrows its input and allocates nothing.

use std::borrow::Cow;

use serde_json::Value;

use crate::detect::{self, ClassSet, Span};
use crate::hint::column_hint;
use crate::{DataClass, DataClasses, MaskCounts};

/// Which classes one session masks. Cheap to clone and to share.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Masker {
    classes: ClassSet,
}

/// Rounds of detection on a masked value. Masking one value can expose another that overlapped
/// it (an email whose local part was the end of a card); a second round finds it, and the
/// result is then a fixed point. The bound keeps the worst case linear.
const MAX_ROUNDS: usize = 4;

impl Masker {
    /// Masks exactly `classes`.
    pub fn new(classes: impl IntoIterator<Item = DataClass>) -> Self {
        let classes = classes.into_iter().fold(ClassSet::EMPTY, ClassSet::with);
        Masker { classes }
    }

    /// Masks nothing: every value passes through borrowed.
    pub fn none() -> Self {
        Masker {
            classes: ClassSet::EMPTY,
        }
    }

    /// Masks every class.
    pub fn all() -> Self {
        Self::new(DataClass::ALL)
    }

    /// Whether values of class `c` are masked.
    pub fn masks(&self, c: DataClass) -> bool {
        self.classes.has(c)
    }

    /// The most sensitive class of `classes` that this masker masks: the class a value derived
    /// from all of them is masked as. `None` when the session may see every one of them.
    pub fn strictest(&self, classes: DataClasses) -> Option<DataClass> {
        classes
            .iter()
            .filter(|&c| self.masks(c))
            .max_by_key(|c| c.sensitivity())
    }

    /// Whether this masker can change anything at all (frontends skip the walk otherwise).
    pub fn is_noop(&self) -> bool {
        self.classes == ClassSet::EMPTY
    }

    /// `mask_hinted` for a wire value, the form a data path calls for each cell of a column
    /// whose hint it resolved once: bytes that are not UTF-8 (binary formats) are returned
    /// unchanged, as by `mask_bytes`. A value without a hint of a masked class in which the
    /// detectors' pre-pass rules every detector out is returned as it is without validating its
    /// UTF-8 first: most cells of most results.
    pub fn mask_hinted_bytes<'a>(
        &self,
        hint: Option<DataClass>,
        b: &'a [u8],
        counts: &mut MaskCounts,
    ) -> Cow<'a, [u8]> {
        let hinted = hint.is_some_and(|c| self.masks(c)) && !b.is_empty();
        if !hinted && !detect::may_find(b, self.classes) {
            return Cow::Borrowed(b);
        }
        let Ok(s) = std::str::from_utf8(b) else {
            return Cow::Borrowed(b);
        };
        match self.mask_hinted(hint, s, counts) {
            Cow::Borrowed(_) => Cow::Borrowed(b),
            Cow::Owned(masked) => Cow::Owned(masked.into_bytes()),
        }
    }

    /// The pre-pass for a whole document: false when `s` is neither a name that announces a
    /// class this masker masks nor a value in which a detector could find anything. When
    /// every string of a document answers false, `mask_column` leaves every (name, value)
    /// pair drawn from them unchanged, so a caller may skip parsing the document.
    pub fn may_mask(&self, s: &str) -> bool {
        detect::may_find(s.as_bytes(), self.classes) || column_hint(s).is_some_and(|c| self.masks(c))
    }

    /// Replaces every detected value of a masked class in `s` (formats in the crate docs).
    /// Borrows `s` when nothing matched, and only then: `Cow::Borrowed` always means unchanged.
    pub fn mask_text<'a>(&self, s: &'a str, counts: &mut MaskCounts) -> Cow<'a, str> {
        self.mask_found(s, counts).0
    }

    /// `mask_text` for a wire value: bytes that are not UTF-8 (binary formats) are returned
    /// unchanged.
    pub fn mask_bytes<'a>(&self, b: &'a [u8], counts: &mut MaskCounts) -> Cow<'a, [u8]> {
        let Ok(s) = std::str::from_utf8(b) else {
            return Cow::Borrowed(b);
        };
        match self.mask_text(s, counts) {
            Cow::Borrowed(_) => Cow::Borrowed(b),
            Cow::Owned(masked) => Cow::Owned(masked.into_bytes()),
        }
    }

    /// Masks a result cell: when `column_name` announces a class (see [`column_hint`]) the
    /// whole value is masked as that class even if no detector recognises it; content
    /// detection then applies as in `mask_text`. Resolve the hint once per result set with
    /// [`column_hint`] and call [`Masker::mask_hinted`] to save the name lookup per cell.
    pub fn mask_column<'a>(&self, column_name: &str, value: &'a str, counts: &mut MaskCounts) -> Cow<'a, str> {
        self.mask_hinted(column_hint(column_name), value, counts)
    }

    /// `mask_column` with the hint already resolved.
    ///
    /// Masking by hint: secrets, private keys and emails without a recognisable address become
    /// the class marker (`<masked:secret>`); cards and SSNs keep their last 4 letters or digits,
    /// phones their last 2, IBANs their first 2 and last 4, everything else ASCII-alphanumeric
    /// becomes `*`. Empty values stay empty.
    pub fn mask_hinted<'a>(&self, hint: Option<DataClass>, value: &'a str, counts: &mut MaskCounts) -> Cow<'a, str> {
        let Some(class) = hint.filter(|&c| self.masks(c) && !value.is_empty()) else {
            return self.mask_text(value, counts);
        };
        if class == DataClass::Secret {
            if value == class.marker() {
                return Cow::Borrowed(value);
            }
            counts.add(class, 1);
            return Cow::Owned(class.marker().to_owned());
        }
        let (content, found) = self.mask_found(value, counts);
        let keep = match class {
            DataClass::Card | DataClass::Ssn => (0, 4),
            DataClass::Phone => (0, 2),
            DataClass::Iban => (2, 4),
            DataClass::Email | DataClass::Token | DataClass::PrivateKey | DataClass::Secret => {
                if found.has(class) || content.contains(class.marker()) {
                    return content;
                }
                counts.add(class, 1);
                return Cow::Owned(class.marker().to_owned());
            }
        };
        match star_alnum(&content, keep.0, keep.1) {
            Some(starred) => {
                if !found.has(class) {
                    counts.add(class, 1);
                }
                Cow::Owned(starred)
            }
            None => content,
        }
    }

    /// Masks every string in a JSON document in place. A string directly under a key that
    /// announces a class (`"password": "x"`), or inside an array under such a key, is masked
    /// as `mask_column` would; so is the `value` of a `{"name": …, "value": …}` pair whose
    /// name announces one (Kubernetes environment variables). Keys, numbers and booleans are
    /// left as they are.
    pub fn mask_json(&self, v: &mut Value, counts: &mut MaskCounts) {
        self.mask_json_with(v, counts, &column_hint);
    }

    /// `mask_json` with the class each key announces given by `key_class` (name hints plus
    /// configured column rules, for the JSON of a whole table row).
    pub fn mask_json_with(
        &self,
        v: &mut Value,
        counts: &mut MaskCounts,
        key_class: &dyn Fn(&str) -> Option<DataClass>,
    ) {
        if self.is_noop() {
            return;
        }
        let mut stack: Vec<(Option<DataClass>, &mut Value)> = vec![(None, v)];
        while let Some((hint, value)) = stack.pop() {
            match value {
                Value::String(s) => {
                    if let Cow::Owned(masked) = self.mask_hinted(hint, s, counts) {
                        *s = masked;
                    }
                }
                Value::Array(items) => stack.extend(items.iter_mut().map(|item| (hint, item))),
                Value::Object(map) => {
                    let pair_hint = match (map.get("name"), map.get("value")) {
                        (Some(Value::String(name)), Some(Value::String(_))) => key_class(name),
                        _ => None,
                    };
                    for (key, item) in map.iter_mut() {
                        let hint = match item {
                            Value::String(_) | Value::Array(_) => {
                                key_class(key).or(pair_hint.filter(|_| key == "value"))
                            }
                            _ => None,
                        };
                        stack.push((hint, item));
                    }
                }
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
        }
    }

    /// Content masking, also reporting every class found (masked now or already masked).
    fn mask_found<'a>(&self, s: &'a str, counts: &mut MaskCounts) -> (Cow<'a, str>, ClassSet) {
        if !self.classes.has_content_classes() {
            return (Cow::Borrowed(s), ClassSet::EMPTY);
        }
        let mut found = ClassSet::EMPTY;
        let mut spans: Vec<Span> = Vec::new();
        let Some(mut current) = self.mask_round(s, counts, &mut found, &mut spans) else {
            return (Cow::Borrowed(s), found);
        };
        // A value that was one address and nothing else (an email column) is now one masked
        // address: the next round would claim it whole as already masked and change nothing.
        if let [only] = spans[..]
            && only.class == DataClass::Email
            && only.start == 0
            && only.end == s.len()
        {
            return (Cow::Owned(current), found);
        }
        for _ in 1..MAX_ROUNDS {
            match self.mask_round(&current, counts, &mut found, &mut spans) {
                Some(next) => current = next,
                None => break,
            }
        }
        (Cow::Owned(current), found)
    }

    /// One round of detection and replacement; `None` when nothing changed. `spans` is
    /// scratch space (left holding this round's spans).
    fn mask_round(
        &self,
        s: &str,
        counts: &mut MaskCounts,
        found: &mut ClassSet,
        spans: &mut Vec<Span>,
    ) -> Option<String> {
        spans.clear();
        detect::detect(s, self.classes, spans);
        for span in spans.iter() {
            *found = found.with(span.class);
        }
        if spans.iter().all(|span| span.done) {
            return None;
        }
        let mut out = String::with_capacity(s.len() + 16);
        let mut last = 0;
        for span in spans.iter().filter(|span| !span.done) {
            let (Some(before), Some(text)) = (s.get(last..span.start), s.get(span.start..span.end)) else {
                // Spans start and end on ASCII bytes; anything else is a detector bug, and
                // skipping the span is the only choice that cannot panic.
                continue;
            };
            out.push_str(before);
            write_masked(&mut out, span.class, text);
            counts.add(span.class, 1);
            last = span.end;
        }
        out.push_str(s.get(last..).unwrap_or_default());
        Some(out)
    }
}

/// Appends the masked form of one detected value (formats in the crate docs).
fn write_masked(out: &mut String, class: DataClass, text: &str) {
    match class {
        DataClass::Email => {
            // A short value: a plain loop beats memchr's setup.
            let at = text.bytes().position(|c| c == b'@').unwrap_or(text.len());
            out.extend(text.chars().next());
            out.push_str("***");
            out.push_str(text.get(at..).unwrap_or_default());
        }
        DataClass::Card | DataClass::Ssn => star_digits(out, text, 4),
        DataClass::Phone => star_digits(out, text, 2),
        DataClass::Iban => out.push_str(&star_alnum(text, 2, 4).unwrap_or_else(|| text.to_owned())),
        DataClass::Token | DataClass::PrivateKey | DataClass::Secret => {
            out.push_str(class.marker());
        }
    }
}

/// True when `text` (a request body: JSON or YAML, possibly with Go's `\u003c` escapes)
/// holds a value in a form this masker writes: a class marker (`<masked:email>`, Kubernetes'
/// `<masked>`), a masked address (`j***@example.com`), or starred digits that keep their last
/// ones (`************4242`, `***-**-6789`, `(***) ***-**67`). Writing such a value back would
/// replace the real one with its masked form. Runs of single stars (`*/5 * * * *`, a cron
/// schedule) and stars followed by nothing are not masked forms.
pub fn carries_masked_value(text: &[u8]) -> bool {
    let has = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
    if has(b"<masked") || has(b"\\u003cmasked") || has(b"***@") {
        return true;
    }
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'*' {
            i += 1;
            continue;
        }
        // A run of star groups joined by separators, then what follows it.
        let (mut stars, mut longest, mut group) = (0, 0, 0);
        let mut j = i;
        while j < text.len() {
            match text[j] {
                b'*' => {
                    stars += 1;
                    group += 1;
                    longest = longest.max(group);
                }
                b' ' | b'-' | b'(' | b')' | b'.' => group = 0,
                _ => break,
            }
            j += 1;
        }
        if stars >= 4 && longest >= 3 && text.get(j).is_some_and(u8::is_ascii_alphanumeric) {
            return true;
        }
        i = j.max(i + 1);
    }
    false
}

/// Stars every ASCII digit of `text` but the last `keep`.
fn star_digits(out: &mut String, text: &str, keep: usize) {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    let mut seen = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            seen += 1;
            out.push(if seen + keep > digits { c } else { '*' });
        } else {
            out.push(c);
        }
    }
}

/// Stars every ASCII letter and digit of `text` but the first `first` and the last `last`;
/// `None` when that changes nothing.
fn star_alnum(text: &str, first: usize, last: usize) -> Option<String> {
    let total = text.bytes().filter(u8::is_ascii_alphanumeric).count();
    if total <= first + last {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut seen = 0;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            seen += 1;
            out.push(if seen <= first || seen + last > total { c } else { '*' });
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn masked(masker: &Masker, s: &str) -> (String, MaskCounts) {
        let mut counts = MaskCounts::default();
        let out = masker.mask_text(s, &mut counts).into_owned();
        (out, counts)
    }

    #[test]
    fn each_class_has_its_documented_format() {
        let m = Masker::all();
        for (input, output) in [
            ("alice@example.com", "a***@example.com"),
            ("4111 1111 1111 1111", "**** **** **** 1111"),
            ("4111-1111-1111-1111", "****-****-****-1111"),
            ("4111111111111111", "************1111"),
            ("123-45-6789", "***-**-6789"),
            ("+1 415-555-2671", "+* ***-***-**71"),
            ("GB82 WEST 1234 5698 7654 32", "GB** **** **** **** **54 32"),
            ("AKIAIOSFODNN7EXAMPLE", "<masked:token>"),
            (
                "Authorization: Bearer abcdef0123456789xyz",
                "Authorization: Bearer <masked:token>",
            ),
            (
                "k=-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----;",
                "k=<masked:private_key>;",
            ),
        ] {
            assert_eq!(masked(&m, input).0, output, "{input}");
        }
    }

    #[test]
    fn clean_values_are_borrowed_and_uncounted() {
        let m = Masker::all();
        let mut counts = MaskCounts::default();
        for s in [
            "",
            "Alice",
            "42",
            "2024-01-15 10:30:00+00",
            "550e8400-e29b-41d4-a716-446655440000",
            "order 4111111111111112 shipped",
            "3.141592653589793",
            "{\"a\": [1, 2, 3]}",
        ] {
            assert!(matches!(m.mask_text(s, &mut counts), Cow::Borrowed(_)), "{s}");
        }
        assert!(counts.is_empty());
    }

    #[test]
    fn counts_follow_masked_values() {
        let (out, counts) = masked(
            &Masker::all(),
            "a@example.com b@example.org 4111111111111111 ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        );
        assert_eq!(out, "a***@example.com b***@example.org ************1111 <masked:token>");
        assert_eq!(counts.get(DataClass::Email), 2);
        assert_eq!(counts.get(DataClass::Card), 1);
        assert_eq!(counts.get(DataClass::Token), 1);
        assert_eq!(counts.total(), 4);
    }

    #[test]
    fn unmasked_classes_pass_through() {
        let m = Masker::new([DataClass::Card]);
        let (out, counts) = masked(&m, "a@example.com 4111111111111111");
        assert_eq!(out, "a@example.com ************1111");
        assert_eq!(counts.get(DataClass::Email), 0);
        let mut counts = MaskCounts::default();
        assert!(matches!(
            Masker::none().mask_text("a@example.com 4111111111111111", &mut counts),
            Cow::Borrowed(_)
        ));
        assert!(Masker::none().is_noop());
        assert!(!Masker::all().is_noop());
    }

    #[test]
    fn mask_bytes_passes_binary_through() {
        let m = Masker::all();
        let mut counts = MaskCounts::default();
        let binary = [0xff, 0xfe, b'a', b'@', b'b', b'.', b'c', b'o'];
        assert!(matches!(m.mask_bytes(&binary, &mut counts), Cow::Borrowed(_)));
        assert_eq!(m.mask_bytes(b"x 123-45-6789", &mut counts).as_ref(), b"x ***-**-6789");
        assert!(matches!(m.mask_bytes(b"plain", &mut counts), Cow::Borrowed(_)));
    }

    #[test]
    fn masked_forms_are_recognised_in_request_bodies() {
        let m = Masker::new(DataClass::ALL);
        let mut counts = MaskCounts::default();
        let masked = m.mask_text(
            "owner lena@example.com card 4111 1111 1111 1111 ssn 123-45-6789 key AKIAIOSFODNN7EXAMPLE",
            &mut counts,
        );
        assert!(carries_masked_value(masked.as_bytes()), "{masked}");
        for form in [
            "j***@example.com",
            "************1111",
            "****-****-****-1111",
            "***-**-6789",
            "(***) ***-**67",
            "<masked:secret>",
            "<masked>",
            "\\u003cmasked:email\\u003e",
        ] {
            assert!(carries_masked_value(form.as_bytes()), "{form}");
        }
        for plain in [
            "schedule: \"*/5 * * * *\"",
            "* * * * * /usr/bin/backup",
            "password: ********",
            "a*b*c 2**10",
            "lena@example.com 4111 1111 1111 1111",
        ] {
            assert!(!carries_masked_value(plain.as_bytes()), "{plain}");
        }
    }

    #[test]
    fn column_hints_mask_values_no_detector_recognises() {
        let m = Masker::all();
        let mut counts = MaskCounts::default();
        assert_eq!(m.mask_column("password", "hunter2", &mut counts), "<masked:secret>");
        assert_eq!(m.mask_column("email", "not an address", &mut counts), "<masked:email>");
        assert_eq!(
            m.mask_column("email", "Al <al@example.com>", &mut counts),
            "Al <a***@example.com>"
        );
        assert_eq!(
            m.mask_column("card_number", "1234 5678 9012 3456", &mut counts),
            "**** **** **** 3456"
        );
        assert_eq!(
            m.mask_column("card_number", "4111 1111 1111 1111", &mut counts),
            "**** **** **** 1111"
        );
        assert_eq!(m.mask_column("ssn", "123456789", &mut counts), "*****6789");
        assert_eq!(m.mask_column("phone", "(415) 555-2671", &mut counts), "(***) ***-**71");
        assert_eq!(m.mask_column("iban", "XX00 1234 5678", &mut counts), "XX** **** 5678");
        assert_eq!(
            m.mask_column("private_key", "MIIEvQIBADAN", &mut counts),
            "<masked:private_key>"
        );
        assert_eq!(m.mask_column("password", "", &mut counts), "");
        assert_eq!(counts.get(DataClass::Secret), 1);
        assert_eq!(counts.get(DataClass::Email), 2);
        assert_eq!(counts.get(DataClass::Card), 2);
        assert_eq!(counts.get(DataClass::Ssn), 1);
        assert_eq!(counts.get(DataClass::Phone), 1);
        assert_eq!(counts.get(DataClass::Iban), 1);
        assert_eq!(counts.get(DataClass::PrivateKey), 1);
    }

    #[test]
    fn column_hints_respect_the_masker() {
        let m = Masker::new([DataClass::Email]);
        let mut counts = MaskCounts::default();
        assert!(matches!(
            m.mask_column("password", "hunter2", &mut counts),
            Cow::Borrowed("hunter2")
        ));
        assert_eq!(
            m.mask_column("notes", "x a@example.com", &mut counts),
            "x a***@example.com"
        );
        assert!(matches!(
            m.mask_column("password_changed_at", "2024-01-01", &mut counts),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn masked_columns_are_fixed_points() {
        let m = Masker::all();
        for (column, value) in [
            ("password", "hunter2"),
            ("email", "nobody"),
            ("email", "x <bob@example.com>"),
            ("card_number", "visa 4111111111111111"),
            ("iban", "iban: GB82 WEST 1234 5698 7654 32"),
            ("phone", "+1 415 555 2671 ext 12"),
            (
                "private_key",
                "key: -----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----",
            ),
        ] {
            let mut counts = MaskCounts::default();
            let once = m.mask_column(column, value, &mut counts).into_owned();
            assert_ne!(once, value);
            assert!(!counts.is_empty());
            let mut again = MaskCounts::default();
            let twice = m.mask_column(column, &once, &mut again);
            assert_eq!(twice, once, "{column}: {value}");
            assert!(again.is_empty(), "{column}: {value} counted {again:?}");
        }
    }

    #[test]
    fn json_strings_and_hinted_keys_are_masked() {
        let m = Masker::all();
        let mut doc = json!({
            "user": {"email": "alice@example.com", "password": "hunter2", "age": 42},
            "notes": ["call +14155552671", "nothing here"],
            "tokens": ["ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"],
            "api_keys": ["k1", "k2"],
            "env": [{"name": "DB_PASSWORD", "value": "s3cret"}, {"name": "MODE", "value": "prod"}],
            "secretName": "db-creds",
            "password_changed_at": "2024-01-01",
        });
        let mut counts = MaskCounts::default();
        m.mask_json(&mut doc, &mut counts);
        assert_eq!(
            doc,
            json!({
                "user": {"email": "a***@example.com", "password": "<masked:secret>", "age": 42},
                "notes": ["call +*********71", "nothing here"],
                "tokens": ["<masked:token>"],
                "api_keys": ["<masked:secret>", "<masked:secret>"],
                "env": [{"name": "DB_PASSWORD", "value": "<masked:secret>"}, {"name": "MODE", "value": "prod"}],
                "secretName": "db-creds",
                "password_changed_at": "2024-01-01",
            })
        );
        assert_eq!(counts.get(DataClass::Secret), 4);
        assert_eq!(counts.get(DataClass::Email), 1);
        assert_eq!(counts.get(DataClass::Phone), 1);
        assert_eq!(counts.get(DataClass::Token), 1);
    }

    #[test]
    fn json_is_untouched_by_a_noop_masker() {
        let mut doc = json!({"password": "hunter2", "email": "a@example.com"});
        let before = doc.clone();
        let mut counts = MaskCounts::default();
        Masker::none().mask_json(&mut doc, &mut counts);
        assert_eq!(doc, before);
        assert!(counts.is_empty());
    }
}
