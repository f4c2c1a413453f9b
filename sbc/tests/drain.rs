//! Draining a pbx-node through the SBC's admin endpoint: no new dialog or
//! registration reaches it, while a request of a dialog it already owns
//! still does; undraining puts it back. Two fake nodes (UDP sockets that
//! answer the SBC's OPTIONS probes and report everything else) stand
//! behind a real SBC on loopback.

use std::net::SocketAddr;
use std::time::Duration;

mod common;

use common::{http, localhost, loopback_config};
use sbc::{Sbc, SbcConfig};
use sip::message::{parse_datagram, SipMessage};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A node that answers probes and hands every other message to the test.
async fn fake_node(
    index: usize,
    seen: mpsc::UnboundedSender<(usize, SipMessage)>,
) -> (SocketAddr, std::sync::Arc<UdpSocket>) {
    let socket = std::sync::Arc::new(UdpSocket::bind(localhost()).await.expect("bind"));
    let addr = socket.local_addr().expect("addr");
    let node = socket.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = node.recv_from(&mut buf).await {
            let Ok(message) = parse_datagram(&buf[..n]) else {
                continue;
            };
            if message
                .call_id()
                .is_ok_and(|id| id.starts_with("sbc-probe-"))
            {
                let _ = node.send_to(&message.response(200).to_bytes(), from).await;
            } else if seen.send((index, message)).is_err() {
                return;
            }
        }
    });
    (addr, socket)
}

