//! Any bytes through the reader of the Proxmox API's answers: a response, "more needed" or an
//! error, never a panic (10 000 cases in every `cargo xtask test`).

use proptest::prelude::*;

use super::{dechunk, parse_response};

/// Noise, and answers whose head and body are each a little wrong.
fn answers() -> impl Strategy<Value = Vec<u8>> {
    let head = (
        any::<u16>(),
        "[ -~]{0,20}",
        proptest::option::of("[0-9a-z+-]{0,12}"),
        any::<bool>(),
    );
    let body = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (head, body).prop_map(|((status, reason, length, chunked), body)| {
            let mut h = format!("HTTP/1.1 {status} {reason}\r\n");
            if let Some(l) = length {
                h += &format!("Content-Length: {l}\r\n");
            }
            if chunked {
                h += "Transfer-Encoding: chunked\r\n";
            }
            h += "\r\n";
            let mut v = h.into_bytes();
            v.extend(body);
            v
        }),
        (
            "[0-9a-fA-F;x ]{0,24}",
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(size, data)| {
                let mut v = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                v.extend(size.as_bytes());
                v.extend(b"\r\n");
                v.extend(data);
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn any_answer_is_read_without_a_panic(raw in answers(), closed in any::<bool>()) {
        let _ = parse_response(&raw, closed);
        let _ = dechunk(&raw);
    }
}

#[test]
fn a_chunk_size_past_the_cap_is_an_error() {
    let e = dechunk(b"ffffffffffffffffffff\r\n").unwrap_err();
    assert!(e.contains("at most 16 MiB"), "{e}");
}
