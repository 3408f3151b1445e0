//! The direct path's own HTTP/1 parts on arbitrary bytes: `direct::parse`
//! takes a head or gives it back whole, never panics; the chunked-body
//! scanner finds the same end whatever pieces the body arrives in.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mapped = [http::HeaderName::from_static("x-user")];
    match authgate::testing::direct::parse(bytes::BytesMut::from(data), &mapped) {
        Ok(_) => {}
        Err(back) => assert_eq!(&back[..], data, "a refused head must come back whole"),
    }
    let whole = authgate::testing::direct::chunked_end(data, data.len());
    for piece in [1, 2, 3, 7, 64] {
        let split = authgate::testing::direct::chunked_end(data, piece);
        assert_eq!(whole, split, "piece {piece}");
    }
});
