//! Signed tokens the SBC puts in URIs it hands out, so that what comes back
//! in a Route, Path or Request-URI can be trusted without per-dialog state:
//!
//! * a **flow token** (RFC 5626 §5.2) names the client connection or NAT
//!   address a phone talks to us over; the pbx-nodes see it in Path and in
//!   the phone's rewritten Contact, and requests carrying it go out over
//!   that very flow;
//! * a **node token** names a pbx-node by its index in the configuration
//!   and keeps the user part and parameters of its Contact; phones see it in
//!   place of the node's address (topology hiding).
//!
//! A token is base64url(HMAC-SHA256(key, payload)[..10] ‖ payload). The tag
//! stops a phone from forging a token that would make the SBC send traffic
//! to an address of its choosing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sip::transport::Transport;

const TAG_LEN: usize = 10;

/// The secret tokens are signed with, as an HMAC already keyed: keying
/// hashes the key twice, and almost every message seals or opens a token.
#[derive(Clone)]
pub struct TokenKey(Hmac<Sha256>);

impl TokenKey {
    pub fn generate() -> Self {
        Self::from_bytes(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        // HMAC takes keys of any length: this cannot fail.
        TokenKey(<Hmac<Sha256> as Mac>::new_from_slice(&bytes).unwrap_or_else(|_| unreachable!()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        self.0.clone()
    }

    pub fn seal(&self, payload: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(payload);
        let tag = mac.finalize().into_bytes();
        let mut raw = Vec::with_capacity(TAG_LEN + payload.len());
        raw.extend_from_slice(&tag[..TAG_LEN]);
        raw.extend_from_slice(payload);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The payload of a token this key sealed; `None` for anything else.
    pub fn open(&self, token: &str) -> Option<Vec<u8>> {
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() < TAG_LEN {
            return None;
        }
        let (tag, payload) = raw.split_at(TAG_LEN);
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_truncated_left(tag).ok()?;
        Some(payload.to_vec())
    }
}

/// How a phone reaches us: the transport and its address as we see it
/// (after NAT). Stream transports are one connection per address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: Transport,
    pub remote: SocketAddr,
}

fn transport_code(transport: Transport) -> u8 {
    match transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
        Transport::Ws => 3,
        Transport::Wss => 4,
    }
}

fn transport_of(code: u8) -> Option<Transport> {
    Some(match code {
        0 => Transport::Udp,
        1 => Transport::Tcp,
        2 => Transport::Tls,
        3 => Transport::Ws,
        4 => Transport::Wss,
        _ => return None,
    })
}

impl Flow {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(transport_code(self.transport));
        match self.remote.ip() {
            IpAddr::V4(v4) => {
                out.push(4);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.push(6);
                out.extend_from_slice(&v6.octets());
            }
        }
        out.extend_from_slice(&self.remote.port().to_be_bytes());
    }

    /// Reads a flow from the front of `bytes`; returns it and the rest.
    fn decode(bytes: &[u8]) -> Option<(Flow, &[u8])> {
        let (&transport, rest) = bytes.split_first()?;
        let (&family, rest) = rest.split_first()?;
        let (ip, rest) = match family {
            4 => {
                let (octets, rest) = rest.split_first_chunk::<4>()?;
                (IpAddr::V4(Ipv4Addr::from(*octets)), rest)
            }
            6 => {
                let (octets, rest) = rest.split_first_chunk::<16>()?;
                (IpAddr::V6(Ipv6Addr::from(*octets)), rest)
            }
            _ => return None,
        };
        let (port, rest) = rest.split_first_chunk::<2>()?;
        let flow = Flow {
            transport: transport_of(transport)?,
            remote: SocketAddr::new(ip, u16::from_be_bytes(*port)),
        };
        Some((flow, rest))
    }
}

/// Kinds of token, so one kind can never be passed off as another.
const FLOW: u8 = b'f';
const FLOW_CONTACT: u8 = b'c';
const NODE_CONTACT: u8 = b'n';

/// Flow tokens (Path, Via) and the phone's Contact behind a flow.
impl TokenKey {
    pub fn flow_token(&self, flow: &Flow) -> String {
        let mut payload = vec![FLOW];
        flow.encode(&mut payload);
        self.seal(&payload)
    }

