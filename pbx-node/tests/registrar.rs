//! End-to-end registrar tests: a pbx-node started in-process on loopback,
//! driven over real UDP sockets, by sipp, and across a 3-node raft cluster.

mod common;

use std::path::Path;

use common::{
    create_test_tenant, free_udp_addr, loopback_config, TestPhone, PASSWORD, TEST_DOMAIN,
};
use pbx_node::service::unix_now_ms;
use pbx_node::{NodeConfig, PbxNode};

async fn single_node(dir: &Path, offer_sha256: bool) -> PbxNode {
    let config = NodeConfig {
        sip_digest_sha256: offer_sha256,
        ..loopback_config(1, dir)
    };
    let node = PbxNode::start(&config).await.expect("start node");
    create_test_tenant(&node.repo).await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_query_and_unregister_over_udp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = single_node(dir.path(), true).await;
    let mut phone = TestPhone::new(node.sip.udp_addr, "100-TEST", PASSWORD).await;

    let ok = phone
        .register(
            "Contact: <sip:100@192.0.2.1:5060>;+sip.instance=\"<urn:uuid:a>\"\r\nExpires: 120\r\n",
        )
        .await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        ok.headers.get("Contact"),
        Some("<sip:100@192.0.2.1:5060>;+sip.instance=\"<urn:uuid:a>\";expires=120")
    );
    let ok = phone
        .register("Contact: <sip:100@192.0.2.2:5060>\r\n")
        .await;
    let contacts: Vec<&str> = ok.headers.get_all("Contact").collect();
    assert_eq!(contacts.len(), 2, "both bindings listed: {contacts:?}");

    // Too brief: 423 with Min-Expires, nothing changed.
    let brief = phone
        .register("Contact: <sip:100@192.0.2.3:5060>;expires=5\r\n")
        .await;
    assert_eq!(brief.status(), Some(423));
    assert_eq!(brief.headers.get("Min-Expires"), Some("60"));

    // A query (no Contact) lists the bindings.
    let query = phone.register("").await;
    assert_eq!(query.status(), Some(200));
    assert_eq!(query.headers.get_all("Contact").count(), 2);

    let tenant = node
        .repo
        .tenant_by_code("TEST")
        .await
        .expect("read")
        .expect("tenant");
    assert_eq!(
        node.repo
            .bindings(&tenant.id, "100", unix_now_ms())
            .await
            .expect("read")
            .len(),
        2
    );

    let gone = phone.register("Contact: *\r\nExpires: 0\r\n").await;
    assert_eq!(gone.status(), Some(200));
    assert_eq!(gone.headers.get("Contact"), None);
    assert!(node
        .repo
        .bindings(&tenant.id, "100", unix_now_ms())
        .await
        .expect("read")
        .is_empty());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_and_wrong_password_get_the_same_challenge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = single_node(dir.path(), true).await;
    let strip_nonce = |m: &sip::message::SipMessage| -> Vec<String> {
        m.headers
            .get_all("WWW-Authenticate")
            .map(|v| {
                v.split("nonce=").next().unwrap_or_default().to_string()
                    + &v[v.find(", algorithm").unwrap_or(0)..]
            })
            .collect()
    };
    let mut wrong = TestPhone::new(node.sip.udp_addr, "100-TEST", "wrong").await;
    let wrong_reply = wrong.register("Contact: <sip:100@192.0.2.1>\r\n").await;
    let mut unknown = TestPhone::new(node.sip.udp_addr, "999-TEST", PASSWORD).await;
    let unknown_reply = unknown.register("Contact: <sip:999@192.0.2.1>\r\n").await;
    assert_eq!(wrong_reply.status(), Some(401));
    assert_eq!(unknown_reply.status(), Some(401));
    assert_eq!(strip_nonce(&wrong_reply), strip_nonce(&unknown_reply));
    assert_eq!(strip_nonce(&wrong_reply).len(), 2);

    // An unknown domain is challenged too, in its own name: no 404 tells a
    // prober which tenants exist.
    let probe = wrong
        .send_raw(
            "REGISTER sip:nobody.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe\r\n\
             From: <sip:100@nobody.example>;tag=1\r\nTo: <sip:100@nobody.example>\r\n\
             Call-ID: probe-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
                .as_bytes(),
        )
        .await;
    assert_eq!(probe.status(), Some(401));
    let realms: Vec<&str> = probe.headers.get_all("WWW-Authenticate").collect();
    assert!(
        realms
            .iter()
            .all(|v| v.contains("realm=\"nobody.example\"")),
        "{realms:?}"
    );
    assert_eq!(realms.len(), 2, "the same two challenges as a real tenant");

    // A malformed request gets sip::validate's 400 with its reason.
    let malformed = wrong
        .send_raw(
            format!(
                "REGISTER sip:{TEST_DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n\
                 From: <sip:100-TEST@{TEST_DOMAIN}>;tag=1\r\nTo: <sip:100-TEST@{TEST_DOMAIN}>\r\n\
                 CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(malformed.status(), Some(400));
    node.shutdown().await;
}

/// Runs sipp with `scenario` against `server` over `transport` (`u1` UDP,
/// `t1` TCP); returns whether it passed.
async fn run_sipp(
    scenario: &str,
    transport: &str,
    server: std::net::SocketAddr,
    user: &str,
    password: &str,
    work: &Path,
) -> bool {
    let output = common::sipp_command(
        &common::sipp_scenario(scenario),
        free_udp_addr().port(),
        work,
    )
    .arg(server.to_string())
    .args(["-s", user, "-au", user, "-ap", password, "-t", transport])
    .output()
    .await
    .expect("sipp must be installed (Debian package sip-tester)");
    common::sipp_passed(&output, work)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_registers_with_digest_and_wrong_password_is_challenged_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    // sipp 3.6 answers only the first challenge and knows only MD5.
    let node = single_node(&dir.path().join("node"), false).await;
    let udp = node.sip.udp_addr;
    let work = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    };
    let tenant = node
        .repo
        .tenant_by_code("TEST")
        .await
        .expect("read")
        .expect("tenant");
    let binding_count = || async {
        node.repo
            .bindings(&tenant.id, "100", unix_now_ms())
            .await
            .expect("read")
            .len()
    };

    // The scenario uses the server's IP as domain, so the tenant is found
    // by the username's -TEST suffix.
    let ok = run_sipp("register.xml", "u1", udp, "100-TEST", PASSWORD, &work("ok")).await;
    assert!(ok, "sipp registers with the right password");
    let bindings = node
        .repo
        .bindings(&tenant.id, "100", unix_now_ms())
        .await
        .expect("read");
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].binding.expires_secs, 300);

    let scenario = "register_wrong_password.xml";
    let challenged = run_sipp(scenario, "u1", udp, "100-TEST", "not-it", &work("wrong")).await;
    assert!(challenged, "a wrong password is challenged again");
    assert_eq!(
        binding_count().await,
        1,
        "the failed attempt changed nothing"
    );
    // The 200-expecting scenario can tell the difference: it fails here.
    let passed = run_sipp(
        "register.xml",
        "u1",
        udp,
        "100-TEST",
        "not-it",
        &work("fail"),
    )
    .await;
    assert!(!passed, "a wrong password never gets a 200");

    // The same over TCP: another device, since sipp's contact port differs.
    let tcp = node.sip.tcp_addr;
    let ok = run_sipp(
        "register.xml",
        "t1",
        tcp,
        "100-TEST",
        PASSWORD,
        &work("tcp"),
    )
    .await;
    assert!(ok, "sipp registers over TCP");
    assert_eq!(binding_count().await, 2);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_registered_on_one_node_is_found_on_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nodes, spare) = common::three_node_cluster(dir.path(), 2).await;
    let [node_a, node_b] = <[PbxNode; 2]>::try_from(nodes).ok().expect("two PBX nodes");
    let tenant = create_test_tenant(&node_a.repo).await;

    let mut phone = TestPhone::new(node_a.sip.udp_addr, "100-TEST", PASSWORD).await;
    let ok = phone
        .register("Contact: <sip:100@192.0.2.7:5060>\r\nPath: <sip:sbc1.example;lr>\r\nSupported: path\r\n")
        .await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.headers.get("Path"), Some("<sip:sbc1.example;lr>"));

    let on_b = node_b
        .repo
        .bindings(&tenant.id, "100", unix_now_ms())
        .await
        .expect("read on B");
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_b[0].binding.uri, "sip:100@192.0.2.7:5060");
    assert_eq!(
        on_b[0].binding.path,
        vec!["<sip:sbc1.example;lr>".to_string()]
    );

    // Node B also answers a query REGISTER for it, with the nonce secret
    // both nodes share.
    let mut phone_b = TestPhone::new(node_b.sip.udp_addr, "100-TEST", PASSWORD).await;
    let query = phone_b.register("").await;
    assert_eq!(query.status(), Some(200));
    assert_eq!(query.headers.get_all("Contact").count(), 1);

    node_a.shutdown().await;
    node_b.shutdown().await;
    for store in spare {
        store.shutdown().await;
    }
}