fn request(method: &str, uri: &str, call_id: &str, cseq: u32) -> SipMessage {
    let text = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{call_id}{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:100@test.pbx.local>;tag=a\r\nTo: <sip:101@test.pbx.local>\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:100@127.0.0.1:5999>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    parse_datagram(text.as_bytes()).expect("test request")
}

async fn next(seen: &mut mpsc::UnboundedReceiver<(usize, SipMessage)>) -> (usize, SipMessage) {
    timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("a node gets it within 5 s")
        .expect("nodes running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_keeps_its_dialogs_and_gets_no_new_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (a, a_socket) = fake_node(0, seen_tx.clone()).await;
    let (b, _b_socket) = fake_node(1, seen_tx).await;
    let nodes = [a, b];
    let sbc = Sbc::start(&SbcConfig {
        nodes: nodes.to_vec(),
        ..loopback_config(dir.path())
    })
    .await
    .expect("start SBC");
    let phone = UdpSocket::bind(localhost()).await.expect("phone");
    let send = |message: SipMessage| {
        let phone = &phone;
        let to = sbc.udp;
        async move {
            phone
                .send_to(&message.to_bytes(), to)
                .await
                .expect("send to the SBC");
        }
    };

    // A call is answered by node A before A starts draining.
    let mut owned = None;
    for i in 0..40 {
        let call_id = format!("call-{i}");
        send(request("INVITE", "sip:101@test.pbx.local", &call_id, 1)).await;
        let (node, invite) = next(&mut seen).await;
        if node == 0 {
            owned = Some(invite);
            break;
        }
    }
    let invite = owned.expect("some call reaches node A");
    let mut ok = invite.response(200);
    ok.ensure_to_tag("node-a");
    ok.headers.push("Contact", format!("<sip:b2b@{a}>"));
    a_socket
        .send_to(&ok.to_bytes(), sbc.internal)
        .await
        .expect("answer");
    let mut buf = vec![0u8; 65_535];
    let node_contact = loop {
        let (n, _) = timeout(Duration::from_secs(5), phone.recv_from(&mut buf))
            .await
            .expect("the 200 reaches the phone")
            .expect("recv");
        let Ok(answer) = parse_datagram(&buf[..n]) else {
            continue;
        };
        if answer.status() == Some(200) {
            let contact = answer.headers.get("Contact").expect("Contact").to_string();
            break contact.trim_matches(['<', '>']).to_string();
        }
    };

    let (status, body) = http(sbc.http, "POST", &format!("/admin/nodes/{a}/drain")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"draining\":true"), "{body}");
    let (_, listed) = http(sbc.http, "GET", "/admin/nodes").await;
    assert!(listed.contains(&format!("\"addr\":\"{a}\"")), "{listed}");

    // The dialog's BYE still reaches A; nothing new does.
    send(request(
        "BYE",
        &node_contact,
        invite.call_id().expect("id"),
        2,
    ))
    .await;
    let (node, bye) = next(&mut seen).await;
    assert_eq!(
        (node, bye.method().map(|m| m.as_str().to_string())),
        (0, Some("BYE".into()))
    );
    for i in 0..20 {
        send(request(
            "INVITE",
            "sip:101@test.pbx.local",
            &format!("drained-{i}"),
            1,
        ))
        .await;
        assert_eq!(
            next(&mut seen).await.0,
            1,
            "new call {i} avoids the drained node"
        );
        send(request(
            "REGISTER",
            "sip:test.pbx.local",
            &format!("reg-{i}"),
            1,
        ))
        .await;
        assert_eq!(next(&mut seen).await.0, 1, "registration {i} too");
    }
    // Prometheus sees the drain and where the new work went.
    let (_, metrics) = http(sbc.http, "GET", "/metrics").await;
    for line in [
        format!(r#"sbc_node_draining{{node="{a}"}} 1"#),
        format!(r#"sbc_node_draining{{node="{b}"}} 0"#),
        format!(r#"sbc_node_up{{node="{a}"}} 1"#),
        format!(r#"sbc_node_up{{node="{b}"}} 1"#),
        format!(r#"sbc_dispatched_requests_total{{method="REGISTER",node="{b}"}} 20"#),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // Undrained: back in the rotation.
    let (status, body) = http(sbc.http, "POST", &format!("/admin/nodes/{a}/undrain")).await;
    assert_eq!(status, 200, "{body}");
    let mut reached_a = false;
    for i in 0..20 {
        send(request(
            "INVITE",
            "sip:101@test.pbx.local",
            &format!("back-{i}"),
            1,
        ))
        .await;
        reached_a |= next(&mut seen).await.0 == 0;
    }
    assert!(reached_a, "new calls reach A again");

    assert_eq!(
        http(sbc.http, "POST", "/admin/nodes/127.0.0.1:1/drain")
            .await
            .0,
        404
    );
    assert_eq!(
        http(sbc.http, "POST", "/admin/nodes/nonsense/drain")
            .await
            .0,
        400
    );
    sbc.stop();
}

/// Each node's address and draining flag, from `GET /admin/nodes`.
async fn draining(sbc: &Sbc) -> Vec<(SocketAddr, bool)> {
    let (status, listed) = http(sbc.http, "GET", "/admin/nodes").await;
    assert_eq!(status, 200, "{listed}");
    let nodes: Vec<serde_json::Value> = serde_json::from_str(&listed).expect("JSON");
    nodes
        .iter()
        .map(|node| {
            let addr = node["addr"].as_str().and_then(|a| a.parse().ok());
            let draining = node["draining"].as_bool();
            (addr.expect("addr"), draining.expect("draining"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_outlives_a_restart_of_the_sbc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (a, _a_socket) = fake_node(0, seen_tx.clone()).await;
    let (b, _b_socket) = fake_node(1, seen_tx).await;
    let config = SbcConfig {
        nodes: vec![a, b],
        ..loopback_config(dir.path())
    };
    let first = Sbc::start(&config).await.expect("start SBC");
    let (status, body) = http(first.http, "POST", &format!("/admin/nodes/{a}/drain")).await;
    assert_eq!(status, 200, "{body}");
    first.stop();

    let second = Sbc::start(&config).await.expect("restart SBC");
    assert_eq!(
        draining(&second).await,
        [(a, true), (b, false)],
        "A is still drained after the restart"
    );
    let phone = UdpSocket::bind(localhost()).await.expect("phone");
    for i in 0..20 {
        let invite = request("INVITE", "sip:101@test.pbx.local", &format!("after-{i}"), 1);
        phone
            .send_to(&invite.to_bytes(), second.udp)
            .await
            .expect("send");
        assert_eq!(next(&mut seen).await.0, 1, "new call {i} avoids drained A");
    }
    let (status, body) = http(second.http, "POST", &format!("/admin/nodes/{a}/undrain")).await;
    assert_eq!(status, 200, "{body}");
    second.stop();

    let third = Sbc::start(&config).await.expect("restart SBC again");
    assert_eq!(
        draining(&third).await,
        [(a, false), (b, false)],
        "undrained before the restart, undrained after"
    );
    third.stop();

    // A damaged record stops the start with a clear error and is left
    // for the operator to mend.
    let record = config.data_dir.join("drained-nodes");
    std::fs::write(&record, "10.0.0.1:5060\nnode-a\n").expect("write");
    let error = Sbc::start(&config)
        .await
        .err()
        .expect("no start on a damaged record")
        .to_string();
    assert!(error.contains("line 2: 'node-a' is no ip:port"), "{error}");
    assert_eq!(
        std::fs::read_to_string(&record).expect("read"),
        "10.0.0.1:5060\nnode-a\n"
    );
}