    pub fn open_flow(&self, token: &str) -> Option<Flow> {
        let payload = self.open(token)?;
        let (&kind, rest) = payload.split_first()?;
        let (flow, rest) = Flow::decode(rest).filter(|_| kind == FLOW)?;
        rest.is_empty().then_some(flow)
    }

    /// A phone's Contact URI as the nodes see it: the flow to reach it by
    /// and its own URI, to restore as the Request-URI.
    pub fn flow_contact_token(&self, flow: &Flow, contact_uri: &str) -> String {
        let mut payload = vec![FLOW_CONTACT];
        flow.encode(&mut payload);
        payload.extend_from_slice(contact_uri.as_bytes());
        self.seal(&payload)
    }

    pub fn open_flow_contact(&self, token: &str) -> Option<(Flow, String)> {
        let payload = self.open(token)?;
        let (&kind, rest) = payload.split_first()?;
        let (flow, uri) = Flow::decode(rest).filter(|_| kind == FLOW_CONTACT)?;
        Some((flow, String::from_utf8(uri.to_vec()).ok()?))
    }

    /// A node's Contact as phones see it: the node's index and the user
    /// and parameters of its Contact URI, never its address.
    pub fn node_contact_token(&self, node: usize, user: &str, params: &str) -> Option<String> {
        let node = u16::try_from(node).ok()?;
        let user_len = u16::try_from(user.len()).ok()?;
        let mut payload = vec![NODE_CONTACT];
        payload.extend_from_slice(&node.to_be_bytes());
        payload.extend_from_slice(&user_len.to_be_bytes());
        payload.extend_from_slice(user.as_bytes());
        payload.extend_from_slice(params.as_bytes());
        Some(self.seal(&payload))
    }

    /// The node index, Contact user and Contact parameters.
    pub fn open_node_contact(&self, token: &str) -> Option<(usize, String, String)> {
        let payload = self.open(token)?;
        let (&kind, rest) = payload.split_first()?;
        if kind != NODE_CONTACT {
            return None;
        }
        let (node, rest) = rest.split_first_chunk::<2>()?;
        let (user_len, rest) = rest.split_first_chunk::<2>()?;
        let user_len = usize::from(u16::from_be_bytes(*user_len));
        let user = rest.get(..user_len)?;
        let params = rest.get(user_len..)?;
        Some((
            usize::from(u16::from_be_bytes(*node)),
            String::from_utf8(user.to_vec()).ok()?,
            String::from_utf8(params.to_vec()).ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(transport: Transport, remote: &str) -> Flow {
        Flow {
            transport,
            remote: remote.parse().unwrap(),
        }
    }

    #[test]
    fn tokens_round_trip_and_stay_uri_safe() {
        let key = TokenKey::generate();
        for f in [
            flow(Transport::Udp, "192.0.2.10:5060"),
            flow(Transport::Wss, "[2001:db8::7]:44321"),
        ] {
            let token = key.flow_token(&f);
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(key.open_flow(&token), Some(f));
            let contact = key.flow_contact_token(&f, "sip:200@10.1.1.1:5062;ob");
            assert_eq!(
                key.open_flow_contact(&contact),
                Some((f, "sip:200@10.1.1.1:5062;ob".to_string()))
            );
        }
        let node = key.node_contact_token(2, "pbx", ";transport=tcp").unwrap();
        assert_eq!(
            key.open_node_contact(&node),
            Some((2, "pbx".into(), ";transport=tcp".into()))
        );
    }

    #[test]
    fn forged_tampered_or_foreign_tokens_are_refused() {
        let key = TokenKey::generate();
        let f = flow(Transport::Tls, "198.51.100.1:5061");
        let token = key.flow_token(&f);
        assert_eq!(TokenKey::generate().open_flow(&token), None, "other key");
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        *raw.last_mut().unwrap() ^= 1;
        assert_eq!(
            key.open_flow(&URL_SAFE_NO_PAD.encode(raw)),
            None,
            "tampered"
        );
        // A flow token is not a contact token, nor a node token.
        assert_eq!(key.open_flow_contact(&token), None);
        assert_eq!(key.open_node_contact(&token), None);
        for junk in ["", "a", "!!!", "pbx", &"A".repeat(40)] {
            assert_eq!(key.open_flow(junk), None, "{junk}");
            assert_eq!(key.open_node_contact(junk), None, "{junk}");
        }
    }
}
