//! Arbitrary lines through the audit chain checker: report, never panic.
#![no_main]

use gatehouse_audit::chain::{Chain, check_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut chain = Chain::new();
    for (i, line) in text.lines().enumerate() {
        let _ = check_line(line);
        if chain.push("segment-000001.jsonl", i + 1, line).is_err() {
            break;
        }
    }
});
