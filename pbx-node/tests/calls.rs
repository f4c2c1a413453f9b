//! Calls between extensions through the B2BUA, with sipp as both phones:
//! answered, busy, no answer, cancelled, unknown number, offline, forking
//! to two devices, a 3-node cluster (register on A, call via B), tenant
//! isolation, and the extension settings that act on calls (DND, busy,
//! unconditional and offline forwarding, ring timeout, a disabled tenant)
//! set through the REST API. Each call's CDR is checked in raft-store.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{
    create_test_tenant, free_udp_addr, sipp_command, sipp_passed, sipp_scenario, PASSWORD,
};
use pbx_node::model::{Cdr, Tenant};
use pbx_node::repo::NewExtension;
use pbx_node::{NodeConfig, PbxNode, Repo};
use tokio::process::Child;

async fn add_extension(repo: &Repo, tenant: &Tenant, number: &str) {
    repo.create_extension(
        tenant,
        NewExtension {
            number: number.into(),
            display_name: format!("Test {number}"),
            username: None,
            password: PASSWORD.into(),
        },
    )
    .await
    .expect("create extension");
}

fn work_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

/// Registers `user` with the contact 127.0.0.1:`port`, where a sipp UAS
/// will then listen.
async fn register(node: SocketAddr, user: &str, port: u16, work: &Path) {
    let output = sipp_command(&sipp_scenario("register.xml"), port, work)
        .arg(node.to_string())
        .args(["-s", user, "-au", user, "-ap", PASSWORD, "-t", "u1"])
        .output()
        .await
        .expect("sipp must be installed (Debian package sip-tester)");
    assert!(sipp_passed(&output, work), "{user} registers");
}

