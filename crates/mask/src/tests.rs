//! Whole-crate properties: masking never panics on arbitrary input, hides every sensitive
//! value it is shown, and is idempotent (a masked value masks to itself and counts nothing).

use std::borrow::Cow;

use crate::{DataClass, MaskCounts, MaskError, Masker};

/// A deterministic xorshift generator: the same inputs on every run, so a failure reproduces.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const SENSITIVE: &[&str] = &[
    "alice@example.com",
    "bob.smith+tag@mail.example.co.uk",
    "4111111111111111",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "3782 822463 10005",
    "6011111111111117",
    "123-45-6789",
    "+1 415-555-2671",
    "+442079460958",
    "GB82WEST12345698765432",
    "GB82 WEST 1234 5698 7654 32",
    "DE89370400440532013000",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "xoxb-1234567890-abcdefghij",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "ghc_Zm9vYmFyYmF6cXV4cXV1eHh5enp5YWJj",
    "Bearer 0123456789abcdefXYZ",
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49\n-----END EC PRIVATE KEY-----",
];

/// Pieces that sit next to sensitive values in real data, or that look almost like them.
const NOISE: &[&str] = &[
    " ",
    "  ",
    "-",
    "--",
    "+",
    "@",
    ".",
    ",",
    ":",
    "*",
    "***",
    "**** ",
    "_",
    "/",
    "\"",
    "'",
    "<",
    ">",
    "\n",
    "\\n",
    "=",
    "é",
    "中文",
    "🦀",
    "\u{0}",
    "\u{200b}",
    "x",
    "Ab",
    "eyJ",
    "AKIA",
    "ghp_",
    "xoxb-",
    "sk_live_",
    "Bearer ",
    "-----BEGIN ",
    "PRIVATE KEY-----",
    "-----END ",
    "0",
    "1",
    "12",
    "123",
    "4111",
    "0000",
    "2024-01-15",
    "10:30:00",
    "3.14",
    "-42",
    "<masked:token>",
    "a***@example.com",
    ".com",
    "example",
    "GB",
    "82",
    "+1",
    "4",
];

pub(crate) fn random_text(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..rng.below(24) {
        match rng.below(10) {
            0 => s.push_str(rng.pick(SENSITIVE)),
            1 => {
                for _ in 0..rng.below(20) {
                    s.push(char::from(b'0' + rng.below(10) as u8));
                }
            }
            2 => {
                let c = char::from_u32(rng.below(0x3000) as u32).unwrap_or('?');
                s.push(c);
            }
            _ => s.push_str(rng.pick(NOISE)),
        }
    }
    s
}

fn random_masker(rng: &mut Rng) -> Masker {
    match rng.below(4) {
        0 => Masker::all(),
        _ => Masker::new(
            DataClass::ALL
                .into_iter()
                .filter(|_| rng.below(2) == 0)
                .collect::<Vec<_>>(),
        ),
    }
}

const COLUMNS: &[&str] = &[
    "notes",
    "email",
    "card_number",
    "ssn",
    "phone",
    "iban",
    "password",
    "private_key",
    "id",
];

#[test]
fn masking_never_panics_and_is_idempotent() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut changed = 0;
    for round in 0..10_000 {
        let input = random_text(&mut rng);
        let masker = random_masker(&mut rng);

        let mut counts = MaskCounts::default();
        let once = masker.mask_text(&input, &mut counts).into_owned();
        changed += usize::from(once != input);
        let mut again = MaskCounts::default();
        let twice = masker.mask_text(&once, &mut again);
        assert_eq!(twice, once, "round {round}: text {input:?}");
        assert!(again.is_empty(), "round {round}: {input:?} counted {again:?} again");

        let column = rng.pick(COLUMNS);
        let mut counts = MaskCounts::default();
        let once = masker.mask_column(column, &input, &mut counts).into_owned();
        let mut again = MaskCounts::default();
        let twice = masker.mask_column(column, &once, &mut again);
        assert_eq!(twice, once, "round {round}: {column} {input:?}");
        assert!(
            again.is_empty(),
            "round {round}: {column} {input:?} counted {again:?} again"
        );

        let mut doc = serde_json::json!({ column: input, "list": [input] });
        masker.mask_json(&mut doc, &mut counts);
        let masked_doc = doc.clone();
        masker.mask_json(&mut doc, &mut again);
        assert_eq!(doc, masked_doc, "round {round}: json {input:?}");

        let mut bytes = input.clone().into_bytes();
        if !bytes.is_empty() {
            let at = rng.below(bytes.len());
            bytes[at] = 0xff;
        }
        let _ = masker.mask_bytes(&bytes, &mut counts);
    }
    // The generator must actually produce sensitive values, or idempotency proves nothing.
    assert!(changed > 1_000, "only {changed} inputs were masked");
}

/// The per-cell form for a resolved column hint masks exactly as `mask_hinted` on the text
/// (and counts the same), leaves bytes that are not UTF-8 alone, and borrows what it does not
/// change.
#[test]
fn hinted_bytes_mask_as_hinted_text() {
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let mut changed = 0;
    for round in 0..10_000 {
        let input = random_text(&mut rng);
        let masker = random_masker(&mut rng);
        let hint = match rng.below(3) {
            0 => Some(DataClass::ALL[rng.below(DataClass::ALL.len())]),
            _ => None,
        };
        let (mut text_counts, mut byte_counts) = (MaskCounts::default(), MaskCounts::default());
        let text = masker.mask_hinted(hint, &input, &mut text_counts);
        let bytes = masker.mask_hinted_bytes(hint, input.as_bytes(), &mut byte_counts);
        assert_eq!(bytes.as_ref(), text.as_bytes(), "round {round}: {hint:?} {input:?}");
        assert_eq!(matches!(bytes, Cow::Borrowed(_)), matches!(text, Cow::Borrowed(_)));
        assert_eq!(byte_counts, text_counts, "round {round}: {hint:?} {input:?}");
        changed += usize::from(matches!(bytes, Cow::Owned(_)));

        let mut invalid = input.into_bytes();
        invalid.push(0xff);
        let mut counts = MaskCounts::default();
        assert!(matches!(
            masker.mask_hinted_bytes(hint, &invalid, &mut counts),
            Cow::Borrowed(_)
        ));
        assert!(counts.is_empty());
    }
    assert!(changed > 1_000, "only {changed} inputs were masked");
}

