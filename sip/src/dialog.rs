//! Dialogs (RFC 3261 §12): identity, CSeq spaces, route set and remote
//! target, and building in-dialog requests (BYE, re-INVITE, UPDATE, ACK for
//! 2xx, PRACK with RAck per RFC 3262). Only loose routing is supported.

use crate::message::{Method, NameAddr, RequestBuilder, SipMessage, Uri};

/// Call-ID plus both tags (§12).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Created by a provisional response with a To tag.
    Early,
    Confirmed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error("{0}")]
    Header(#[from] crate::message::HeaderError),
    #[error("response carries no To tag")]
    NoRemoteTag,
    #[error("request carries no From tag")]
    NoFromTag,
    #[error("message needs exactly one Contact")]
    NoContact,
    #[error("response status {0} does not create or confirm a dialog")]
    WrongStatus(u16),
    #[error("CSeq {got} is lower than {last} (§12.2.2: answer 500)")]
    CSeqOutOfOrder { got: u32, last: u32 },
    #[error("reliable provisional response has no valid RSeq")]
    NoRSeq,
}

/// The state of one dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub id: DialogId,
    pub state: DialogState,
    /// The next request we send uses `local_seq + 1`.
    pub local_seq: u32,
    /// The highest CSeq seen from the peer (None for a UAC until it gets a request).
    pub remote_seq: Option<u32>,
    /// Our From (UAC) / To (UAS) address without the tag.
    pub local_uri: NameAddr,
    pub remote_uri: NameAddr,
    /// Where in-dialog requests go: the peer's Contact.
    pub remote_target: Uri,
    /// Route headers for in-dialog requests, in order.
    pub route_set: Vec<NameAddr>,
}

fn without_tag(mut addr: NameAddr) -> NameAddr {
    addr.params.retain(|p| !p.name.eq_ignore_ascii_case("tag"));
    addr
}

fn single_contact(msg: &SipMessage) -> Result<Uri, DialogError> {
    let contacts = msg.contacts()?;
    match contacts.as_slice() {
        [c] => c
            .address()
            .map(|a| a.uri.clone())
            .ok_or(DialogError::NoContact),
        _ => Err(DialogError::NoContact),
    }
}

impl Dialog {
    /// The UAC side, from our request and a 1xx (with To tag) or 2xx response.
    pub fn as_uac(request: &SipMessage, response: &SipMessage) -> Result<Self, DialogError> {
        let status = response.status().unwrap_or(0);
        let state = match status {
            101..=199 => DialogState::Early,
            200..=299 => DialogState::Confirmed,
            other => return Err(DialogError::WrongStatus(other)),
        };
        let from = request.from()?;
        let to = response.to()?;
        let mut route_set = response.record_routes()?;
        route_set.reverse();
        Ok(Self {
            id: DialogId {
                call_id: request.call_id()?.to_string(),
                local_tag: from.tag().ok_or(DialogError::NoFromTag)?.to_string(),
                remote_tag: to.tag().ok_or(DialogError::NoRemoteTag)?.to_string(),
            },
            state,
            local_seq: request.cseq()?.seq,
            remote_seq: None,
            local_uri: without_tag(from),
            remote_uri: without_tag(to),
            remote_target: single_contact(response)?,
            route_set,
        })
    }

