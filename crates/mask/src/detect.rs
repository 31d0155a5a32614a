//! Finds sensitive values in text. Each detector validates what it finds (Luhn, mod-97, issuer
//! prefixes, invalid SSN ranges, word boundaries) so that look-alikes such as order numbers,
//! floats, dates and identifiers stay visible, and one cheap pass over the bytes decides which
//! detectors run at all: most cells hold nothing sensitive and must cost next to nothing.

use std::cmp::Reverse;

use crate::DataClass;

/// One detected value. Its range always starts and ends on ASCII bytes, so it is a valid
/// `str` range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) class: DataClass,
    /// Already in masked form (an email whose local part is `x***`): the span claims its range
    /// so that nothing inside it is detected again, but changes nothing and counts nothing.
    pub(crate) done: bool,
}

/// A set of classes, one bit per `DataClass` in declaration order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct ClassSet(pub(crate) u8);

/// What the single pre-pass learned about a text.
#[derive(Default)]
struct Features {
    digits: usize,
    at: bool,
    /// A card, SSN or phone number may be there: enough digits, and a separator or `+` between
    /// them or one run long enough for an unseparated card.
    chains: bool,
    iban: bool,
    token: bool,
    pem: bool,
}

const DIGIT: u8 = 1;
const AT: u8 = 2;
const TRIGGER: u8 = 4;

/// Byte classes for the pre-pass; `TRIGGER` marks the first byte of a token prefix or PEM header.
static TABLE: [u8; 256] = byte_table();

/// Bytes the pre-pass notes, one bit each in [`SEEN`]: OR-ed over a text in one branch-free
/// pass, they say which detectors can find anything at all, since every match needs certain
/// bytes (a token prefix its letters, a separated card a space or dash, a private key header
/// its dashes and capitals). The digits of the text are counted in the same pass.
mod seen {
    pub(super) const DIGIT: u32 = 1;
    pub(super) const AT: u32 = 1 << 1;
    pub(super) const UPPER: u32 = 1 << 2;
    pub(super) const DASH: u32 = 1 << 3;
    pub(super) const SPACE: u32 = 1 << 4;
    pub(super) const PLUS: u32 = 1 << 5;
    pub(super) const UNDERSCORE: u32 = 1 << 6;
    /// Letters of token prefixes: `eyJ`, `AKIA`/`ASIA`, `gh`, `xox`, `sk_`/`rk_`...
    pub(super) const LOW_E: u32 = 1 << 7;
    pub(super) const LOW_Y: u32 = 1 << 8;
    pub(super) const UP_J: u32 = 1 << 9;
    pub(super) const UP_A: u32 = 1 << 10;
    pub(super) const UP_K: u32 = 1 << 11;
    pub(super) const UP_I: u32 = 1 << 12;
    pub(super) const UP_S: u32 = 1 << 13;
    pub(super) const LOW_G: u32 = 1 << 14;
    pub(super) const LOW_H: u32 = 1 << 15;
    pub(super) const LOW_X: u32 = 1 << 16;
    pub(super) const LOW_O: u32 = 1 << 17;
    pub(super) const LOW_S: u32 = 1 << 18;
    pub(super) const LOW_K: u32 = 1 << 19;
    pub(super) const LOW_R: u32 = 1 << 20;
    /// ... and of `bearer` in either case.
    pub(super) const ANY_B: u32 = 1 << 21;
    pub(super) const ANY_E: u32 = 1 << 22;
    pub(super) const ANY_A: u32 = 1 << 23;
    pub(super) const ANY_R: u32 = 1 << 24;
}

static SEEN: [u32; 256] = seen_table();

impl ClassSet {
    pub(crate) const EMPTY: ClassSet = ClassSet(0);

    pub(crate) fn with(self, class: DataClass) -> Self {
        ClassSet(self.0 | bit(class))
    }

    pub(crate) fn has(self, class: DataClass) -> bool {
        self.0 & bit(class) != 0
    }

    /// True when some class that content detection can find is in the set (`Secret` is only
    /// ever found through names).
    pub(crate) fn has_content_classes(self) -> bool {
        self.0 & !bit(DataClass::Secret) != 0
    }
}

fn bit(class: DataClass) -> u8 {
    1 << (class as u8)
}

const fn seen_table() -> [u32; 256] {
    use seen::*;
    let mut t = [0u32; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let mut bits = 0;
        if b.is_ascii_digit() {
            bits |= DIGIT;
        }
        if b.is_ascii_uppercase() {
            bits |= UPPER;
        }
        bits |= match b {
            b'@' => AT,
            b'-' => DASH,
            b' ' => SPACE,
            b'+' => PLUS,
            b'_' => UNDERSCORE,
            b'e' => LOW_E | ANY_E,
            b'E' => ANY_E,
            b'y' => LOW_Y,
            b'J' => UP_J,
            b'A' => UP_A | ANY_A,
            b'a' => ANY_A,
            b'K' => UP_K,
            b'I' => UP_I,
            b'S' => UP_S,
            b'g' => LOW_G,
            b'h' => LOW_H,
            b'x' => LOW_X,
            b'o' => LOW_O,
            b's' => LOW_S,
            b'k' => LOW_K,
            b'r' => LOW_R | ANY_R,
            b'R' => ANY_R,
            b'b' | b'B' => ANY_B,
            _ => 0,
        };
        t[c] = bits;
        c += 1;
    }
    t
}

const fn byte_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = DIGIT;
        c += 1;
    }
    t[b'@' as usize] = AT;
    let triggers = b"eAgxsrBb-";
    let mut i = 0;
    while i < triggers.len() {
        t[triggers[i] as usize] |= TRIGGER;
        i += 1;
    }
    t
}