#[test]
fn every_separated_sensitive_value_is_hidden() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let masker = Masker::all();
    for round in 0..2_000 {
        let mut input = random_text(&mut rng);
        let secret = rng.pick(SENSITIVE);
        input.push_str(" ; ");
        input.push_str(secret);
        input.push_str(" ;");
        input.push_str(&random_text(&mut rng));
        let mut counts = MaskCounts::default();
        let out = masker.mask_text(&input, &mut counts);
        // Only the separated copy must go: a random neighbour may glue another copy into a
        // longer word, where it is rightly not recognised.
        assert!(
            !out.contains(&format!(" ; {secret} ;")),
            "round {round}: {secret:?} leaked from {input:?} as {out:?}"
        );
        assert!(!counts.is_empty());
    }
}

/// Values that are one address and nothing else skip the second round of detection: whatever
/// the address is built from (digits, a phone-like `+` local part, a card in the domain), its
/// masked form must be what every later round leaves alone.
#[test]
fn whole_cell_addresses_are_masked_in_one_round() {
    const LOCAL: &[&str] = &[
        "a",
        "4111111111111111",
        "+14155552671",
        "x.y",
        "AKIA",
        "eyJ",
        "-",
        "_",
        "9",
        "%",
        "*",
    ];
    const DOMAIN: &[&str] = &[
        "example.com",
        "4111111111111111.io",
        "123-45-6789.org",
        "GB82WEST12345698765432.net",
        "a.b.co",
    ];
    let mut rng = Rng(0x5eed_0fce_1100);
    for round in 0..5_000 {
        let mut input = String::new();
        for _ in 0..1 + rng.below(4) {
            input.push_str(rng.pick(LOCAL));
        }
        input.push('@');
        input.push_str(rng.pick(DOMAIN));
        for masker in [Masker::all(), Masker::new([DataClass::Email]), random_masker(&mut rng)] {
            let mut counts = MaskCounts::default();
            let once = masker.mask_text(&input, &mut counts).into_owned();
            let mut again = MaskCounts::default();
            let twice = masker.mask_text(&once, &mut again);
            assert_eq!(twice, once, "round {round}: {input:?}");
            assert!(again.is_empty(), "round {round}: {input:?} counted {again:?} again");
            if masker.masks(DataClass::Email) && counts.get(DataClass::Email) == 1 && counts.total() == 1 {
                let at = input.find('@').unwrap_or(0);
                assert_eq!(once, format!("{}***{}", &input[..1], &input[at..]), "round {round}");
            }
        }
    }
}

#[test]
fn data_class_names_round_trip() {
    for class in DataClass::ALL {
        assert_eq!(DataClass::parse(class.as_str()), Some(class));
        assert_eq!(class.as_str().parse::<DataClass>(), Ok(class));
        assert_eq!(class.to_string(), class.as_str());
        let json = serde_json::to_string(&class).unwrap();
        assert_eq!(json, format!("\"{}\"", class.as_str()));
        assert_eq!(serde_json::from_str::<DataClass>(&json).unwrap(), class);
    }
    assert_eq!(DataClass::parse("PRIVATE_KEY"), Some(DataClass::PrivateKey));
    assert_eq!(DataClass::parse("credit"), None);
    assert_eq!(
        "credit".parse::<DataClass>(),
        Err(MaskError::UnknownClass("credit".to_owned()))
    );
}

#[test]
fn mask_counts_add_merge_and_export() {
    let mut a = MaskCounts::default();
    assert!(a.is_empty());
    a.add(DataClass::Email, 2);
    a.add(DataClass::Secret, 1);
    let mut b = MaskCounts::default();
    b.add(DataClass::Email, 1);
    b.add(DataClass::Card, 3);
    a.merge(&b);
    assert!(!a.is_empty());
    assert_eq!(a.get(DataClass::Email), 3);
    assert_eq!(a.total(), 7);
    assert_eq!(
        a.iter().collect::<Vec<_>>(),
        [(DataClass::Email, 3), (DataClass::Card, 3), (DataClass::Secret, 1)]
    );
    let map = a.to_map();
    assert_eq!(map.len(), 3);
    assert_eq!(map["email"], 3);
    assert_eq!(map["card"], 3);
    assert_eq!(map["secret"], 1);
    a.add(DataClass::Card, u64::MAX);
    assert_eq!(a.get(DataClass::Card), u64::MAX);
}

#[test]
fn masker_reports_its_classes() {
    let m = Masker::new([DataClass::Email, DataClass::Card]);
    assert!(m.masks(DataClass::Email));
    assert!(m.masks(DataClass::Card));
    assert!(!m.masks(DataClass::Ssn));
    assert!(DataClass::ALL.iter().all(|&c| Masker::all().masks(c)));
    assert!(DataClass::ALL.iter().all(|&c| !Masker::none().masks(c)));
    let mut counts = MaskCounts::default();
    assert!(matches!(
        Masker::new([DataClass::Secret]).mask_text("a@example.com", &mut counts),
        Cow::Borrowed(_)
    ));
}
