//! Just enough of rtpengine's ng control protocol (bencoded dictionaries
//! over UDP, each prefixed by a cookie) to offer, answer and delete calls.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bencode {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Bencode>),
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    pub fn str(s: &str) -> Self {
        Bencode::Bytes(s.as_bytes().to_vec())
    }

    pub fn dict(entries: &[(&str, Bencode)]) -> Self {
        Bencode::Dict(
            entries
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                .collect(),
        )
    }

    /// Dictionary keys come out sorted (BTreeMap), as bencode requires.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Bencode::List(items) => {
                out.push(b'l');
                items.iter().for_each(|item| item.encode(out));
                out.push(b'e');
            }
            Bencode::Dict(entries) => {
                out.push(b'd');
                for (k, v) in entries {
                    Bencode::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    pub fn decode(input: &[u8]) -> Result<Self> {
        let (value, rest) = Self::decode_prefix(input, 0)?;
        if !rest.is_empty() {
            bail!("{} bytes after the bencoded value", rest.len());
        }
        Ok(value)
    }

    fn decode_prefix(input: &[u8], depth: usize) -> Result<(Self, &[u8])> {
        if depth > 32 {
            bail!("bencode nested too deeply");
        }
        match input.first() {
            Some(b'i') => {
                let end = find(input, b'e')?;
                let text = std::str::from_utf8(&input[1..end])?;
                Ok((Bencode::Int(text.parse()?), &input[end + 1..]))
            }
            Some(b'l') => {
                let mut rest = &input[1..];
                let mut items = Vec::new();
                while rest.first() != Some(&b'e') {
                    let (item, after) = Self::decode_prefix(rest, depth + 1)?;
                    items.push(item);
                    rest = after;
                }
                Ok((Bencode::List(items), &rest[1..]))
            }
            Some(b'd') => {
                let mut rest = &input[1..];
                let mut entries = BTreeMap::new();
                while rest.first() != Some(&b'e') {
                    let (Bencode::Bytes(key), after) = Self::decode_prefix(rest, depth + 1)? else {
                        bail!("bencode dictionary key is not a string");
                    };
                    let (value, after) = Self::decode_prefix(after, depth + 1)?;
                    entries.insert(key, value);
                    rest = after;
                }
                Ok((Bencode::Dict(entries), &rest[1..]))
            }
            Some(b'0'..=b'9') => {
                let colon = find(input, b':')?;
                let len: usize = std::str::from_utf8(&input[..colon])?.parse()?;
                let body = input
                    .get(colon + 1..colon + 1 + len)
                    .ok_or_else(|| anyhow!("bencode string runs past the end"))?;
                Ok((Bencode::Bytes(body.to_vec()), &input[colon + 1 + len..]))
            }
            Some(other) => bail!("unexpected bencode byte {other:#x}"),
            None => bail!("bencode value missing"),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Bencode::Dict(entries) => entries.get(key.as_bytes()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Bencode::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

fn find(input: &[u8], byte: u8) -> Result<usize> {
    input
        .iter()
        .position(|&b| b == byte)
        .ok_or_else(|| anyhow!("unterminated bencode value"))
}

/// An SDP body offering PCMU from `port` on 127.0.0.1.
pub fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

/// The RTP address an SDP body gives (first `c=` and `m=audio` lines).
pub fn media_address(sdp: &str) -> Result<SocketAddrV4> {
    let mut ip = None;
    let mut port = None;
    for line in sdp.lines() {
        if let Some(rest) = line.strip_prefix("c=IN IP4 ") {
            ip.get_or_insert(rest.trim().parse::<Ipv4Addr>()?);
        } else if let Some(rest) = line.strip_prefix("m=audio ") {
            let text = rest.split_whitespace().next().unwrap_or_default();
            port.get_or_insert(text.parse::<u16>()?);
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) => Ok(SocketAddrV4::new(ip, port)),
        _ => bail!("no c=/m=audio address in SDP:\n{sdp}"),
    }
}

pub struct NgClient {
    socket: UdpSocket,
    next_cookie: u64,
}

impl NgClient {
    pub fn connect(server: SocketAddr) -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        Ok(NgClient {
            socket,
            next_cookie: 0,
        })
    }

    /// Sends one command and returns the reply dictionary, retrying on
    /// timeout with the same cookie (rtpengine answers repeats from a
    /// cache, so a retried offer does not allocate twice).
    pub fn request(&mut self, command: &Bencode) -> Result<Bencode> {
        self.next_cookie += 1;
        let cookie = format!("{}_{}", std::process::id(), self.next_cookie);
        let mut message = format!("{cookie} ").into_bytes();
        command.encode(&mut message);
        let mut buf = vec![0u8; 65536];
        for _ in 0..5 {
            self.socket.send(&message).context("sending to rtpengine")?;
            loop {
                let len = match self.socket.recv(&mut buf) {
                    Ok(len) => len,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break;
                    }
                    Err(e) => return Err(e).context("receiving from rtpengine"),
                };
                let reply = &buf[..len];
                let Some(body) = reply
                    .strip_prefix(cookie.as_bytes())
                    .and_then(|r| r.strip_prefix(b" "))
                else {
                    // A late reply to an earlier retried request.
                    continue;
                };
                let reply = Bencode::decode(body).context("rtpengine reply")?;
                return match reply.get("result").and_then(Bencode::as_str) {
                    Some("ok") => Ok(reply),
                    _ => bail!(
                        "rtpengine refused the command: {}",
                        reply
                            .get("error-reason")
                            .and_then(Bencode::as_str)
                            .unwrap_or("no reason given")
                    ),
                };
            }
        }
        bail!("rtpengine did not answer (is it running on the ng port?)")
    }

    /// Offer from `a` then answer from `b`: returns (where A sends, where
    /// B sends), rtpengine's two ports for the call.
    pub fn create_call(
        &mut self,
        call_id: &str,
        a: u16,
        b: u16,
    ) -> Result<(SocketAddrV4, SocketAddrV4)> {
        let offer = self.request(&Bencode::dict(&[
            ("command", Bencode::str("offer")),
            ("call-id", Bencode::str(call_id)),
            ("from-tag", Bencode::str("a")),
            ("sdp", Bencode::str(&sdp(a))),
        ]))?;
        let b_to = media_address(reply_sdp(&offer)?)?;
        let answer = self.request(&Bencode::dict(&[
            ("command", Bencode::str("answer")),
            ("call-id", Bencode::str(call_id)),
            ("from-tag", Bencode::str("a")),
            ("to-tag", Bencode::str("b")),
            ("sdp", Bencode::str(&sdp(b))),
        ]))?;
        let a_to = media_address(reply_sdp(&answer)?)?;
        Ok((a_to, b_to))
    }

    pub fn delete(&mut self, call_id: &str) -> Result<()> {
        self.request(&Bencode::dict(&[
            ("command", Bencode::str("delete")),
            ("call-id", Bencode::str(call_id)),
        ]))?;
        Ok(())
    }
}

fn reply_sdp(reply: &Bencode) -> Result<&str> {
    reply
        .get("sdp")
        .and_then(Bencode::as_str)
        .ok_or_else(|| anyhow!("rtpengine reply without SDP"))
}
