//! A call the node answers itself (the echo test; later IVR, voicemail,
//! conferences), sans-IO: the caller's UAS dialog with our SDP answer, our
//! 2xx resent until the ACK, re-INVITEs answered (hold changes only the
//! direction), BYE from either side. The media application runs beside it
//! in the driver and learns the caller's media from [`LocalCall::remote_media`].

use std::collections::HashSet;
use std::time::Instant;

use sip::dialog::Dialog;
use sip::endpoint::ClientEvent;
use sip::message::{reason_phrase, Method, SipMessage};
use sip::sdp::{self, AudioDescription, AudioStream, Negotiated};
use sip::transaction::{TimerConfig, TransactionKey};

use super::call::{contact_of, via, CallEnd, Disposition, Input, LegAddr, Output, Side};
use super::resend::{Resend, ResendDue};

/// What a node-answered call starts from.
#[derive(Debug, Clone)]
pub struct LocalSetup {
    pub invite: SipMessage,
    pub invite_key: TransactionKey,
    pub caller: LegAddr,
    /// The caller's offer, already negotiated against our codecs.
    pub offer: AudioStream,
    pub negotiated: Negotiated,
    /// Where our media application receives RTP.
    pub local_rtp: std::net::SocketAddr,
    pub timers: TimerConfig,
}

/// The caller's media as the application must use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteMedia {
    pub stream_rtp: std::net::SocketAddr,
    pub negotiated: Negotiated,
}

#[derive(Debug)]
pub struct LocalCall {
    timers: TimerConfig,
    invite: SipMessage,
    invite_key: TransactionKey,
    caller: LegAddr,
    local_tag: String,
    dialog: Option<Dialog>,
    local_rtp: std::net::SocketAddr,
    sdp_session: u64,
    sdp_version: u64,
    remote: RemoteMedia,
    remote_changed: bool,
    /// Our last 2xx to an INVITE, resent until its ACK.
    unacked: Option<(u32, SipMessage, Resend)>,
    answered_at: Instant,
    ended: bool,
    next_txn: u64,
    outstanding: HashSet<u64>,
    outputs: Vec<Output>,
}

impl LocalCall {
    /// Answers the INVITE with our SDP.
    pub fn answer(setup: LocalSetup, now: Instant) -> LocalCall {
        let mut call = LocalCall {
            timers: setup.timers,
            local_tag: sip::message::new_tag(),
            dialog: None,
            local_rtp: setup.local_rtp,
            sdp_session: u64::from(rand::random::<u32>()),
            sdp_version: 1,
            remote: RemoteMedia {
                stream_rtp: setup.offer.rtp,
                negotiated: setup.negotiated,
            },
            remote_changed: true,
            unacked: None,
            answered_at: now,
            ended: false,
            next_txn: 0,
            outstanding: HashSet::new(),
            outputs: Vec::new(),
            invite_key: setup.invite_key,
            caller: setup.caller,
            invite: setup.invite,
        };
        call.dialog = Dialog::as_uas(&call.invite, &call.local_tag, false).ok();
        let invite = call.invite.clone();
        let key = call.invite_key.clone();
        call.send_2xx(&invite, key, setup.negotiated, now);
        call
    }

    pub fn dialog_keys(&self) -> Vec<(String, String)> {
        self.invite
            .call_id()
            .map(|id| vec![(id.to_string(), self.local_tag.clone())])
            .unwrap_or_default()
    }

    pub fn caller_invite_key(&self) -> &TransactionKey {
        &self.invite_key
    }

    pub fn answered_at(&self) -> Instant {
        self.answered_at
    }

    /// The caller's media after a change (first answer, re-INVITE), once.
    pub fn remote_media(&mut self) -> Option<RemoteMedia> {
        std::mem::take(&mut self.remote_changed).then_some(self.remote)
    }

    pub fn is_finished(&self) -> bool {
        self.ended && self.outstanding.is_empty()
    }

