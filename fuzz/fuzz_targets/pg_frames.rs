//! Arbitrary client bytes through the wire framer: frames or an error, never a panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_frame)) = gatehouse_postgres::wire::try_frame(&mut buf, 1 << 20) {}
});