    /// The UAS side, from the dialog-creating request and the To tag we chose;
    /// `early` when answering with a 1xx first.
    pub fn as_uas(request: &SipMessage, local_tag: &str, early: bool) -> Result<Self, DialogError> {
        let from = request.from()?;
        Ok(Self {
            id: DialogId {
                call_id: request.call_id()?.to_string(),
                local_tag: local_tag.to_string(),
                remote_tag: from.tag().ok_or(DialogError::NoFromTag)?.to_string(),
            },
            state: if early {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            local_seq: 0,
            remote_seq: Some(request.cseq()?.seq),
            local_uri: without_tag(request.to()?),
            remote_uri: without_tag(from),
            remote_target: single_contact(request)?,
            route_set: request.record_routes()?,
        })
    }

    /// A UAC's dialog sees a later response: a 2xx confirms it and its
    /// Record-Route replaces the early route set (§13.2.2.4); Contact
    /// refreshes the target.
    pub fn update_from_response(&mut self, response: &SipMessage) -> Result<(), DialogError> {
        let status = response.status().unwrap_or(0);
        if let Ok(target) = single_contact(response) {
            self.remote_target = target;
        }
        if (200..300).contains(&status) && self.state == DialogState::Early {
            self.state = DialogState::Confirmed;
            let mut route_set = response.record_routes()?;
            route_set.reverse();
            self.route_set = route_set;
        }
        Ok(())
    }

    /// Checks and records an in-dialog request from the peer (§12.2.2):
    /// CSeq must not go backwards; target refresh requests update the target.
    pub fn handle_remote_request(&mut self, request: &SipMessage) -> Result<(), DialogError> {
        let cseq = request.cseq()?;
        let in_order_exempt = matches!(cseq.method, Method::Ack | Method::Cancel);
        if let Some(last) = self.remote_seq {
            if !in_order_exempt && cseq.seq < last {
                return Err(DialogError::CSeqOutOfOrder {
                    got: cseq.seq,
                    last,
                });
            }
        }
        if !in_order_exempt {
            self.remote_seq = Some(cseq.seq);
        }
        if matches!(
            cseq.method,
            Method::Invite | Method::Update | Method::Subscribe | Method::Notify
        ) {
            if let Ok(target) = single_contact(request) {
                self.remote_target = target;
            }
        }
        Ok(())
    }

    fn builder(&self, method: Method, seq: u32) -> RequestBuilder {
        let mut remote = self.remote_uri.clone();
        remote.set_param("tag", Some(self.id.remote_tag.clone()));
        let mut builder = RequestBuilder::new(method, self.remote_target.clone())
            .from(&self.local_uri.to_string(), Some(&self.id.local_tag))
            .to(&remote.to_string())
            .call_id(&self.id.call_id)
            .cseq(seq);
        for route in &self.route_set {
            builder = builder.header("Route", route.to_string());
        }
        builder
    }

    /// A new in-dialog request (BYE, re-INVITE, UPDATE, INFO, ...) with the
    /// next local CSeq. The caller adds Via (and Contact/body as needed).
    pub fn new_request(&mut self, method: Method) -> RequestBuilder {
        self.local_seq = self.local_seq.wrapping_add(1);
        self.builder(method, self.local_seq)
    }

    /// The ACK for a 2xx to the INVITE with CSeq `invite_seq` (§13.2.2.4).
    pub fn ack(&self, invite_seq: u32) -> RequestBuilder {
        self.builder(Method::Ack, invite_seq)
    }

    /// A PRACK for a reliable provisional response (RFC 3262 §7.2).
    pub fn prack(&mut self, provisional: &SipMessage) -> Result<RequestBuilder, DialogError> {
        let rseq = provisional
            .headers
            .get("RSeq")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or(DialogError::NoRSeq)?;
        let cseq = provisional.cseq()?;
        Ok(self
            .new_request(Method::Prack)
            .header("RAck", format!("{rseq} {} {}", cseq.seq, cseq.method)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse_datagram;

    fn invite() -> SipMessage {
        RequestBuilder::new(Method::Invite, "sip:bob@example.com".parse().unwrap())
            .via("UDP", "192.0.2.1", Some(5060))
            .from("<sip:alice@example.com>", Some("a1"))
            .to("<sip:bob@example.com>")
            .call_id("call-1")
            .cseq(10)
            .header("Contact", "<sip:alice@192.0.2.1>")
            .header(
                "Record-Route",
                "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
            )
            .build()
    }

    fn answer(request: &SipMessage, status: u16) -> SipMessage {
        let mut resp = request.response(status);
        resp.headers.set("To", "<sip:bob@example.com>;tag=b1");
        resp.headers.push("Contact", "<sip:bob@192.0.2.2:5070>");
        // The request's Record-Route is copied by `response` (§12.1.1).
        resp.headers.push("RSeq", "7");
        resp
    }

    #[test]
    fn uac_dialog_builds_in_dialog_requests() {
        let req = invite();
        let mut dialog = Dialog::as_uac(&req, &answer(&req, 183)).unwrap();
        assert_eq!(dialog.state, DialogState::Early);
        assert_eq!(
            dialog.id,
            DialogId {
                call_id: "call-1".into(),
                local_tag: "a1".into(),
                remote_tag: "b1".into()
            }
        );
        let route: Vec<String> = dialog.route_set.iter().map(|r| r.uri.to_string()).collect();
        assert_eq!(
            route,
            ["sip:p2.example.com;lr", "sip:p1.example.com;lr"],
            "reversed for the UAC"
        );

        let prack = dialog
            .prack(&answer(&req, 183))
            .unwrap()
            .via("UDP", "192.0.2.1", None)
            .build();
        let prack = parse_datagram(&prack.to_bytes()).unwrap();
        assert_eq!(prack.headers.get("RAck"), Some("7 10 INVITE"));
        assert_eq!(prack.cseq().unwrap().seq, 11);

        dialog.update_from_response(&answer(&req, 200)).unwrap();
        assert_eq!(dialog.state, DialogState::Confirmed);
        let ack = dialog.ack(10).via("UDP", "192.0.2.1", None).build();
        assert_eq!(ack.cseq().unwrap().seq, 10);
        assert_eq!(ack.cseq().unwrap().method, Method::Ack);

        let bye = dialog
            .new_request(Method::Bye)
            .via("UDP", "192.0.2.1", None)
            .build();
        let bye = parse_datagram(&bye.to_bytes()).unwrap();
        assert_eq!(
            bye.request_uri().unwrap().to_string(),
            "sip:bob@192.0.2.2:5070"
        );
        assert_eq!(bye.cseq().unwrap().seq, 12);
        assert_eq!(bye.from().unwrap().tag(), Some("a1"));
        assert_eq!(bye.to().unwrap().tag(), Some("b1"));
        assert_eq!(
            bye.routes().unwrap()[0].uri.to_string(),
            "sip:p2.example.com;lr"
        );
        assert_eq!(bye.call_id().unwrap(), "call-1");
    }

    #[test]
    fn uas_dialog_checks_remote_cseq_and_refreshes_target() {
        let req = invite();
        let mut dialog = Dialog::as_uas(&req, "b1", false).unwrap();
        assert_eq!(dialog.remote_seq, Some(10));
        assert_eq!(
            dialog.route_set[0].uri.to_string(),
            "sip:p1.example.com;lr",
            "not reversed for the UAS"
        );
        let mut reinvite = req.clone();
        reinvite.headers.set("CSeq", "11 INVITE");
        reinvite.headers.set("Contact", "<sip:alice@198.51.100.7>");
        dialog.handle_remote_request(&reinvite).unwrap();
        assert_eq!(dialog.remote_target.to_string(), "sip:alice@198.51.100.7");
        let mut old = req.clone();
        old.headers.set("CSeq", "9 BYE");
        assert_eq!(
            dialog.handle_remote_request(&old),
            Err(DialogError::CSeqOutOfOrder { got: 9, last: 11 })
        );
        let update = dialog.new_request(Method::Update).build();
        assert_eq!(update.cseq().unwrap().seq, 1);
        assert_eq!(update.to().unwrap().tag(), Some("a1"));
        assert_eq!(update.from().unwrap().tag(), Some("b1"));
    }

    #[test]
    fn dialog_needs_tags_and_contact() {
        let req = invite();
        let mut no_tag = answer(&req, 200);
        no_tag.headers.set("To", "<sip:bob@example.com>");
        assert_eq!(Dialog::as_uac(&req, &no_tag), Err(DialogError::NoRemoteTag));
        assert_eq!(
            Dialog::as_uac(&req, &answer(&req, 100)),
            Err(DialogError::WrongStatus(100))
        );
        let mut no_contact = req.clone();
        no_contact.headers.remove("Contact");
        assert_eq!(
            Dialog::as_uas(&no_contact, "b1", true),
            Err(DialogError::NoContact)
        );
    }
}