    pub fn drain_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.unacked
            .as_ref()
            .map(|(_, _, resend)| resend.poll_timeout())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let Some((_, response, resend)) = &mut self.unacked else {
            return;
        };
        match resend.fire(now) {
            ResendDue::Resend => self.outputs.push(Output::Stateless {
                message: response.clone(),
                target: self.caller.peer,
            }),
            ResendDue::GiveUp => {
                self.unacked = None;
                self.hang_up(Side::System, "RECOVERY_ON_TIMER_EXPIRE", now);
            }
            ResendDue::Nothing => {}
        }
    }

    /// The application is done (or failed): BYE to the caller.
    pub fn hang_up(&mut self, by: Side, cause: &'static str, now: Instant) {
        if self.ended {
            return;
        }
        if let Some(dialog) = self.dialog.as_mut() {
            let bye = via(dialog.new_request(Method::Bye), &self.caller).build();
            self.next_txn += 1;
            self.outstanding.insert(self.next_txn);
            self.outputs.push(Output::Request {
                txn: self.next_txn,
                request: bye,
                target: self.caller.peer,
            });
        }
        self.end(by, cause, now);
    }

    fn end(&mut self, by: Side, cause: &'static str, now: Instant) {
        if !self.ended {
            self.ended = true;
            self.outputs.push(Output::Ended(CallEnd {
                disposition: Disposition::Answered,
                hangup_cause: cause,
                hangup_by: by,
                answered_at: Some(self.answered_at),
                ended_at: now,
                final_status: None,
            }));
        }
    }

    fn send_2xx(
        &mut self,
        request: &SipMessage,
        key: TransactionKey,
        negotiated: Negotiated,
        now: Instant,
    ) {
        let description = AudioDescription::answer(
            self.sdp_session,
            self.sdp_version,
            self.local_rtp,
            negotiated,
        );
        let mut ok = request.response_with_tag(200, "OK", &self.local_tag);
        ok.headers.push("Contact", contact_of(&self.caller, "pbx"));
        ok.headers.set("Content-Type", "application/sdp");
        ok.body = description.to_bytes();
        let cseq = request.cseq().map_or(0, |c| c.seq);
        let reliable = self.caller.peer.transport.is_reliable();
        self.unacked = Some((
            cseq,
            ok.clone(),
            Resend::final_response(self.timers, reliable, now),
        ));
        self.outputs.push(Output::Respond { key, response: ok });
    }

    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Request { key, request } => self.on_request(key, request, now),
            Input::Client {
                txn,
                event:
                    ClientEvent::Response(_) | ClientEvent::Timeout | ClientEvent::TransportFailed(_),
            } => {
                // Only our BYE is ever sent; any outcome closes it.
                self.outstanding.remove(&txn);
            }
            // Answered at once: a CANCEL comes too late, a stray 2xx is not
            // ours, and there are no forks to reroute.
            Input::Cancel
            | Input::StrayResponse(_)
            | Input::Retarget(_)
            | Input::Refuse(_)
            | Input::AddForks(_) => {}
        }
    }

    fn on_request(&mut self, key: Option<TransactionKey>, request: SipMessage, now: Instant) {
        let Some(method) = request.method().cloned() else {
            return;
        };
        if method == Method::Ack {
            let seq = request.cseq().map_or(0, |c| c.seq);
            if self
                .unacked
                .as_ref()
                .is_some_and(|(cseq, _, _)| *cseq == seq)
            {
                self.unacked = None;
            }
            return;
        }
        let Some(key) = key else {
            return;
        };
        if let Some(Err(e)) = self
            .dialog
            .as_mut()
            .map(|d| d.handle_remote_request(&request))
        {
            let response = request.response_with_tag(
                500,
                &format!("Server Internal Error ({e})"),
                &self.local_tag,
            );
            self.outputs.push(Output::Respond { key, response });
            return;
        }
        match method {
            Method::Bye => {
                self.outputs.push(Output::Respond {
                    key,
                    response: request.response(200),
                });
                self.unacked = None;
                self.end(Side::Caller, "NORMAL_CLEARING", now);
            }
            Method::Invite if self.unacked.is_some() => self.outputs.push(Output::Respond {
                key,
                response: request.response(491),
            }),
            Method::Invite => self.on_reinvite(key, &request, now),
            // INFO (SIP INFO DTMF), UPDATE without SDP, OPTIONS: accepted.
            _ => self.outputs.push(Output::Respond {
                key,
                response: request.response(200),
            }),
        }
    }

    fn on_reinvite(&mut self, key: TransactionKey, request: &SipMessage, now: Instant) {
        let offer = match sdp::audio_stream(request.body()) {
            Ok(offer) => offer,
            // No SDP (an offer solicited from us) or unreadable: keep the media.
            Err(_) => AudioStream {
                rtp: self.remote.stream_rtp,
                codecs: vec![self.remote.negotiated.codec],
                telephone_event: self.remote.negotiated.telephone_event,
                direction: sip::sdp::Direction::SendRecv,
                rtcp_mux: false,
            },
        };
        match sdp::negotiate(&offer, sdp::G711) {
            Ok(negotiated) => {
                self.sdp_version += 1;
                self.remote = RemoteMedia {
                    stream_rtp: offer.rtp,
                    negotiated,
                };
                self.remote_changed = true;
                self.send_2xx(request, key, negotiated, now);
            }
            Err(_) => {
                let mut refusal =
                    request.response_with_tag(488, reason_phrase(488), &self.local_tag);
                refusal
                    .headers
                    .push("Warning", "304 pbx \"Media type not available\"");
                self.outputs.push(Output::Respond {
                    key,
                    response: refusal,
                });
            }
        }
    }
}
