//! Hostile SQL through the classifier: a classification or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let _ = gatehouse_postgres::classify::classify(sql);
});
