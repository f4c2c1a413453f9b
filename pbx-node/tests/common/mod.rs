//! Helpers shared by the integration tests: free ports, a test tenant and
//! a minimal digest-authenticating SIP UDP client, a 3-node cluster and sipp.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use md5::{Digest, Md5};
use pbx_node::model::Tenant;
use pbx_node::repo::NewExtension;
use pbx_node::{NodeConfig, PbxNode, Repo};
use raft_store::{ClusterCa, RaftStore, StoreConfig};
use sip::message::{parse_datagram, SipMessage};
use tokio::net::UdpSocket;

pub const TEST_CODE: &str = "TEST";
pub const TEST_DOMAIN: &str = "test.pbx.local";
pub const PASSWORD: &str = "correct horse";
/// The system administrator's password on every test node.
pub const ADMIN_PASSWORD: &str = "admin-pass-2024";

/// A UDP port on 127.0.0.1 that was free a moment ago (raft's QUIC needs a
/// real port because peers dial the advertised address).
pub fn free_udp_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
}

/// A node config on loopback with ephemeral SIP ports.
pub fn loopback_config(node_id: u64, data_dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        node_id,
        sip_udp_listen: "127.0.0.1:0".parse().expect("addr"),
        sip_tcp_listen: "127.0.0.1:0".parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: data_dir.to_path_buf(),
        raft_listen: free_udp_addr(),
        admin_password: Some(ADMIN_PASSWORD.into()),
        ..NodeConfig::default()
    }
}

/// Tenant TEST with extension 100 (username `100-TEST`, password [`PASSWORD`]).
pub async fn create_test_tenant(repo: &Repo) -> Tenant {
    let tenant = repo
        .create_tenant("Test", TEST_CODE, TEST_DOMAIN)
        .await
        .expect("create tenant");
    repo.create_extension(
        &tenant,
        NewExtension {
            number: "100".into(),
            display_name: "Test 100".into(),
            username: None,
            password: PASSWORD.into(),
        },
    )
    .await
    .expect("create extension");
    tenant
}

fn md5_hex(text: &str) -> String {
    hex::encode(Md5::digest(text.as_bytes()))
}

/// The nonce of the MD5 challenge in a 401.
fn md5_nonce(response: &SipMessage) -> String {
    let challenge = response
        .headers
        .get_all("WWW-Authenticate")
        .find(|v| v.contains("algorithm=MD5"))
        .expect("MD5 challenge");
    let start = challenge.find("nonce=\"").expect("nonce") + "nonce=\"".len();
    let rest = &challenge[start..];
    rest[..rest.find('"').expect("closing quote")].to_string()
}

/// A phone: registers `user` at `server` over UDP with digest auth.
pub struct TestPhone {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    pub user: String,
    pub password: String,
    pub call_id: String,
    pub cseq: u32,
}

impl TestPhone {
    pub async fn new(server: SocketAddr, user: &str, password: &str) -> TestPhone {
        TestPhone {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("bind phone"),
            server,
            user: user.into(),
            password: password.into(),
            call_id: sip::message::new_call_id(),
            cseq: 0,
        }
    }

    fn request(&mut self, extra: &str) -> String {
        self.cseq += 1;
        let local = self.socket.local_addr().expect("local addr");
        format!(
            "REGISTER sip:{TEST_DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={}\r\n\
             From: <sip:{user}@{TEST_DOMAIN}>;tag=p1\r\nTo: <sip:{user}@{TEST_DOMAIN}>\r\n\
             Call-ID: {}\r\nCSeq: {} REGISTER\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n",
            sip::message::new_branch(),
            self.call_id,
            self.cseq,
            user = self.user,
        )
    }

    async fn exchange(&self, text: &str) -> SipMessage {
        self.send_raw(text.as_bytes()).await
    }

    /// Sends a REGISTER with `headers` (Contact, Expires …), answers the
    /// challenge and returns the final response.
    pub async fn register(&mut self, headers: &str) -> SipMessage {
        let first = self.request(headers);
        let challenge = self.exchange(&first).await;
        assert_eq!(
            challenge.status(),
            Some(401),
            "first REGISTER is challenged"
        );
        let nonce = md5_nonce(&challenge);
        let ha1 = md5_hex(&format!("{}:{TEST_DOMAIN}:{}", self.user, self.password));
        let ha2 = md5_hex(&format!("REGISTER:sip:{TEST_DOMAIN}"));
        let response = md5_hex(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
        let authorization = format!(
            "Authorization: Digest username=\"{}\", realm=\"{TEST_DOMAIN}\", nonce=\"{nonce}\", \
             uri=\"sip:{TEST_DOMAIN}\", response=\"{response}\", algorithm=MD5, qop=auth, \
             nc=00000001, cnonce=\"c0ffee\"\r\n",
            self.user
        );
        let second = self.request(&format!("{headers}{authorization}"));
        self.exchange(&second).await
    }

    /// Sends raw bytes and returns the parsed reply.
    pub async fn send_raw(&self, bytes: &[u8]) -> SipMessage {
        self.socket.send_to(bytes, self.server).await.expect("send");
        let mut buf = vec![0u8; 65_535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), self.socket.recv_from(&mut buf))
            .await
            .expect("response within 10 s")
            .expect("recv");
        parse_datagram(&buf[..n]).expect("parsable response")
    }
}

