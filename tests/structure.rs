//! The structure pass reads the top-level fields of a plain event exactly as the decoder
//! does (`scan_structure` against `decode`), on every line of the shared corpus and on
//! hostile variants of each: escaped text, duplicate keys, nulls, wrong types, wrappers and
//! lists. A field the pass reports must be the decoder's; where it cannot tell it says so
//! (`Unknown`), and it never calls a wrapper or a list a plain event.

use std::io::Read;

use authwatch_event::event::{check_structure, decode, Decoded};
use authwatch_event::structure::{scan_structure, scan_structure_with, Method, Scalar};
use authwatch_tests::corpus;

fn corpus_lines() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for name in [
        "audit2rbac_demo.jsonl",
        "falco_k8s_audit.jsonl",
        "hkerma_audit_logs.jsonl.gz",
    ] {
        let path = corpus(name);
        let mut bytes = Vec::new();
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        if name.ends_with(".gz") {
            flate2::read::MultiGzDecoder::new(file)
                .read_to_end(&mut bytes)
                .unwrap();
        } else {
            std::io::BufReader::new(file)
                .read_to_end(&mut bytes)
                .unwrap();
        }
        out.extend(
            bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    assert!(out.len() > 1000, "corpus too small: {}", out.len());
    out
}

/// Hostile and unusual forms of one line.
fn variants(line: &[u8]) -> Vec<Vec<u8>> {
    let s = String::from_utf8_lossy(line).into_owned();
    let mut v = vec![line.to_vec()];
    let mut edit = |from: &str, to: &str| {
        if s.contains(from) {
            v.push(s.replacen(from, to, 1).into_bytes());
        }
    };
    edit("\"verb\":\"", "\"verb\":\"\\u0067");
    edit("\"verb\":\"get\"", "\"verb\":\"g\\u0065t\"");
    edit("\"verb\":", "\"verb\":\"create\",\"verb\":");
    edit("\"verb\":\"", "\"verb\" : \"");
    edit("\"objectRef\":{", "\"objectRef\":null,\"x\":{");
    edit(
        "\"objectRef\":{",
        "\"objectRef\":{\"resource\":\"pods\"},\"objectRef\":{",
    );
    edit("\"objectRef\":{", "\"objectRef\":[{");
    edit("\"resource\":\"", "\"resource\":\"\\/");
    edit("\"code\":", "\"code\":\"403\",\"x\":");
    edit("\"code\":403", "\"code\":403.0");
    edit("\"code\":403", "\"code\":4e2");
    edit("\"code\":", "\"code\":null,\"y\":");
    edit("\"user\":{", "\"user\":\"bob\",\"z\":{");
    edit("\"username\":\"", "\"username\":null,\"u\":\"");
    // Non-ASCII text (valid UTF-8) in a field the pass reads.
    edit("\"username\":\"", "\"username\":\"jörg-山田-");
    edit(
        "\"requestReceivedTimestamp\":\"",
        "\"requestReceivedTimestamp\":\"\\u0032",
    );
    edit("\"requestObject\":{", "\"requestObject\":null,\"ro\":{");
    edit(
        "\"requestObject\":{",
        "\"requestObject\" : {\"a\":1},\"requestObject\":{",
    );
    // A body that holds the same keys nested deeper: never the event's own.
    edit(
        "\"verb\":",
        "\"requestObject\":{\"verb\":\"delete\",\"objectRef\":{\"resource\":\"secrets\"},\"code\":401,\"requestReceivedTimestamp\":\"2099-01-01T00:00:00Z\"},\"verb\":",
    );
    let wrapped = serde_json::json!({"log": s, "host": "h"}).to_string();
    v.push(wrapped.into_bytes());
    v.push(format!("{{\"kind\":\"EventList\",\"items\":[{s}]}}").into_bytes());
    v
}

#[test]
fn top_fields_are_the_decoders_on_every_corpus_line_and_hostile_variant() {
    let mut plain = 0usize;
    let mut read = 0usize;
    for line in corpus_lines() {
        for v in variants(&line) {
            let text = String::from_utf8_lossy(&v).into_owned();
            let scanned = scan_structure(&v);
            // The verdict is check_structure's.
            assert_eq!(
                scanned.as_ref().map(|_| ()).map_err(|e| e.reason()),
                check_structure(&v).map_err(|e| e.reason()),
                "{text}"
            );
            let Ok(Some(top)) = scanned else { continue };
            plain += 1;
            match decode(&v) {
                Ok(Decoded::Event(ev)) => {
                    if let Some(what) = top.disagreement(&ev) {
                        panic!("{what}: scanned {top:?}\n{text}");
                    }
                    if top.verb != Scalar::Unknown && top.code != Scalar::Unknown {
                        read += 1;
                    }
                }
                // The decoder refuses what the pass does not check (scalars, duplicates):
                // the pass must then not have claimed to know the field that made it fail.
                Err(_) => {}
                Ok(other) => panic!("a plain event to the pass, {other:?} to the decoder:\n{text}"),
            }
        }
    }
    eprintln!("{plain} plain events, {read} with verb and code read");
    assert!(
        read > 1000,
        "the pass read too few fields to prove anything: {read}"
    );
}

/// The block walks (portable and AVX2) give the byte walk's verdict and fields on every
/// corpus line, its hostile variants, and each of those cut at and around block boundaries
/// and with a stray backslash, control byte or non-ASCII byte put in.
#[test]
fn every_method_of_the_structure_pass_reads_the_corpus_alike() {
    let agree = |v: &[u8]| {
        let want = format!("{:?}", scan_structure_with(v, Method::ByteWalk));
        for method in [Method::Blocks, Method::BlocksAvx2] {
            let got = format!("{:?}", scan_structure_with(v, method));
            assert_eq!(got, want, "{method:?}:\n{}", String::from_utf8_lossy(v));
        }
    };
    let mut checked = 0usize;
    for line in corpus_lines() {
        for v in variants(&line) {
            agree(&v);
            for cut in [63, 64, 129, v.len() / 2] {
                agree(&v[..cut.min(v.len())]);
            }
            for (at, byte) in [
                (v.len() / 3, b'\\'),
                (v.len() / 2, 0x01),
                (v.len() / 4, 0xe9),
            ] {
                let mut changed = v.clone();
                changed[at] = byte;
                agree(&changed);
            }
            checked += 8;
        }
    }
    eprintln!(
        "{checked} records; AVX2 here: {}",
        Method::best() == Method::BlocksAvx2
    );
    assert!(checked > 100_000, "too few records: {checked}");
}
