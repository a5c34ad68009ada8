//! Any bytes from a QMP socket through the client: an answer or an error naming the socket,
//! never a panic nor a hang (10 000 cases in every `cargo xtask test`).

use std::{io::Write as _, os::unix::net::UnixStream, path::Path};

use proptest::prelude::*;

use super::Qmp;

/// Noise, and QMP sessions whose lines are each a little wrong.
fn sessions() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(r#"{"QMP": {"version": {}, "capabilities": []}}"#.to_string()),
        Just(r#"{"return": {}}"#.to_string()),
        Just(r#"{"event": "BALLOON_CHANGE", "data": {"actual": 1}}"#.to_string()),
        "[ -~]{0,40}",
        (any::<i64>(), "[a-z_]{0,10}")
            .prop_map(|(n, k)| format!(r#"{{"return": {{"{k}": {n}}}}}"#)),
        ("[A-Za-z]{0,12}", "[ -~]{0,20}")
            .prop_map(|(c, d)| format!(r#"{{"error": {{"class": "{c}", "desc": "{d}"}}}}"#)),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        proptest::collection::vec(line, 0..8).prop_map(|lines| {
            let mut v = lines.join("\n").into_bytes();
            v.push(b'\n');
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn any_session_is_read_without_a_panic(bytes in sessions()) {
        let (ours, mut qemu) = UnixStream::pair().unwrap();
        // Everything QEMU will ever say, then it hangs up: a read past it ends, never waits.
        qemu.write_all(&bytes).unwrap();
        drop(qemu);
        if let Ok(mut q) = Qmp::over(ours, Path::new("/fuzz/102.qmp")) {
            let _ = q.balloon_actual();
            let _ = q.max_memory();
            let _ = q.status();
        }
    }
}