/// A sipp phone on `port` that plays `scenario` for one incoming call.
fn callee(scenario: &str, port: u16, work: &Path) -> Child {
    sipp_command(&sipp_scenario(scenario), port, work)
        .args(["-t", "u1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sipp must be installed (Debian package sip-tester)")
}

async fn finished(child: Child, work: &Path) -> bool {
    let output = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("sipp ends by itself")
        .expect("sipp output");
    sipp_passed(&output, work)
}

/// Extension 100 calling `number` via `node` with `scenario`, holding an
/// answered call for `hold`.
fn caller(
    node: SocketAddr,
    scenario: &Path,
    number: &str,
    work: &Path,
    hold: Duration,
) -> tokio::process::Command {
    let mut command = sipp_command(scenario, free_udp_addr().port(), work);
    command
        .arg(node.to_string())
        .args(["-s", number, "-au", "100-TEST", "-ap", PASSWORD, "-t", "u1"])
        .args(["-d", &hold.as_millis().to_string()])
        // Like a phone given the PBX's IP address: the tenant is only in
        // the username's -CODE suffix.
        .args(["-key", "caller", "100-TEST"]);
    command
}

/// Extension 100 calls `number` via `node` with `scenario`.
async fn call(node: SocketAddr, scenario: &Path, number: &str, work: &Path) -> bool {
    let output = caller(node, scenario, number, work, Duration::from_secs(1))
        .output()
        .await
        .expect("sipp must be installed (Debian package sip-tester)");
    sipp_passed(&output, work)
}

/// The refusal scenario expecting `status`, written into `work`.
fn refused_scenario(status: u16, work: &Path) -> std::path::PathBuf {
    let template = std::fs::read_to_string(sipp_scenario("uac_refused.xml.in")).expect("template");
    let path = work.join(format!("uac_refused_{status}.xml"));
    std::fs::write(&path, template.replace("@STATUS@", &status.to_string()))
        .expect("write scenario");
    path
}

/// The answered call of `uac_call.xml` as a phone behind two
/// record-routing proxies sends it: each INVITE carries their
/// Record-Route, and the 200 must carry it back, in order (RFC 3261
/// §12.1.1), or the caller has no route set for its ACK and BYE. (An
/// XML attribute cannot hold `<`: the regexp matches it with `.`.)
fn record_routed_scenario(work: &Path) -> std::path::PathBuf {
    let plain = std::fs::read_to_string(sipp_scenario("uac_call.xml")).expect("scenario");
    let invite_end = "Max-Forwards: 70\n      Content-Type: application/sdp";
    assert_eq!(plain.matches(invite_end).count(), 2, "both INVITEs");
    let routed = plain
        .replace(
            invite_end,
            "Max-Forwards: 70\n      Record-Route: <sip:edge-a.invalid;lr>, <sip:edge-b.invalid;lr>\n      Content-Type: application/sdp",
        )
        .replace(
            "<recv response=\"200\" rrs=\"true\">\n    <action>",
            "<recv response=\"200\" rrs=\"true\">\n    <action>\n      <ereg regexp=\"edge-a[.]invalid;lr>, *.sip:edge-b[.]invalid;lr>\" search_in=\"hdr\" header=\"Record-Route:\" check_it=\"true\" assign_to=\"3\"/>",
        )
        .replace("<Reference variables=\"1,2\"/>", "<Reference variables=\"1,2,3\"/>");
    assert_eq!(
        routed.matches("edge-b").count(),
        3,
        "routes sent and checked"
    );
    assert!(routed.contains("variables=\"1,2,3\""));
    let path = work.join("uac_call_record_routed.xml");
    std::fs::write(&path, routed).expect("write scenario");
    path
}

/// The tenant's CDRs once `count` are written (they follow the final
/// response by a store write).
async fn cdrs(repo: &Repo, tenant: &Tenant, count: usize) -> Vec<Cdr> {
    for _ in 0..100 {
        let cdrs = repo.cdrs(&tenant.id, 0, 0).await.expect("list CDRs");
        if cdrs.len() >= count {
            return cdrs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{count} CDRs were not written");
}

async fn single_node(dir: &Path) -> (PbxNode, Tenant) {
    common::init_test_logs();
    // sipp 3.6 answers only the first challenge, and only MD5.
    let config = NodeConfig {
        ring_timeout_secs: 3,
        sip_digest_sha256: false,
        ..common::loopback_config(1, dir)
    };
    let node = PbxNode::start(&config).await.expect("start node");
    let tenant = create_test_tenant(&node.repo).await;
    for number in ["101", "102"] {
        add_extension(&node.repo, &tenant, number).await;
    }
    (node, tenant)
}

/// A single node where sipp calls extension 101 with `scenario` and a
/// sipp UAS registered as 101 answers; both must pass (`what` says what
/// the caller's scenario checks).
async fn answered_call_to_101(dir: &Path, scenario: &Path, what: &str) -> (PbxNode, Tenant) {
    let (node, tenant) = single_node(dir).await;
    let sip = node.sip.udp_addr;
    let port = free_udp_addr().port();
    register(sip, "101-TEST", port, &work_dir(dir, "reg")).await;
    let phone = callee("uas_answer.xml", port, &work_dir(dir, "uas"));
    assert!(
        call(sip, scenario, "101", &work_dir(dir, "uac")).await,
        "{what}"
    );
    assert!(
        finished(phone, &work_dir(dir, "uas")).await,
        "callee got INVITE, ACK, BYE"
    );
    (node, tenant)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_call_goes_through_and_leaves_a_cdr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = answered_call_to_101(
        dir.path(),
        &sipp_scenario("uac_call.xml"),
        "407, then an answered call with SDP, then BYE",
    )
    .await;
    let cdrs = cdrs(&node.repo, &tenant, 1).await;
    let cdr = &cdrs[0];
    assert_eq!(
        (cdr.from.as_str(), cdr.to.as_str(), cdr.disposition.as_str()),
        ("100", "101", "ANSWERED")
    );
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING");
    assert_eq!(cdr.hangup_by, "caller");
    assert_eq!(cdr.node_id, 1);
    let answered = cdr.answer_ms.expect("answer time");
    assert!(
        cdr.start_ms <= answered && answered + 900 <= cdr.end_ms,
        "{cdr:?}"
    );
    assert_eq!(node.sip.b2bua.active_calls(), 0);

    // The same CDR over HTTP, and the call in the metrics.
    let (status, body) = common::http_get(node.http.addr, "/api/v1/tenants/TEST/cdrs?top=10").await;
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(listed["items"][0]["call_id"], cdr.call_id.as_str());
    assert_eq!(listed["items"][0]["disposition"], "ANSWERED");
    let (status, _) = common::http_get(node.http.addr, "/api/v1/tenants/NOPE/cdrs").await;
    assert_eq!(status, 404);
    let (status, body) =
        common::http_get(node.http.addr, "/api/v1/tenants/TEST/cdrs?top=1000").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"top\""), "{body}");
    let (_, metrics) = common::http_get(node.http.addr, "/metrics").await;
    assert!(
        metrics.contains("pbx_calls_total{disposition=\"ANSWERED\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("pbx_calls_active 0"), "{metrics}");
    assert!(
        metrics.contains("raft_"),
        "raft-store metrics on the same registry"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_routed_caller_gets_its_route_set_in_the_200() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _tenant) = answered_call_to_101(
        dir.path(),
        &record_routed_scenario(dir.path()),
        "the 200 carries both Record-Route entries, in order",
    )
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_no_answer_cancel_unknown_and_offline_get_their_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = single_node(dir.path()).await;
    let sip = node.sip.udp_addr;
    let port = free_udp_addr().port();
    register(sip, "101-TEST", port, &work_dir(dir.path(), "reg")).await;

    let cases: [(&str, Option<&str>, u16, &str); 5] = [
        ("busy", Some("uas_busy.xml"), 486, "BUSY"),
        // Ring timeout is 3 s in tests: the PBX CANCELs and the caller hears 480.
        (
            "noanswer",
            Some("uas_ring_until_cancel.xml"),
            480,
            "NO ANSWER",
        ),
        (
            "cancel",
            Some("uas_ring_until_cancel.xml"),
            487,
            "CANCELLED",
        ),
        ("unknown", None, 404, "FAILED"),
        ("offline", None, 480, "FAILED"),
    ];
    for (index, (name, callee_scenario, status, disposition)) in cases.into_iter().enumerate() {
        let uas_work = work_dir(dir.path(), &format!("{name}-uas"));
        let phone = callee_scenario.map(|s| callee(s, port, &uas_work));
        let uac = work_dir(dir.path(), &format!("{name}-uac"));
        let (scenario, number) = match name {
            "cancel" => (sipp_scenario("uac_cancel.xml"), "101"),
            "unknown" => (refused_scenario(status, &uac), "199"),
            "offline" => (refused_scenario(status, &uac), "102"),
            _ => (refused_scenario(status, &uac), "101"),
        };
        assert!(
            call(sip, &scenario, number, &uac).await,
            "{name}: caller gets {status}"
        );
        if let Some(phone) = phone {
            assert!(finished(phone, &uas_work).await, "{name}: callee side");
        }
        let cdrs = cdrs(&node.repo, &tenant, index + 1).await;
        let cdr = cdrs.iter().max_by_key(|c| c.start_ms).expect("latest CDR");
        assert_eq!(cdr.disposition, disposition, "{name}: {cdr:?}");
        assert_eq!(cdr.sip_status, Some(status), "{name}: {cdr:?}");
    }
    node.shutdown().await;
}

/// Replaces extension `number`'s settings through the REST API, as an
/// administrator would (PUT keeps its password).
/// Changes the test tenant through the API.
async fn put_tenant(node: &PbxNode, body: serde_json::Value) {
    let client = reqwest::Client::new();
    let token = common::admin_token(&client, node.http.addr).await;
    let response = client
        .put(format!(
            "http://{}/api/v1/tenants/{}",
            node.http.addr,
            common::TEST_CODE
        ))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("PUT tenant");
    assert_eq!(response.status().as_u16(), 200);
}

async fn set_extension(node: &PbxNode, number: &str, settings: serde_json::Value) {
    let client = reqwest::Client::new();
    let addr = node.http.addr;
    let token = common::admin_token(&client, addr).await;
    let mut body = serde_json::json!({"number": number});
    body.as_object_mut()
        .expect("object")
        .extend(settings.as_object().expect("settings object").clone());
    let response = client
        .put(format!(
            "http://{addr}/api/v1/tenants/{}/extensions/{number}",
            common::TEST_CODE
        ))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("PUT extension");
    assert_eq!(response.status().as_u16(), 200, "PUT {number}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnd_forwarding_and_ring_timeout_act_on_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = single_node(dir.path()).await;
    add_extension(&node.repo, &tenant, "103").await;
    let sip = node.sip.udp_addr;
    let port_101 = free_udp_addr().port();
    let port_102 = free_udp_addr().port();
    register(sip, "101-TEST", port_101, &work_dir(dir.path(), "reg101")).await;
    // 102 is registered, but nothing answers at its contact: a call that
    // reached it would ring out as 480 after the ring timeout.
    register(sip, "102-TEST", port_102, &work_dir(dir.path(), "reg102")).await;

    set_extension(&node, "102", serde_json::json!({"dnd": true})).await;
    let uac = work_dir(dir.path(), "dnd");
    assert!(
        call(sip, &refused_scenario(486, &uac), "102", &uac).await,
        "DND: busy at once"
    );
    let cdr = cdrs(&node.repo, &tenant, 1).await.remove(0);
    assert_eq!(
        (cdr.disposition.as_str(), cdr.hangup_cause.as_str()),
        ("BUSY", "USER_BUSY")
    );

    // Each forward is answered by 101's phone.
    let forwards = [
        (
            "102",
            serde_json::json!({"dnd": true,
                "forwarding": {"busy": {"enabled": true, "destination": "101"}}}),
        ),
        (
            "102",
            serde_json::json!({"forwarding": {"unconditional": {"enabled": true, "destination": "101"}}}),
        ),
        (
            "103",
            serde_json::json!({"forwarding": {"offline": {"enabled": true, "destination": "101"}}}),
        ),
    ];
    for (index, (number, settings)) in forwards.into_iter().enumerate() {
        set_extension(&node, number, settings.clone()).await;
        let uas = work_dir(dir.path(), &format!("fwd{index}-uas"));
        let phone = callee("uas_answer.xml", port_101, &uas);
        let uac = work_dir(dir.path(), &format!("fwd{index}-uac"));
        assert!(
            call(sip, &sipp_scenario("uac_call.xml"), number, &uac).await,
            "{number} with {settings}: answered"
        );
        assert!(finished(phone, &uas).await, "101 answered {number}'s call");
    }

    // 102's own ring timeout (5 s, the shortest allowed) instead of the
    // node's (3 s): the forks are CANCELled no sooner than 5 s.
    set_extension(&node, "102", serde_json::json!({"ring_timeout_secs": 5})).await;
    let uas = work_dir(dir.path(), "ring-uas");
    let phone = callee("uas_ring_until_cancel.xml", port_102, &uas);
    let uac = work_dir(dir.path(), "ring-uac");
    let started = std::time::Instant::now();
    assert!(
        call(sip, &refused_scenario(480, &uac), "102", &uac).await,
        "no answer: 480"
    );
    let rang = started.elapsed();
    assert!(finished(phone, &uas).await, "102 rang and was CANCELled");
    assert!(
        rang >= Duration::from_secs(5),
        "rang {rang:?}: the extension's 5 s, not the node's 3 s"
    );

    // A disabled tenant's phones are refused once they have authenticated.
    put_tenant(&node, serde_json::json!({"enabled": false})).await;
    let mut phone = common::TestPhone::new(sip, "101-TEST", PASSWORD).await;
    let mut refused = None;
    // The node's directory follows the change through the store's watch.
    for _ in 0..50 {
        let reply = phone
            .register("Contact: <sip:101@127.0.0.1:5999>\r\n")
            .await;
        if reply.status() == Some(403) {
            refused = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("REGISTER of a disabled tenant gets 403");
    assert_eq!(refused.reason(), Some("Tenant Disabled"));
    node.shutdown().await;
}

/// Busy and no-answer forwarding take over after the phones rang, and
/// find-me/follow-me rings its number beside them after its delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_no_answer_and_follow_me_act_after_the_phones_rang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = single_node(dir.path()).await;
    let sip = node.sip.udp_addr;
    let port_101 = free_udp_addr().port();
    let port_102 = free_udp_addr().port();
    register(sip, "101-TEST", port_101, &work_dir(dir.path(), "reg101")).await;
    register(sip, "102-TEST", port_102, &work_dir(dir.path(), "reg102")).await;

    // Each case: 102's settings, what its phone does, and how long the
    // caller waits at least before 101's phone answers.
    let cases = [
        (
            "busy",
            serde_json::json!({"forwarding": {"busy": {"enabled": true, "destination": "101"}}}),
            "uas_busy.xml",
            Duration::ZERO,
        ),
        (
            "no-answer",
            serde_json::json!({"ring_timeout_secs": 5,
                "forwarding": {"busy": {"enabled": false, "destination": ""},
                               "no_answer": {"enabled": true, "destination": "101"}}}),
            "uas_ring_until_cancel.xml",
            Duration::from_secs(5),
        ),
        (
            "follow-me",
            serde_json::json!({"ring_timeout_secs": 30,
                "forwarding": {"no_answer": {"enabled": false, "destination": ""}},
                "find_me_follow_me": {"enabled": true, "number": "101", "delay_secs": 1}}),
            "uas_ring_until_cancel.xml",
            Duration::from_secs(1),
        ),
    ];
    for (index, (case, settings, phone_102, at_least)) in cases.into_iter().enumerate() {
        set_extension(&node, "102", settings).await;
        let work_102 = work_dir(dir.path(), &format!("{case}-102"));
        let rang_102 = callee(phone_102, port_102, &work_102);
        let work_101 = work_dir(dir.path(), &format!("{case}-101"));
        let answers = callee("uas_answer.xml", port_101, &work_101);
        let uac = work_dir(dir.path(), &format!("{case}-uac"));
        let started = std::time::Instant::now();
        assert!(
            call(sip, &sipp_scenario("uac_call.xml"), "102", &uac).await,
            "{case}: the caller is answered"
        );
        assert!(
            finished(rang_102, &work_102).await,
            "{case}: 102 rang first"
        );
        assert!(finished(answers, &work_101).await, "{case}: 101 answered");
        // The caller's script holds the answered call 1 s, then hangs up.
        let took = started.elapsed();
        assert!(
            took >= at_least + Duration::from_secs(1),
            "{case}: answered after {took:?}, before 102 had its {at_least:?}"
        );
        let cdrs = cdrs(&node.repo, &tenant, index + 1).await;
        assert!(
            cdrs.iter()
                .all(|cdr| cdr.disposition == "ANSWERED" && cdr.to == "102"),
            "{case}: {cdrs:?}"
        );
    }
    node.shutdown().await;
}

/// A tenant at its maximum concurrent calls refuses the next one with 503
/// until a call ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenants_concurrent_call_limit_refuses_the_call_past_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = single_node(dir.path()).await;
    let sip = node.sip.udp_addr;
    let port_101 = free_udp_addr().port();
    let port_102 = free_udp_addr().port();
    register(sip, "101-TEST", port_101, &work_dir(dir.path(), "reg101")).await;
    register(sip, "102-TEST", port_102, &work_dir(dir.path(), "reg102")).await;
    put_tenant(
        &node,
        serde_json::json!({"limits": {"max_concurrent_calls": 1}}),
    )
    .await;
    // The node's directory follows the change through the store's watch.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let work_101 = work_dir(dir.path(), "first-101");
    let first_phone = callee("uas_answer.xml", port_101, &work_101);
    let first_work = work_dir(dir.path(), "first-uac");
    let first = caller(
        sip,
        &sipp_scenario("uac_call.xml"),
        "101",
        &first_work,
        Duration::from_secs(4),
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("sipp");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let uac = work_dir(dir.path(), "second-uac");
    assert!(
        call(sip, &refused_scenario(503, &uac), "102", &uac).await,
        "a second call while the first lasts: 503"
    );
    assert!(finished(first, &first_work).await, "the first call went on");
    assert!(finished(first_phone, &work_101).await);
    let refused = cdrs(&node.repo, &tenant, 2)
        .await
        .into_iter()
        .find(|cdr| cdr.to == "102")
        .expect("CDR of the refused call");
    assert_eq!(refused.hangup_cause, "NO_CIRCUIT_AVAILABLE");

    // The first call's slot is free again.
    let work_102 = work_dir(dir.path(), "third-102");
    let phone = callee("uas_answer.xml", port_102, &work_102);
    let uac = work_dir(dir.path(), "third-uac");
    assert!(
        call(sip, &sipp_scenario("uac_call.xml"), "102", &uac).await,
        "after the first call ended, a call goes through"
    );
    assert!(finished(phone, &work_102).await);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_forks_to_every_contact_and_cancels_the_losers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _tenant) = single_node(dir.path()).await;
    let sip = node.sip.udp_addr;
    let desk = free_udp_addr().port();
    let mobile = free_udp_addr().port();
    register(sip, "101-TEST", desk, &work_dir(dir.path(), "reg-desk")).await;
    register(sip, "101-TEST", mobile, &work_dir(dir.path(), "reg-mobile")).await;
    let answering = callee("uas_answer.xml", desk, &work_dir(dir.path(), "desk"));
    let ringing = callee(
        "uas_ring_until_cancel.xml",
        mobile,
        &work_dir(dir.path(), "mobile"),
    );
    assert!(
        call(
            sip,
            &sipp_scenario("uac_call.xml"),
            "101",
            &work_dir(dir.path(), "uac")
        )
        .await
    );
    assert!(
        finished(answering, &work_dir(dir.path(), "desk")).await,
        "desk answered"
    );
    assert!(
        finished(ringing, &work_dir(dir.path(), "mobile")).await,
        "the other device was CANCELled"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_on_node_a_called_via_node_b() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = common::three_node_cluster(dir.path(), 3).await;
    let tenant = create_test_tenant(&nodes[0].repo).await;
    add_extension(&nodes[0].repo, &tenant, "101").await;
    let port = free_udp_addr().port();
    register(
        nodes[0].sip.udp_addr,
        "101-TEST",
        port,
        &work_dir(dir.path(), "reg"),
    )
    .await;
    let phone = callee("uas_answer.xml", port, &work_dir(dir.path(), "uas"));
    assert!(
        call(
            nodes[1].sip.udp_addr,
            &sipp_scenario("uac_call.xml"),
            "101",
            &work_dir(dir.path(), "uac")
        )
        .await
    );
    assert!(finished(phone, &work_dir(dir.path(), "uas")).await);
    let cdrs = cdrs(&nodes[2].repo, &tenant, 1).await;
    assert_eq!(cdrs[0].node_id, 2, "node B handled the call");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_101_of_another_tenant_is_never_reached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = single_node(dir.path()).await;
    let other = node
        .repo
        .create_tenant("Other", "OTHER", "other.pbx.local")
        .await
        .expect("tenant");
    add_extension(&node.repo, &other, "103").await;
    let sip = node.sip.udp_addr;
    // OTHER's 103 is registered; TEST has no 103 at all.
    let listener = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let output = sipp_command(
        &sipp_scenario("register.xml"),
        port,
        &work_dir(dir.path(), "reg"),
    )
    .arg(sip.to_string())
    .args([
        "-s",
        "103-OTHER",
        "-au",
        "103-OTHER",
        "-ap",
        PASSWORD,
        "-t",
        "u1",
    ])
    .output()
    .await
    .expect("sipp");
    assert!(sipp_passed(&output, &work_dir(dir.path(), "reg")));
    let phone = tokio::net::UdpSocket::bind(("127.0.0.1", port))
        .await
        .expect("rebind");
    let uac = work_dir(dir.path(), "uac");
    assert!(call(sip, &refused_scenario(404, &uac), "103", &uac).await);
    let mut buf = [0u8; 2048];
    let heard = tokio::time::timeout(Duration::from_secs(1), phone.recv_from(&mut buf)).await;
    assert!(
        heard.is_err(),
        "OTHER's phone must not ring for TEST's caller"
    );
    let cdrs = cdrs(&node.repo, &tenant, 1).await;
    assert_eq!(cdrs[0].hangup_cause, "UNALLOCATED_NUMBER");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_without_g711_gets_488_and_the_callee_is_not_rung() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = single_node(dir.path()).await;
    let sip = node.sip.udp_addr;
    let phone = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = phone.local_addr().expect("addr").port();
    drop(phone);
    register(sip, "101-TEST", port, &work_dir(dir.path(), "reg")).await;
    let phone = tokio::net::UdpSocket::bind(("127.0.0.1", port))
        .await
        .expect("rebind");
    let uac = work_dir(dir.path(), "uac");
    let g729_only = refused_scenario(488, &uac);
    let text = std::fs::read_to_string(&g729_only)
        .expect("scenario")
        .replace("RTP/AVP 0", "RTP/AVP 18")
        .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000");
    std::fs::write(&g729_only, text).expect("write scenario");
    assert!(
        call(sip, &g729_only, "101", &uac).await,
        "488 Not Acceptable Here"
    );
    let mut buf = [0u8; 2048];
    let rung = tokio::time::timeout(Duration::from_millis(500), phone.recv_from(&mut buf)).await;
    assert!(rung.is_err(), "no INVITE reaches the callee");
    let cdrs = cdrs(&node.repo, &tenant, 1).await;
    assert_eq!(cdrs[0].sip_status, Some(488));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_echo_test_calls_leave_no_port_or_call_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = single_node(dir.path()).await;
    let uac = work_dir(dir.path(), "uac");
    let output = sipp_command(&sipp_scenario("uac_call.xml"), free_udp_addr().port(), &uac)
        .arg(node.sip.udp_addr.to_string())
        .args(["-s", "*43", "-au", "100-TEST", "-ap", PASSWORD, "-t", "u1"])
        .args(["-key", "caller", "100-TEST", "-d", "0"])
        // 10,000 calls, at most 50 at once, 200 started per second; the
        // later -timeout overrides sipp_command's 30 s.
        .args(["-m", "10000", "-l", "50", "-r", "200", "-timeout", "180"])
        .output()
        .await
        .expect("sipp");
    assert!(
        sipp_passed(&output, &uac),
        "every call answered and hung up"
    );
    for _ in 0..100 {
        if node.sip.b2bua.active_calls() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.sip.b2bua.active_calls(), 0);
    assert_eq!(
        node.sip.b2bua.rtp_ports_in_use(),
        0,
        "every RTP port released"
    );
    let written = node.repo.cdrs(&tenant.id, 0, 0).await.expect("CDRs").len();
    assert_eq!(written, 10_000, "one CDR per call");
    node.shutdown().await;
}