/// Appends every value of a class in `classes` found in `s` to `out`, sorted by position and
/// without overlaps (the earliest, then the longest, wins).
pub(crate) fn detect(s: &str, classes: ClassSet, out: &mut Vec<Span>) {
    let b = s.as_bytes();
    // A value that is one address and nothing else (an email column): every other detector
    // could only find something inside it, which the address would claim, so they need not
    // run (nor the pre-pass). No other detector ends a match on an address's alphabetic TLD.
    if classes.has(DataClass::Email)
        && b.len() >= 6
        && b[b.len() - 1].is_ascii_alphabetic()
        && memchr::memchr(b'@', b).is_some()
    {
        let first = out.len();
        emails(b, out);
        if let [only] = &out[first..]
            && only.start == 0
            && only.end == b.len()
        {
            return;
        }
        out.truncate(first);
    }
    detect_all(s, classes, out);
}

/// Whether `detect` can find anything in `b` at all (the pre-pass alone): when it says no,
/// `detect` finds nothing, so a caller may skip the value (and its UTF-8 validation).
pub(crate) fn may_find(b: &[u8], classes: ClassSet) -> bool {
    if !classes.has_content_classes() {
        return false;
    }
    let f = features(b, classes);
    f.at || f.chains
        || f.iban
        || (f.token && classes.has(DataClass::Token))
        || (f.pem && classes.has(DataClass::PrivateKey))
}

/// `detect` running every detector the pre-pass calls for.
fn detect_all(s: &str, classes: ClassSet, out: &mut Vec<Span>) {
    let b = s.as_bytes();
    let f = features(b, classes);
    if f.at && classes.has(DataClass::Email) {
        emails(b, out);
    }
    if f.chains {
        digit_chains(b, classes, out);
    }
    if f.iban && classes.has(DataClass::Iban) {
        ibans(b, out);
    }
    if f.token && classes.has(DataClass::Token) {
        tokens(b, out);
    }
    if f.pem && classes.has(DataClass::PrivateKey) {
        private_keys(s, out);
    }
    if out.len() > 1 {
        out.sort_unstable_by_key(|span| (span.start, Reverse(span.end)));
        let mut end = 0;
        out.retain(|span| {
            let keep = span.start >= end;
            if keep {
                end = span.end;
            }
            keep
        });
    }
}

/// The pre-pass, computing only what the detectors of `classes` need. One branch-free pass
/// counts the digits and notes which bytes occur ([`SEEN`]); a detector whose every match
/// needs a byte that does not occur is ruled out there (an md5 hex string has no separator,
/// `+`, capital or token letter: only a run of 13 digits could make it a card). What is not
/// ruled out is checked as before: the `[A-Z]{2}[0-9]{2}` opening of IBANs, and a byte-by-byte
/// walk to the trigger bytes of token prefixes and PEM headers. The flags are exactly those of
/// the walk alone; the byte checks only spare it where it cannot succeed.
fn features(b: &[u8], classes: ClassSet) -> Features {
    let (digits, seen) = scan(b);
    let any = |bits: u32| seen & bits != 0;
    let all = |bits: u32| seen & bits == bits;
    let mut f = Features {
        digits,
        at: classes.has(DataClass::Email) && any(seen::AT),
        ..Features::default()
    };
    f.chains = digits >= 8
        && (classes.has(DataClass::Card) || classes.has(DataClass::Ssn) || classes.has(DataClass::Phone))
        && (any(seen::PLUS | seen::DASH | seen::SPACE) || has_digit_run(b, 13));
    // `[A-Z]{2}[0-9]{2}` opens every IBAN.
    f.iban = classes.has(DataClass::Iban)
        && f.digits >= 2
        && any(seen::UPPER)
        && b.windows(4).any(|w| {
            w[0].is_ascii_uppercase() && w[1].is_ascii_uppercase() && w[2].is_ascii_digit() && w[3].is_ascii_digit()
        });
    let token = classes.has(DataClass::Token)
        && [
            seen::LOW_E | seen::LOW_Y | seen::UP_J,
            seen::UP_A | seen::UP_K | seen::UP_I,
            seen::UP_A | seen::UP_S | seen::UP_I,
            seen::LOW_G | seen::LOW_H,
            seen::LOW_X | seen::LOW_O,
            seen::LOW_S | seen::LOW_K | seen::UNDERSCORE,
            seen::LOW_R | seen::LOW_K | seen::UNDERSCORE,
            seen::ANY_B | seen::ANY_E | seen::ANY_A | seen::ANY_R,
        ]
        .into_iter()
        .any(all);
    let pem = classes.has(DataClass::PrivateKey) && all(seen::DASH | seen::UPPER | seen::SPACE);
    if token || pem {
        for (i, &c) in b.iter().enumerate() {
            if TABLE[c as usize] & TRIGGER == 0 {
                continue;
            }
            if c == b'-' {
                f.pem |= b[i..].starts_with(b"-----BEGIN ");
            } else if !f.token {
                f.token = token_prefix(b, i);
            }
        }
    }
    f
}

/// The digits of `b` and the [`seen`] bits of its bytes, in one pass without branches.
fn scan(b: &[u8]) -> (usize, u32) {
    let mut seen = 0u32;
    let mut digits = 0usize;
    for &c in b {
        let bits = SEEN[usize::from(c)];
        seen |= bits;
        digits += (bits & seen::DIGIT) as usize;
    }
    (digits, seen)
}

