//! Masking arbitrary text never panics and is idempotent.
#![no_main]

use gatehouse_mask::{MaskCounts, Masker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let masker = Masker::all();
    let mut counts = MaskCounts::default();
    let once = masker.mask_text(text, &mut counts).into_owned();
    let mut again = MaskCounts::default();
    let twice = masker.mask_text(&once, &mut again);
    assert_eq!(once, twice, "masking is idempotent");
});
