//! Every method of the structure pass gives the same verdict and fields on any input: the
//! block walks (portable and AVX2) against the byte walk, on token soup that crosses 64-byte
//! block boundaries with strings, escapes, stray backslashes, control bytes and non-ASCII.

use authwatch_event::structure::{scan_structure_with, Method};
use proptest::prelude::*;

fn all_agree(line: &[u8]) {
    let want = format!("{:?}", scan_structure_with(line, Method::ByteWalk));
    for method in [Method::Blocks, Method::BlocksAvx2] {
        let got = format!("{:?}", scan_structure_with(line, method));
        assert_eq!(
            got,
            want,
            "{method:?} on {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

/// Pieces of audit-event-shaped JSON and of what breaks it.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "{", "}", "[", "]", ":", ",", "\"", "\\", "\\\\", "\\\"", " ", "\t", "\r",
            "\"verb\"", "\"verb\":\"get\"", "\"auditID\":\"a\"", "\"kind\":\"Event\"",
            "\"kind\":\"EventList\"", "\"kind\":1", "\"user\":{", "\"username\":\"bob\"",
            "\"objectRef\":{", "\"resource\":\"pods\"", "\"namespace\":\"n\"",
            "\"responseStatus\":{", "\"code\":403", "\"code\":4e2", "null", "\"log\":",
            "\"requestObject\":", "\"requestReceivedTimestamp\":\"2024-01-01T00:00:00Z\"",
            "\"x\\\"verb\":", "\"a\\\\\":", "é", "0123456789abcdefghijklmnopqrstuvwxyz",
        ]).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 1..4),
        1 => Just(vec![0x01]),
        1 => Just(vec![0xff]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn every_method_judges_token_soup_alike(pieces in prop::collection::vec(piece(), 0..120)) {
        let mut line = b"{".to_vec();
        for p in &pieces {
            line.extend_from_slice(p);
        }
        all_agree(&line);
        // And the same soup made into a closed object, so more of it reaches a verdict.
        line.push(b'}');
        all_agree(&line);
    }

    #[test]
    fn every_method_judges_an_event_alike_at_any_cut_and_with_any_byte_changed(
        pad in 0usize..130,
        cut in 0usize..400,
        at in 0usize..400,
        byte in prop::sample::select(b"\"\\{}[]:, \x01\x80\xffa".to_vec()),
    ) {
        let line = format!(
            r#"{{"kind":"Event","auditID":"{}","verb":"get","user":{{"username":"system:anonymous","groups":["a\"b"]}},"objectRef":{{"resource":"secrets","namespace":"kube-system"}},"responseStatus":{{"code":403}},"requestReceivedTimestamp":"2024-01-01T00:00:00Z"}}"#,
            "x".repeat(pad)
        ).into_bytes();
        all_agree(&line);
        all_agree(&line[..cut.min(line.len())]);
        let mut changed = line.clone();
        let at = at.min(changed.len() - 1);
        changed[at] = byte;
        all_agree(&changed);
    }
}