/// Whether `b` holds `n` (at least 1) ASCII digits in a row. Every such run covers one of the
/// positions `n - 1`, `2n - 1`, ...: only the runs through those are measured, and a shorter
/// run covers at most one of them, so each byte is looked at about once at most.
fn has_digit_run(b: &[u8], n: usize) -> bool {
    let mut p = n.saturating_sub(1);
    while p < b.len() {
        if b[p].is_ascii_digit() {
            let left = b[..p].iter().rev().take_while(|c| c.is_ascii_digit()).count();
            let right = b[p + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if left + 1 + right >= n {
                return true;
            }
        }
        p += n.max(1);
    }
    false
}

fn token_prefix(b: &[u8], i: usize) -> bool {
    let rest = &b[i..];
    match b[i] {
        b'e' => rest.starts_with(b"eyJ"),
        b'A' => rest.starts_with(b"AKIA") || rest.starts_with(b"ASIA"),
        b'g' => rest.starts_with(b"gh") || rest.starts_with(b"github_pat_"),
        b'x' => rest.starts_with(b"xox"),
        b's' => rest.starts_with(b"sk_live_"),
        b'r' => rest.starts_with(b"rk_live_"),
        b'B' | b'b' => rest.len() >= 6 && rest[..6].eq_ignore_ascii_case(b"bearer"),
        _ => false,
    }
}

/// Letters, digits, `_` and any non-ASCII byte: what continues a word.
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

fn is_sep(c: u8) -> bool {
    c == b' ' || c == b'-'
}

fn digit_run_end(b: &[u8], from: usize) -> usize {
    let mut end = from;
    while end < b.len() && b[end].is_ascii_digit() {
        end += 1;
    }
    end
}

fn run_end(b: &[u8], from: usize, accept: impl Fn(u8) -> bool) -> usize {
    let mut end = from;
    while end < b.len() && accept(b[end]) {
        end += 1;
    }
    end
}

fn digit_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_digit)
}

// ---------------------------------------------------------------------------------------------
// Email

/// Characters of a local part we recognise (a common subset of RFC 5322's atext, plus `*` so
/// that an already masked address is recognised and left alone).
fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-' | b'*')
}

