//! Random and mutated bytes must never panic the parser, the validator or
//! the stream framer.

use proptest::prelude::*;
use sip::message::{parse_datagram, StreamFramer};
use sip::validate::{classify_datagram, Policy};

const SEED: &[u8] = b"INVITE sip:bob@example.com;transport=tcp SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1;rport\r\n\
From: \"A \\\"q\\\"\" <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n\
Call-ID: c@h\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:a@h>;expires=60, *\r\n\
Authorization: Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"sip:b\", response=\"00\", nc=00000001\r\n\
Content-Length: 4\r\n\r\nv=0\r\n";

fn exercise(bytes: &[u8]) {
    for policy in [Policy::endpoint(), Policy::proxy()] {
        let _ = classify_datagram(bytes, &policy);
    }
    if let Ok(msg) = parse_datagram(bytes) {
        let _ = (msg.vias(), msg.from(), msg.to(), msg.cseq(), msg.contacts());
        let _ = (msg.expires(), msg.max_forwards(), msg.routes(), msg.paths());
        let _ = parse_datagram(&msg.to_bytes());
        if let Some(authorization) = msg.authorization() {
            let _ = sip::auth::DigestCredentials::parse(authorization);
        }
    }
    let mut framer = StreamFramer::new(4096);
    for chunk in bytes.chunks(7) {
        framer.push(chunk);
        while let Some(Ok(_)) = framer.next_item() {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        exercise(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..12)
    ) {
        let mut bytes = SEED.to_vec();
        for (pos, byte, op) in edits {
            let at = pos % (bytes.len() + 1);
            match op {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => { bytes.remove(at); }
                _ if at < bytes.len() => bytes[at] = byte,
                _ => bytes.push(byte),
            }
        }
        exercise(&bytes);
    }
}

#[test]
fn seed_message_is_valid() {
    assert!(matches!(
        classify_datagram(SEED, &Policy::endpoint()),
        sip::validate::Inbound::Accept(_)
    ));
}