/// Phones registering one extension at the same time through three nodes:
/// each REGISTER is planned from a read of the bindings that the write
/// checks is still current, so the limit of contacts holds cluster-wide
/// (3, the oldest removed first) instead of each node adding to what it
/// saw. Every phone gets its 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_through_three_nodes_keep_the_contact_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = common::three_node_cluster(dir.path(), 3).await;
    let tenant = create_test_tenant(&nodes[0].repo).await;
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..3 {
        for (n, node) in nodes.iter().enumerate() {
            let addr = node.sip.udp_addr;
            tasks.spawn(async move {
                let mut phone = TestPhone::new(addr, "100-TEST", PASSWORD).await;
                phone
                    .register(&format!(
                        "Contact: <sip:100@192.0.2.{}:5060>\r\n",
                        10 * round + n + 1
                    ))
                    .await
            });
        }
        while let Some(reply) = tasks.join_next().await {
            let reply = reply.expect("phone task");
            assert_eq!(reply.status(), Some(200), "{reply:?}");
            assert!(reply.headers.get_all("Contact").count() <= 3, "{reply:?}");
        }
    }
    for node in &nodes {
        let bindings = node
            .repo
            .bindings(&tenant.id, "100", unix_now_ms())
            .await
            .expect("read");
        assert_eq!(bindings.len(), 3, "{bindings:?}");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// An extension's allowed registration networks are checked against the
/// device's address: the packet's source, or the address a trusted edge
/// proxy (loopback, by default) names in the device's Via.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_only_from_the_allowed_networks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = single_node(dir.path(), false).await;
    let client = reqwest::Client::new();
    let token = common::admin_token(&client, node.http.addr).await;
    let response = client
        .put(format!(
            "http://{}/api/v1/tenants/{}/extensions/100",
            node.http.addr,
            common::TEST_CODE
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({"allowed_registration_cidrs": ["198.51.100.0/24"]}))
        .send()
        .await
        .expect("PUT extension");
    assert_eq!(response.status().as_u16(), 200);

    let mut phone = TestPhone::new(node.sip.udp_addr, "100-TEST", PASSWORD).await;
    let contact = "Contact: <sip:100@192.0.2.1:5060>\r\n";
    // The node's directory follows the change through the store's watch.
    let mut refused = None;
    for _ in 0..50 {
        let reply = phone.register(contact).await;
        if reply.status() == Some(403) {
            refused = Some(reply);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let refused = refused.expect("REGISTER from 127.0.0.1 itself: 403");
    assert_eq!(
        refused.reason(),
        Some("Forbidden (registration not allowed from this network)")
    );

    // The same socket as an edge proxy relaying a device in the allowed
    // network, and one outside it.
    let relayed = |device: &str| {
        format!("Via: SIP/2.0/UDP 192.168.1.7:5060;branch=z9hG4bKdev;received={device};rport=4000\r\n{contact}")
    };
    let allowed = phone.register(&relayed("198.51.100.9")).await;
    assert_eq!(allowed.status(), Some(200));
    let outside = phone.register(&relayed("203.0.113.9")).await;
    assert_eq!(outside.status(), Some(403));
    node.shutdown().await;
}