fn emails(b: &[u8], out: &mut Vec<Span>) {
    let n = b.len();
    let mut floor = 0;
    let mut i = 0;
    while i < n {
        let Some(offset) = memchr::memchr(b'@', &b[i..]) else {
            break;
        };
        let at = i + offset;
        i = at + 1;
        let mut start = at;
        while start > floor && at - start <= 64 && is_local(b[start - 1]) {
            start -= 1;
        }
        if at - start > 64 {
            continue;
        }
        while start < at && b[start] == b'.' {
            start += 1;
        }
        if start == at {
            continue;
        }
        let mut end = run_end(b, at + 1, |c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
        while end > at + 1 && matches!(b[end - 1], b'.' | b'-') {
            end -= 1;
        }
        if b.get(end).is_some_and(|&c| c == b'_' || c >= 0x80) || !valid_domain(&b[at + 1..end]) {
            continue;
        }
        let local = &b[start..at];
        let done = local.len() == 4 && &local[1..] == b"***";
        out.push(Span {
            start,
            end,
            class: DataClass::Email,
            done,
        });
        floor = end;
        i = end;
    }
}

fn valid_domain(d: &[u8]) -> bool {
    if d.len() > 253 {
        return false;
    }
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in d.split(|&c| c == b'.') {
        if label.is_empty() || label.len() > 63 || label.first() == Some(&b'-') || label.last() == Some(&b'-') {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
}

// ---------------------------------------------------------------------------------------------
// Digit chains: cards, SSNs, phone numbers

/// Walks groups of digits joined by single spaces or dashes, trying each group as the start of
/// a phone number (after `+`), an SSN or a card. A group may start a value only where a number
/// can start: not after a letter, `_`, `.` (a decimal), `-` (a sign or a longer dashed code),
/// `*` (the kept digits of a masked value) or after a separator that follows a `*`.
fn digit_chains(b: &[u8], classes: ClassSet, out: &mut Vec<Span>) {
    let n = b.len();
    let mut i = 0;
    while i < n {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        let group_end = digit_run_end(b, start);
        let prev = start.checked_sub(1).map(|p| b[p]);
        let before_prev = start.checked_sub(2).map(|p| b[p]);
        if prev == Some(b'+')
            && classes.has(DataClass::Phone)
            && !before_prev.is_some_and(|c| is_word(c) || c == b'*' || c == b'+')
            && let Some(end) = phone(b, start)
        {
            out.push(Span {
                start: start - 1,
                end,
                class: DataClass::Phone,
                done: false,
            });
            i = end;
            continue;
        }
        let inner_sep = match (prev, before_prev) {
            (Some(p), Some(pp)) if is_sep(p) && pp.is_ascii_digit() => Some(p),
            _ => None,
        };
        let eligible = match (inner_sep, prev) {
            (Some(sep), _) => sep == b' ',
            (None, None) => true,
            (None, Some(p)) => {
                let blocked = is_word(p) || matches!(p, b'.' | b'*' | b'+' | b'-');
                let after_masked = p == b' ' && before_prev == Some(b'*');
                !(blocked || after_masked)
            }
        };
        if eligible {
            if classes.has(DataClass::Ssn)
                && let Some(end) = ssn(b, start, group_end)
            {
                out.push(Span {
                    start,
                    end,
                    class: DataClass::Ssn,
                    done: false,
                });
                i = end;
                continue;
            }
            if classes.has(DataClass::Card)
                && let Some(end) = card(b, start, group_end)
            {
                out.push(Span {
                    start,
                    end,
                    class: DataClass::Card,
                    done: false,
                });
                i = end;
                continue;
            }
        }
        i = group_end;
    }
}

/// Whether a number may end at `end`: not inside a word, not before a decimal point or a dash
/// that continues it, not before `*`.
fn number_ends_at(b: &[u8], end: usize) -> bool {
    match b.get(end) {
        None => true,
        Some(&c) if is_word(c) || c == b'*' => false,
        Some(b'.' | b'-') => !digit_at(b, end + 1),
        Some(_) => true,
    }
}

/// `+` then 8–15 digits (the first not 0), joined by single spaces or dashes.
fn phone(b: &[u8], start: usize) -> Option<usize> {
    if b[start] == b'0' {
        return None;
    }
    let mut digits = 0;
    let mut pos = start;
    loop {
        let end = digit_run_end(b, pos);
        digits += end - pos;
        pos = end;
        if b.get(pos).copied().is_some_and(is_sep) && digit_at(b, pos + 1) && digits <= 15 {
            pos += 1;
        } else {
            break;
        }
    }
    ((8..=15).contains(&digits) && number_ends_at(b, pos)).then_some(pos)
}

/// `AAA-GG-SSSS`, excluding areas 000, 666 and 9xx, group 00 and serial 0000.
fn ssn(b: &[u8], start: usize, group_end: usize) -> Option<usize> {
    if group_end - start != 3
        || b.get(group_end) != Some(&b'-')
        || digit_run_end(b, group_end + 1) != group_end + 3
        || b.get(group_end + 3) != Some(&b'-')
        || digit_run_end(b, group_end + 4) != group_end + 8
    {
        return None;
    }
    let end = group_end + 8;
    if !number_ends_at(b, end) {
        return None;
    }
    let num = |from: usize, to: usize| b[from..to].iter().fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'));
    let area = num(start, start + 3);
    let group = num(start + 4, start + 6);
    let serial = num(start + 7, end);
    (area != 0 && area != 666 && area < 900 && group != 0 && serial != 0).then_some(end)
}

/// 13–19 digits, either in one group or in groups of 4 (the last 1–4; Amex 4-6-5 and Diners
/// 4-6-4) joined by one kind of separator; Luhn-valid with a known issuer prefix. The longest
/// valid prefix of a chain of groups wins, so a trailing CVV or expiry does not hide the card.
fn card(b: &[u8], start: usize, group_end: usize) -> Option<usize> {
    let first = group_end - start;
    if first >= 13 {
        return (first <= 19 && number_ends_at(b, group_end) && valid_card(&b[start..group_end])).then_some(group_end);
    }
    if first != 4 {
        return None;
    }
    let sep = *b.get(group_end).filter(|&&c| is_sep(c))?;
    let mut lens = [0usize; 6];
    let mut ends = [0usize; 6];
    lens[0] = 4;
    ends[0] = group_end;
    let mut count = 1;
    let mut pos = group_end;
    while count < lens.len() && b.get(pos) == Some(&sep) && digit_at(b, pos + 1) {
        let end = digit_run_end(b, pos + 1);
        lens[count] = end - pos - 1;
        ends[count] = end;
        count += 1;
        pos = end;
    }
    let mut digits = [0u8; 19];
    for k in (2..=count).rev() {
        let groups = &lens[..k];
        let total: usize = groups.iter().sum();
        if !(13..=19).contains(&total) || !card_groups(groups) || !number_ends_at(b, ends[k - 1]) {
            continue;
        }
        let mut len = 0;
        for &c in &b[start..ends[k - 1]] {
            if c.is_ascii_digit() {
                digits[len] = c;
                len += 1;
            }
        }
        if valid_card(&digits[..len]) {
            return Some(ends[k - 1]);
        }
    }
    None
}

fn card_groups(groups: &[usize]) -> bool {
    match groups {
        [4, 6, 5] | [4, 6, 4] => true,
        [init @ .., last] => init.iter().all(|&g| g == 4) && (1..=4).contains(last),
        [] => false,
    }
}

/// `digits` are ASCII digits, 13 to 19 of them.
fn valid_card(digits: &[u8]) -> bool {
    issuer_accepts(digits) && luhn(digits)
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &c) in digits.iter().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

fn issuer_accepts(digits: &[u8]) -> bool {
    let n = digits.len();
    let prefix = |k: usize| digits[..k].iter().fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'));
    let (p2, p3, p4) = (prefix(2), prefix(3), prefix(4));
    let long = (16..=19).contains(&n);
    match digits[0] {
        // Visa
        b'4' => matches!(n, 13 | 16 | 19),
        // Mastercard 51–55, Maestro 50 and 56–58
        b'5' => ((51..=55).contains(&p2) && n == 16) || (p2 == 50 || (56..=58).contains(&p2)),
        // Mastercard 2221–2720, Mir 2200–2204
        b'2' => ((2221..=2720).contains(&p4) && n == 16) || ((2200..=2204).contains(&p4) && long),
        // Amex 34/37, Diners 300–305/36/38/39, JCB 3528–3589
        b'3' => {
            ((p2 == 34 || p2 == 37) && n == 15)
                || (((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39)) && n >= 14)
                || ((3528..=3589).contains(&p4) && long)
        }
        // Discover 6011/644–649/65, UnionPay 62, Maestro 63/67
        b'6' => ((p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || p2 == 62) && long) || matches!(p2, 63 | 67),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// IBAN

fn ibans(b: &[u8], out: &mut Vec<Span>) {
    let mut i = 0;
    while i + 4 <= b.len() {
        let opens = b[i].is_ascii_uppercase()
            && b[i + 1].is_ascii_uppercase()
            && b[i + 2].is_ascii_digit()
            && b[i + 3].is_ascii_digit()
            && (i == 0 || !(is_word(b[i - 1]) || b[i - 1] == b'*'));
        if opens && let Some(end) = iban_at(b, i) {
            out.push(Span {
                start: i,
                end,
                class: DataClass::Iban,
                done: false,
            });
            i = end;
            continue;
        }
        i += 1;
    }
}

fn is_iban_char(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit()
}

/// An IBAN of exactly its country's length, compact or in groups of 4 joined by single spaces.
fn iban_at(b: &[u8], start: usize) -> Option<usize> {
    let len = iban_length(b[start], b[start + 1])?;
    let mut chars = [0u8; 34];
    let mut count = 4;
    chars[..4].copy_from_slice(&b[start..start + 4]);
    let mut pos = start + 4;
    if b.get(pos) == Some(&b' ') {
        while count < len {
            if b.get(pos) != Some(&b' ') {
                return None;
            }
            let take = (len - count).min(4);
            let group = b.get(pos + 1..pos + 1 + take)?;
            if !group.iter().all(|&c| is_iban_char(c)) {
                return None;
            }
            chars[count..count + take].copy_from_slice(group);
            count += take;
            pos += 1 + take;
        }
        let continues = b.get(pos) == Some(&b' ') && b.get(pos + 1).is_some_and(|&c| is_iban_char(c));
        if continues {
            return None;
        }
    } else {
        let end = run_end(b, start, is_iban_char);
        if end - start != len {
            return None;
        }
        chars[..len].copy_from_slice(&b[start..end]);
        pos = end;
    }
    if b.get(pos).is_some_and(|&c| is_word(c) || c == b'*') {
        return None;
    }
    let chars = &chars[..len];
    let mut rem = 0u32;
    for &c in chars[4..].iter().chain(&chars[..4]) {
        rem = if c.is_ascii_digit() {
            (rem * 10 + u32::from(c - b'0')) % 97
        } else {
            (rem * 100 + u32::from(c - b'A') + 10) % 97
        };
    }
    (rem == 1).then_some(pos)
}

/// IBAN length per country (SWIFT IBAN registry).
fn iban_length(a: u8, b: u8) -> Option<usize> {
    Some(match &[a, b] {
        b"NO" => 15,
        b"BE" => 16,
        b"DK" | b"FI" | b"FO" | b"GL" | b"NL" | b"SD" | b"FK" => 18,
        b"MK" | b"SI" => 19,
        b"AT" | b"BA" | b"EE" | b"KZ" | b"LT" | b"LU" | b"XK" | b"MN" => 20,
        b"CH" | b"HR" | b"LI" | b"LV" => 21,
        b"BG" | b"BH" | b"CR" | b"DE" | b"GB" | b"GE" | b"IE" | b"ME" | b"RS" | b"VA" => 22,
        b"AE" | b"GI" | b"IL" | b"IQ" | b"OM" | b"SO" | b"TL" => 23,
        b"AD" | b"CZ" | b"ES" | b"MD" | b"PK" | b"RO" | b"SA" | b"SE" | b"SK" | b"TN" | b"VG" => 24,
        b"LY" | b"PT" | b"ST" => 25,
        b"IS" | b"TR" => 26,
        b"BI" | b"DJ" | b"FR" | b"GR" | b"IT" | b"MC" | b"MR" | b"SM" => 27,
        b"AL" | b"AZ" | b"BY" | b"CY" | b"DO" | b"GT" | b"HU" | b"LB" | b"NI" | b"PL" | b"SV" => 28,
        b"BR" | b"EG" | b"PS" | b"QA" | b"UA" => 29,
        b"JO" | b"KW" | b"MU" | b"YE" => 30,
        b"MT" | b"SC" => 31,
        b"LC" => 32,
        b"RU" => 33,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Tokens

fn tokens(b: &[u8], out: &mut Vec<Span>) {
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let opens = TABLE[c as usize] & TRIGGER != 0
            && c != b'-'
            && (i == 0 || !(is_word(b[i - 1]) || matches!(b[i - 1], b'-' | b'.')));
        if opens && let Some((start, end)) = token_at(b, i) {
            out.push(Span {
                start,
                end,
                class: DataClass::Token,
                done: false,
            });
            i = end;
            continue;
        }
        i += 1;
    }
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// A run of `accept` bytes after `prefix` at `start`, at least `min` long and ending a word.
fn prefixed(b: &[u8], start: usize, prefix: &[u8], min: usize, accept: impl Fn(u8) -> bool) -> Option<(usize, usize)> {
    if !b[start..].starts_with(prefix) {
        return None;
    }
    let body = start + prefix.len();
    let end = run_end(b, body, &accept);
    let ends_word = !b.get(end).is_some_and(|&c| is_word(c) || c == b'-');
    (end - body >= min && ends_word).then_some((start, end))
}

fn token_at(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    match b[i] {
        b'e' => jwt(b, i),
        b'A' => prefixed(b, i, b"AKIA", 16, is_iban_char)
            .or_else(|| prefixed(b, i, b"ASIA", 16, is_iban_char))
            .filter(|&(s, e)| e - s == 20),
        b'g' => {
            let classic = matches!(b.get(i + 2), Some(b'p' | b'o' | b'u' | b's' | b'r')) && b.get(i + 3) == Some(&b'_');
            if classic {
                prefixed(b, i, &b[i..i + 4], 30, alnum)
            } else {
                prefixed(b, i, b"github_pat_", 22, |c| alnum(c) || c == b'_')
                    .or_else(|| prefixed(b, i, b"ghc_", 24, is_b64url))
            }
        }
        b'x' => {
            let kind = b.get(i + 3).is_some_and(|c| b"abprs".contains(c));
            if kind && b.get(i + 4) == Some(&b'-') {
                prefixed(b, i, &b[i..i + 5], 10, |c| alnum(c) || c == b'-')
            } else {
                None
            }
        }
        b's' => prefixed(b, i, b"sk_live_", 16, alnum),
        b'r' => prefixed(b, i, b"rk_live_", 16, alnum),
        b'B' | b'b' => bearer(b, i),
        _ => None,
    }
}

/// A JWS or JWE in compact form: a base64url header opening with `eyJ` (`{"`), then two or four
/// more dot-separated segments (the last may be empty for unsigned tokens).
fn jwt(b: &[u8], start: usize) -> Option<(usize, usize)> {
    if !b[start..].starts_with(b"eyJ") {
        return None;
    }
    let header_end = run_end(b, start, is_b64url);
    if header_end - start < 10 {
        return None;
    }
    let mut pos = header_end;
    let mut segments = 1;
    let mut second = 0;
    while segments < 5 && b.get(pos) == Some(&b'.') {
        let end = run_end(b, pos + 1, is_b64url);
        if segments == 1 {
            second = end - pos - 1;
        }
        segments += 1;
        if end == pos + 1 && segments > 3 {
            // A sentence's full stop after a complete token.
            segments -= 1;
            break;
        }
        pos = end;
    }
    let ends_word = !b.get(pos).is_some_and(|&c| is_word(c) || c == b'-');
    (segments >= 3 && second >= 2 && ends_word).then_some((start, pos))
}

/// `Bearer <credential>` (scheme case-insensitive): the span is the credential alone. Prose
/// ("bearer instruments") is excluded by requiring 16+ characters, not all lowercase letters.
fn bearer(b: &[u8], i: usize) -> Option<(usize, usize)> {
    if !b.get(i..i + 6)?.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = run_end(b, i + 6, |c| c == b' ' || c == b'\t');
    if start == i + 6 || start - (i + 6) > 4 {
        return None;
    }
    let body = run_end(b, start, |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'~' | b'+' | b'/' | b'-')
    });
    let end = run_end(b, body, |c| c == b'=');
    let token = &b[start..end];
    let plausible = token.len() >= 16 && token.iter().any(|c| !c.is_ascii_lowercase());
    let ends_word = !b.get(end).is_some_and(|&c| is_word(c));
    (plausible && ends_word).then_some((start, end))
}

// ---------------------------------------------------------------------------------------------
// Private keys

/// `-----BEGIN <label>PRIVATE KEY-----` through the matching END line. A block without an END
/// line (a truncated value) is masked through the run of PEM characters that follows, which
/// stops at a quote so a key inside a JSON string does not swallow the rest of the document.
fn private_keys(s: &str, out: &mut Vec<Span>) {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(offset) = s.get(from..).and_then(|rest| rest.find("-----BEGIN ")) {
        let start = from + offset;
        let label_start = start + "-----BEGIN ".len();
        let Some(close) = s.get(label_start..).and_then(|rest| rest.find("-----")) else {
            break;
        };
        let label = &b[label_start..label_start + close];
        let is_key = label.len() <= 40
            && label.ends_with(b"PRIVATE KEY")
            && label
                .iter()
                .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' ');
        if !is_key {
            from = label_start;
            continue;
        }
        let body = label_start + close + 5;
        let end_line = s
            .get(body..)
            .and_then(|rest| rest.find("-----END "))
            .map(|e| body + e + "-----END ".len());
        let end = end_line
            .and_then(|e| {
                let close = s.get(e..)?.find("-----")?;
                (close <= 40).then_some(e + close + 5)
            })
            .unwrap_or_else(|| {
                run_end(b, body, |c| {
                    c.is_ascii_alphanumeric()
                        || matches!(
                            c,
                            b'+' | b'/' | b'=' | b'\r' | b'\n' | b'\t' | b' ' | b':' | b',' | b'-' | b'\\'
                        )
                })
            });
        out.push(Span {
            start,
            end,
            class: DataClass::PrivateKey,
            done: false,
        });
        from = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> ClassSet {
        DataClass::ALL.into_iter().fold(ClassSet::EMPTY, ClassSet::with)
    }

    /// The detected values of `s`, as (class, text).
    fn found(s: &str) -> Vec<(DataClass, &str)> {
        let mut spans = Vec::new();
        detect(s, all(), &mut spans);
        spans
            .iter()
            .map(|span| (span.class, &s[span.start..span.end]))
            .collect()
    }

    fn only(s: &str, class: DataClass) -> Vec<&str> {
        found(s)
            .into_iter()
            .filter(|&(c, _)| c == class)
            .map(|(_, text)| text)
            .collect()
    }

    #[test]
    fn emails_are_found_with_their_whole_domain() {
        assert_eq!(only("alice@example.com", DataClass::Email), ["alice@example.com"]);
        assert_eq!(
            only("To: <bob.smith+tag@mail.example.co.uk>.", DataClass::Email),
            ["bob.smith+tag@mail.example.co.uk"]
        );
        assert_eq!(only("a@b.io, c_d@e-f.org", DataClass::Email), ["a@b.io", "c_d@e-f.org"]);
    }

    #[test]
    fn email_look_alikes_are_not_emails() {
        for s in [
            "user@localhost",
            "@example.com",
            "a@b.c",
            "a@example.c0m",
            "x@-bad.com",
            "git@github",
            "price @ 5.00",
            "a@.com",
            "a@example.com_x",
        ] {
            assert!(only(s, DataClass::Email).is_empty(), "{s}");
        }
    }

    #[test]
    fn masked_emails_are_marked_done() {
        let mut spans = Vec::new();
        detect("a***@example.com", all(), &mut spans);
        assert_eq!(spans.len(), 1);
        assert!(spans[0].done);
    }

    #[test]
    fn cards_are_found_in_common_shapes() {
        for (s, card) in [
            ("4111111111111111", "4111111111111111"),
            ("card 4111 1111 1111 1111 exp", "4111 1111 1111 1111"),
            ("5500-0000-0000-0004", "5500-0000-0000-0004"),
            ("amex 3782 822463 10005.", "3782 822463 10005"),
            ("378282246310005", "378282246310005"),
            ("6011111111111117", "6011111111111117"),
            ("2221000000000009", "2221000000000009"),
            ("4111 1111 1111 1111 123", "4111 1111 1111 1111"),
            ("qty 12 4111 1111 1111 1111", "4111 1111 1111 1111"),
            ("4222222222222", "4222222222222"),
            ("\"4111111111111111\",", "4111111111111111"),
        ] {
            assert_eq!(only(s, DataClass::Card), [card], "{s}");
        }
    }

    #[test]
    fn card_look_alikes_are_not_cards() {
        for s in [
            // Luhn fails
            "4111111111111112",
            "1234 5678 9012 3456",
            // Luhn passes, no issuer
            "0000000000000000",
            "9111111111111119",
            // inside words, decimals, signed, dashed codes
            "x4111111111111111",
            "4111111111111111x",
            "0.4111111111111111",
            "4111111111111111.5",
            "-4111111111111111",
            "ORD-2024-4111111111111111",
            // too long, odd grouping
            "41111111111111111111",
            "411 1111 1111 1111 1",
            "4111-1111-1111-1111-1111",
            // dates and times
            "2024-01-15 10:30:00.123456",
            // the kept digits of a masked card
            "**** **** **** 4111 1111 1111 1111",
        ] {
            assert!(only(s, DataClass::Card).is_empty(), "{s}");
        }
    }

    #[test]
    fn random_sixteen_digit_numbers_are_rarely_cards() {
        // 1000 pseudo-random 16-digit order numbers that fail Luhn: none is a card.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut checked = 0;
        while checked < 1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let s = format!("{:016}", x % 10_000_000_000_000_000);
            if luhn(s.as_bytes()) {
                continue;
            }
            assert!(only(&s, DataClass::Card).is_empty(), "{s}");
            checked += 1;
        }
    }

    #[test]
    fn ssns_are_found_and_invalid_ranges_skipped() {
        assert_eq!(only("SSN: 123-45-6789.", DataClass::Ssn), ["123-45-6789"]);
        assert_eq!(only("078-05-1120 x", DataClass::Ssn), ["078-05-1120"]);
        for s in [
            "000-45-6789",
            "666-45-6789",
            "900-45-6789",
            "123-00-6789",
            "123-45-0000",
            "123456789",
            "123 45 6789",
            "1123-45-6789",
            "123-45-67890",
            "123-45-6789-1",
            "2024-123-45-6789",
            "a123-45-6789",
        ] {
            assert!(only(s, DataClass::Ssn).is_empty(), "{s}");
        }
    }

    #[test]
    fn e164_phones_are_found() {
        for (s, phone) in [
            ("+14155552671", "+14155552671"),
            ("call +1 415-555-2671 now", "+1 415-555-2671"),
            ("+44 20 7946 0958", "+44 20 7946 0958"),
            ("(+4930123456)", "+4930123456"),
        ] {
            assert_eq!(only(s, DataClass::Phone), [phone], "{s}");
        }
    }

    #[test]
    fn phone_look_alikes_are_not_phones() {
        for s in [
            "14155552671",
            "+1234567",
            "+1234567890123456",
            "+0123456789",
            "2024-01-15T10:00:00+05:30",
            "1+23456789012",
            "a+123456789",
            "+12345678.5",
            "+1  415 555 2671",
        ] {
            assert!(only(s, DataClass::Phone).is_empty(), "{s}");
        }
    }

    #[test]
    fn ibans_are_found_compact_and_grouped() {
        for (s, iban) in [
            ("GB82WEST12345698765432", "GB82WEST12345698765432"),
            ("iban: GB82 WEST 1234 5698 7654 32.", "GB82 WEST 1234 5698 7654 32"),
            ("DE89370400440532013000", "DE89370400440532013000"),
            ("NO9386011117947", "NO9386011117947"),
            ("FR1420041010050500013M02606", "FR1420041010050500013M02606"),
        ] {
            assert_eq!(only(s, DataClass::Iban), [iban], "{s}");
        }
    }

    #[test]
    fn iban_look_alikes_are_not_ibans() {
        for s in [
            // check digits wrong
            "GB83WEST12345698765432",
            // wrong length for the country
            "GB82WEST1234569876543",
            "DE8937040044053201300000",
            // unknown country, inside a word, lowercase
            "ZZ82WEST12345698765432",
            "XGB82WEST12345698765432",
            "gb82west12345698765432",
            "GB82 WEST 1234 5698 7654 32 10",
        ] {
            assert!(only(s, DataClass::Iban).is_empty(), "{s}");
        }
    }

    #[test]
    fn tokens_are_found() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        for (s, token) in [
            (jwt.to_owned(), jwt),
            (format!("Authorization: Bearer {jwt}"), jwt),
            ("key AKIAIOSFODNN7EXAMPLE".to_owned(), "AKIAIOSFODNN7EXAMPLE"),
            ("ASIAIOSFODNN7EXAMPLE".to_owned(), "ASIAIOSFODNN7EXAMPLE"),
            (
                "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789".to_owned(),
                "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
            ),
            (
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz".to_owned(),
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
            ),
            ("xoxb-1234567890-abcdefghij".to_owned(), "xoxb-1234567890-abcdefghij"),
            (
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc".to_owned(),
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            ),
            (
                "ghc_Zm9vYmFyYmF6cXV4cXV1eHh5enp5-_abcd".to_owned(),
                "ghc_Zm9vYmFyYmF6cXV4cXV1eHh5enp5-_abcd",
            ),
            ("bearer 0123456789abcdefXYZ".to_owned(), "0123456789abcdefXYZ"),
        ] {
            assert_eq!(only(&s, DataClass::Token), [token], "{s}");
        }
    }

    #[test]
    fn token_look_alikes_are_not_tokens() {
        for s in [
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJ.eyJ.x",
            "AKIAIOSFODNN7EXAMPL",
            "AKIAIOSFODNN7EXAMPLE1",
            "xAKIAIOSFODNN7EXAMPLE",
            "ghp_short",
            "ghost_in_the_machine_with_a_long_name_here",
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "the bearer instrumentalization",
            "Bearer <masked:token>",
            "xoxz-1234567890-abcdefghij",
            "ghc_short",
        ] {
            assert!(only(s, DataClass::Token).is_empty(), "{s}");
        }
    }

    #[test]
    fn private_key_blocks_are_found_through_end() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\nKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END RSA PRIVATE KEY-----";
        let s = format!("before\n{key}\nafter");
        assert_eq!(only(&s, DataClass::PrivateKey), [key]);
        let truncated = "{\"k\":\"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\",\"n\":1}";
        assert_eq!(
            only(truncated, DataClass::PrivateKey),
            ["-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg"]
        );
        assert!(
            only(
                "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----",
                DataClass::PrivateKey
            )
            .is_empty()
        );
        assert!(
            only(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
                DataClass::PrivateKey
            )
            .is_empty()
        );
    }

    #[test]
    fn overlaps_keep_the_earliest_longest_span() {
        assert_eq!(
            found("4111111111111111@example.com"),
            [(DataClass::Email, "4111111111111111@example.com")]
        );
        assert_eq!(
            found("4111111111111111 a@example.com +14155552671"),
            [
                (DataClass::Card, "4111111111111111"),
                (DataClass::Email, "a@example.com"),
                (DataClass::Phone, "+14155552671"),
            ]
        );
    }

    #[test]
    fn only_requested_classes_are_detected() {
        let mut spans = Vec::new();
        detect(
            "a@example.com 4111111111111111",
            ClassSet::EMPTY.with(DataClass::Card),
            &mut spans,
        );
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].class, DataClass::Card);
    }

    #[test]
    fn whole_cell_addresses_skip_the_other_detectors_with_the_same_result() {
        let values = [
            "user1@example.com",
            "4111111111111111@example.com",
            "+14155552671@example.com",
            "a@4111111111111111.io",
            "x@123-45-6789.org",
            "GB82WEST12345698765432@bank.co",
            "AKIAIOSFODNN7EXAMPLE@aws.com",
            "eyJhbGciOiJIUzI1NiJ9@jwt.io",
            "u***@example.com",
            "a@b.c",
            "not an address@example.com",
            "4111111111111111 a@example.com",
            "a@example.com 4111111111111111",
            "a@example.com1",
        ];
        for classes in [
            all(),
            ClassSet::EMPTY.with(DataClass::Email),
            ClassSet::EMPTY.with(DataClass::Card),
        ] {
            for value in values {
                let (mut fast, mut full) = (Vec::new(), Vec::new());
                detect(value, classes, &mut fast);
                detect_all(value, classes, &mut full);
                assert_eq!(fast, full, "{value}");
            }
        }
    }

    /// The pre-pass before the byte checks: the digit count, `@`, the IBAN opening, and the
    /// walk to every trigger byte.
    fn walked_features(b: &[u8], classes: ClassSet) -> Features {
        let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
        let mut f = Features {
            digits,
            at: classes.has(DataClass::Email) && b.contains(&b'@'),
            chains: digits >= 8
                && (classes.has(DataClass::Card) || classes.has(DataClass::Ssn) || classes.has(DataClass::Phone)),
            iban: classes.has(DataClass::Iban)
                && digits >= 2
                && b.windows(4).any(|w| {
                    w[0].is_ascii_uppercase()
                        && w[1].is_ascii_uppercase()
                        && w[2].is_ascii_digit()
                        && w[3].is_ascii_digit()
                }),
            ..Features::default()
        };
        if classes.has(DataClass::Token) || classes.has(DataClass::PrivateKey) {
            for (i, &c) in b.iter().enumerate() {
                if TABLE[c as usize] & TRIGGER == 0 {
                    continue;
                }
                if c == b'-' {
                    f.pem |= b[i..].starts_with(b"-----BEGIN ");
                } else if !f.token {
                    f.token = token_prefix(b, i);
                }
            }
        }
        f
    }

    /// Every detector the walk alone would run, for the same spans.
    fn detect_walked(s: &str, classes: ClassSet) -> Vec<Span> {
        let b = s.as_bytes();
        let f = walked_features(b, classes);
        let mut out = Vec::new();
        if f.at && classes.has(DataClass::Email) {
            emails(b, &mut out);
        }
        if f.chains {
            digit_chains(b, classes, &mut out);
        }
        if f.iban && classes.has(DataClass::Iban) {
            ibans(b, &mut out);
        }
        if f.token && classes.has(DataClass::Token) {
            tokens(b, &mut out);
        }
        if f.pem && classes.has(DataClass::PrivateKey) {
            private_keys(s, &mut out);
        }
        out.sort_unstable_by_key(|span| (span.start, Reverse(span.end)));
        let mut end = 0;
        out.retain(|span| {
            let keep = span.start >= end;
            if keep {
                end = span.end;
            }
            keep
        });
        out
    }

    #[test]
    fn byte_checks_rule_out_only_detectors_that_find_nothing() {
        let fixed = [
            "c4ca4238a0b923820dcc509a6f75849b",
            "4222222222222",
            "(4222222222222)",
            "123456789012",
            "4111111111111111",
            "4111 1111 1111 1111",
            "+14155552671",
            "123-45-6789",
            "GB82WEST12345698765432",
            "xyzb-1234567890abc eyJ",
            "xoxb-1234567890-abcdefghij",
            "BEARER 0123456789ABCDEFXYZ",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "rk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "AKIAIOSFODNN7EXAMPLE",
            "ASIAIOSFODNN7EXAMPLE",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----",
            "user1@example.com",
        ];
        let mut rng = crate::tests::Rng(0x2545_f491_4f6c_dd1d);
        let random: Vec<String> = (0..20_000).map(|_| crate::tests::random_text(&mut rng)).collect();
        let masks = [
            all(),
            ClassSet::EMPTY.with(DataClass::Token),
            ClassSet::EMPTY.with(DataClass::PrivateKey),
            ClassSet::EMPTY.with(DataClass::Card).with(DataClass::Iban),
        ];
        let mut found = 0;
        for s in fixed.iter().copied().chain(random.iter().map(String::as_str)) {
            for classes in masks {
                let mut spans = Vec::new();
                detect_all(s, classes, &mut spans);
                assert_eq!(spans, detect_walked(s, classes), "{s:?}");
                assert!(spans.is_empty() || may_find(s.as_bytes(), classes), "{s:?}");
                found += spans.len();
            }
        }
        assert!(found > 10_000, "the inputs hold sensitive values ({found} found)");
    }
}
