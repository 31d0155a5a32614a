//! Arbitrary bytes as a bearer token: the verifier must refuse without panicking.
#![no_main]

use std::sync::OnceLock;

use gatehouse_identity::{DevIssuer, Verifier};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    verifier: Verifier,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let dev = DevIssuer::load_or_create(dir.path(), "http://127.0.0.1:1", "gatehouse").expect("dev issuer");
        let mut verifier = Verifier::new(Vec::new()).expect("verifier");
        for issuer in dev.issuer_configs() {
            verifier = verifier.with_static_keys(issuer, dev.jwks()).expect("keys");
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Fixture { runtime, verifier, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let f = fixture();
    let _ = f.runtime.block_on(f.verifier.verify(token));
});
