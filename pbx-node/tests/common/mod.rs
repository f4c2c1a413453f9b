//! Helpers shared by the integration tests: free ports, a test tenant and
//! a minimal digest-authenticating SIP UDP client.

use std::net::SocketAddr;
use std::time::Duration;

use md5::{Digest, Md5};
use pbx_node::model::Tenant;
use pbx_node::repo::NewExtension;
use pbx_node::{NodeConfig, Repo};
use sip::message::{parse_datagram, SipMessage};
use tokio::net::UdpSocket;

pub const TEST_CODE: &str = "TEST";
pub const TEST_DOMAIN: &str = "test.pbx.local";
pub const PASSWORD: &str = "correct horse";

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
        data_dir: data_dir.to_path_buf(),
        raft_listen: free_udp_addr(),
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
        self.socket
            .send_to(text.as_bytes(), self.server)
            .await
            .expect("send");
        let mut buf = vec![0u8; 65_535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), self.socket.recv_from(&mut buf))
            .await
            .expect("response within 10 s")
            .expect("recv");
        parse_datagram(&buf[..n]).expect("parsable response")
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
