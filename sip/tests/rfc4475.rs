//! Every RFC 4475 torture message gets the RFC's verdict (as an endpoint
//! receiving it over UDP). The corpus is vendored in `tests/conformance`.

use std::path::PathBuf;

use sip::validate::{classify_datagram, Inbound, Policy};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance/rfc4475")
}

/// Our verdict in the table's vocabulary: `accept`, `drop` or a status code.
fn verdict(inbound: &Inbound) -> String {
    match inbound {
        Inbound::Accept(_) => "accept".into(),
        Inbound::Drop { .. } => "drop".into(),
        Inbound::Reject { status, .. } => status.to_string(),
    }
}

/// `error` means an error response with no code named: 400 is the natural one.
fn allowed(expected: &str) -> Vec<String> {
    expected
        .split("-or-")
        .map(|t| {
            if t == "error" {
                "400".to_string()
            } else {
                t.to_string()
            }
        })
        .collect()
}

#[test]
fn rfc4475_verdicts() {
    let path = corpus_dir().join("verdicts.tsv");
    let table = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the RFC 4475 corpus is vendored in the repository)",
            path.display()
        )
    });
    let policy = Policy::endpoint();
    let mut failures = Vec::new();
    let mut count = 0;
    for line in table.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (name, expected) = (cols[0], cols[3]);
        let bytes = std::fs::read(corpus_dir().join(format!("{name}.dat"))).unwrap();
        let inbound = classify_datagram(&bytes, &policy);
        let ours = verdict(&inbound);
        if !allowed(expected).contains(&ours) {
            failures.push(format!(
                "{name}: expected {expected}, got {ours} ({inbound:?})"
            ));
        }
        // A rejection must come with a response whenever a Via was readable.
        if let Inbound::Reject {
            response: Some(r), ..
        } = &inbound
        {
            assert!(
                sip::message::parse_datagram(&r.to_bytes()).is_ok(),
                "{name}"
            );
        }
        count += 1;
    }
    assert_eq!(count, 49, "verdicts.tsv should list 49 messages");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn baddn_is_rejected_for_its_display_names_not_its_framing() {
    let bytes = std::fs::read(corpus_dir().join("baddn.dat")).unwrap();
    let Inbound::Reject {
        status: 400,
        reason,
        ..
    } = classify_datagram(&bytes, &Policy::endpoint())
    else {
        panic!("expected 400");
    };
    assert!(reason.contains("display name"), "{reason}");
}