/// A 3-node raft cluster in this process with a PBX served on the first
/// `pbx_nodes` of them; the stores without a PBX are returned beside.
pub async fn three_node_cluster(
    dir: &std::path::Path,
    pbx_nodes: usize,
) -> (Vec<PbxNode>, Vec<RaftStore>) {
    let ca = ClusterCa::generate("pbx").expect("CA");
    let mut stores = Vec::new();
    let mut configs = Vec::new();
    for id in 1..=3u64 {
        let config = loopback_config(id, &dir.join(format!("node-{id}")));
        let identity = ca.issue_node(id).expect("node certificate");
        let store_config = StoreConfig::new(
            id,
            config.raft_listen,
            config.data_dir.join("raft"),
            identity,
        );
        let store = RaftStore::start(store_config, &prometheus::Registry::new())
            .await
            .expect("start store");
        stores.push(store);
        configs.push(config);
    }
    stores[0].initialize().await.expect("initialize");
    for (store, config) in stores.iter().zip(&configs).skip(1) {
        stores[0]
            .add_learner(store.node_id(), &config.raft_listen.to_string())
            .await
            .expect("add learner");
    }
    stores[0]
        .change_voters(std::collections::BTreeSet::from([1, 2, 3]))
        .await
        .expect("change voters");
    let mut nodes = Vec::new();
    for (store, config) in stores.iter().zip(&configs).take(pbx_nodes) {
        let config = NodeConfig {
            ring_timeout_secs: 3,
            // sipp 3.6 answers only the first challenge, and only MD5.
            sip_digest_sha256: false,
            ..config.clone()
        };
        nodes.push(
            PbxNode::serve(&config, store.clone(), prometheus::Registry::new())
                .await
                .expect("serve PBX"),
        );
    }
    (nodes, stores.split_off(pbx_nodes))
}

/// The path of a sipp scenario under tests/sipp.
pub fn sipp_scenario(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

/// A sipp command on 127.0.0.1:`local_port` that runs `scenario` once,
/// bounded in time, logging errors into `work`.
pub fn sipp_command(
    scenario: &std::path::Path,
    local_port: u16,
    work: &std::path::Path,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("sipp");
    command
        .args(["-sf", &scenario.to_string_lossy()])
        .args(["-i", "127.0.0.1", "-p", &local_port.to_string()])
        .args([
            "-m",
            "1",
            "-timeout",
            "30",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
        ])
        .current_dir(work)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Whether sipp passed; on failure its output and logs are printed.
pub fn sipp_passed(output: &std::process::Output, work: &std::path::Path) -> bool {
    if !output.status.success() {
        eprintln!("sipp stdout:\n{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("sipp stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        for entry in std::fs::read_dir(work).into_iter().flatten().flatten() {
            eprintln!(
                "{}:\n{}",
                entry.path().display(),
                std::fs::read_to_string(entry.path()).unwrap_or_default()
            );
        }
    }
    output.status.success()
}

/// A GET as the system administrator: the status code and the body as text.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, body) = http_get_bytes(addr, path).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A GET as the system administrator: the status code and the body.
pub async fn http_get_bytes(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let client = reqwest::Client::new();
    let token = admin_token(&client, addr).await;
    let response = client
        .get(format!("http://{addr}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body").to_vec())
}

/// Logs in as `admin` ([`ADMIN_PASSWORD`]); the bearer token.
pub async fn admin_token(client: &reqwest::Client, addr: SocketAddr) -> String {
    let response = client
        .post(format!("http://{addr}/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status().as_u16(), 200, "admin login");
    let body: serde_json::Value = response.json().await.expect("login body");
    body["token"].as_str().expect("token").to_string()
}

/// Node logs, shown with a failing test's output.
pub fn init_test_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,openraft=warn,pbx_node=debug,sip=debug")
        .with_test_writer()
        .try_init();
}
