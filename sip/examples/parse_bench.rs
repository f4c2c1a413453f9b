//! Rough parse + validate throughput of a SIP message, and the cost of
//! anchoring its SDP body at a relay (what the SBC does to every offer and
//! answer): `cargo run --release -p sip --example parse_bench`.

use std::time::Instant;

use sip::message::parse_datagram;
use sip::sdp::anchor_audio;
use sip::validate::{classify_datagram, Inbound, Policy};

const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\nTo: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\nCSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\nContent-Type: application/sdp\r\n\
Content-Length: 142\r\n\r\n\
v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\ns=-\r\n\
c=IN IP4 pc33.atlanta.example.com\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

/// An offer as a desk phone writes it.
const OFFER: &[u8] = b"v=0\r\no=- 3920000001 3920000001 IN IP4 192.168.1.7\r\ns=-\r\n\
c=IN IP4 192.168.1.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";

fn main() {
    const ROUNDS: u32 = 100_000;
    let policy = Policy::endpoint();
    let verdict = classify_datagram(INVITE, &policy);
    assert!(
        matches!(verdict, Inbound::Accept(_)),
        "sample must be valid: {verdict:?}"
    );
    let start = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(parse_datagram(std::hint::black_box(INVITE)).is_ok());
    }
    let parse = start.elapsed() / ROUNDS;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let verdict = classify_datagram(std::hint::black_box(INVITE), &policy);
        std::hint::black_box(matches!(verdict, Inbound::Accept(_)));
    }
    let classify = start.elapsed() / ROUNDS;
    let relay = "192.0.2.1:30000".parse().expect("an address");
    let sdp = OFFER;
    assert!(anchor_audio(sdp, relay).is_ok(), "the offer must anchor");
    let start = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(anchor_audio(std::hint::black_box(sdp), relay).is_ok());
    }
    let anchor = start.elapsed() / ROUNDS;
    println!(
        "{} byte INVITE: parse {parse:?}/msg, parse+validate {classify:?}/msg, \
         anchor its {} byte SDP {anchor:?}",
        INVITE.len(),
        sdp.len()
    );
    // The figures, as one JSON object on the last line.
    println!(
        r#"{{"message_bytes": {}, "parse_ns_per_msg": {}, "parse_and_validate_ns_per_msg": {}, "sdp_anchor_ns": {}}}"#,
        INVITE.len(),
        parse.as_nanos(),
        classify.as_nanos(),
        anchor.as_nanos()
    );
}
