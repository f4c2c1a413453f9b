//! Every call's RTP through the SBC: per Call-ID a `media` relay between a
//! port pair on the public side (leg A, facing the phone) and one on the
//! internal side (leg B, facing the pbx-node). SDP from a phone is
//! re-addressed to leg B and steers leg A toward the phone (latching then
//! finds a NATed phone's real address); SDP from a node is re-addressed to
//! leg A and steers leg B.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use media::ports::PortPool;
use media::relay::udp::{LegSockets, RelayCommand, UdpRelay};
use media::relay::{LegConfig, RelayConfig, RelayEvent};
use media::Leg;
use tokio::sync::mpsc;

use crate::proxy::{Direction, MediaAnchor};

/// Where the relay's sockets live and what the SDP says.
#[derive(Debug, Clone, Copy)]
pub struct RelayAddresses {
    /// Bind address of the phone-facing sockets.
    pub public_bind: IpAddr,
    /// The address phones are told (a NAT's public IP in front of us, or
    /// the bind address).
    pub public_advertised: IpAddr,
    /// Bind address (and SDP address) of the node-facing sockets.
    pub internal: IpAddr,
}

/// A relay that heard nothing either way for this long is a call whose
/// BYE was lost: its ports are taken back. (An inactive hold sends no RTP
/// either, hence so long.)
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

struct Session {
    commands: mpsc::UnboundedSender<RelayCommand>,
    phone_side: SocketAddr,
    node_side: SocketAddr,
    answered: bool,
}

pub struct CallRelays {
    ports: PortPool,
    addresses: RelayAddresses,
    sessions: HashMap<String, Session>,
    /// Call-IDs whose relay found both legs silent for [`ABANDONED_AFTER`].
    abandoned: mpsc::UnboundedSender<String>,
}

impl CallRelays {
    /// The receiver gets the Call-IDs of abandoned relays, to `end` them.
    pub fn new(
        ports: PortPool,
        addresses: RelayAddresses,
    ) -> (CallRelays, mpsc::UnboundedReceiver<String>) {
        let (abandoned, abandoned_rx) = mpsc::unbounded_channel();
        let relays = CallRelays {
            ports,
            addresses,
            sessions: HashMap::new(),
            abandoned,
        };
        (relays, abandoned_rx)
    }

    pub fn active(&self) -> usize {
        self.sessions.len()
    }

    /// RTP port pairs held (two per call).
    pub fn ports_in_use(&self) -> usize {
        self.ports.in_use()
    }

    fn session(&mut self, call_id: &str) -> Option<&Session> {
        if !self.sessions.contains_key(call_id) {
            let session = self.start(call_id)?;
            self.sessions.insert(call_id.to_string(), session);
        }
        self.sessions.get(call_id)
    }

    fn start(&self, call_id: &str) -> Option<Session> {
        let bound = self
            .ports
            .bind_pair(self.addresses.public_bind)
            .and_then(|a| Ok((a, self.ports.bind_pair(self.addresses.internal)?)));
        let ((lease_a, rtp_a, rtcp_a), (lease_b, rtp_b, rtcp_b)) = match bound {
            Ok(bound) => bound,
            Err(e) => {
                tracing::error!(%call_id, error = %e, "no RTP ports: media of this call not relayed");
                return None;
            }
        };
        let phone_side = SocketAddr::new(self.addresses.public_advertised, lease_a.rtp_port);
        let node_side = SocketAddr::new(self.addresses.internal, lease_b.rtp_port);
        let relay = UdpRelay::new(
            RelayConfig {
                media_timeout: ABANDONED_AFTER,
                ..RelayConfig::default()
            },
            [LegConfig::default(); 2],
            [
                LegSockets {
                    rtp: rtp_a,
                    rtcp: Some(rtcp_a),
                },
                LegSockets {
                    rtp: rtp_b,
                    rtcp: Some(rtcp_b),
                },
            ],
        );
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, mut event_rx) = mpsc::unbounded_channel();
        let abandoned = self.abandoned.clone();
        let call = call_id.to_string();
        tokio::spawn(async move {
            let watch = async {
                let mut silent = [false; 2];
                while let Some(event) = event_rx.recv().await {
                    tracing::debug!(call_id = %call, ?event, "media relay");
                    match event {
                        RelayEvent::LegTimedOut { leg } => silent[leg.index()] = true,
                        RelayEvent::Latched { leg, .. } | RelayEvent::Relatched { leg, .. } => {
                            silent[leg.index()] = false;
                        }
                    }
                    if silent == [true, true] {
                        let _ = abandoned.send(call.clone());
                    }
                }
            };
            tokio::join!(relay.run(events, command_rx), watch);
            // The sockets are closed now: the ports may be reused.
            drop((lease_a, lease_b));
        });
        Some(Session {
            commands,
            phone_side,
            node_side,
            answered: false,
        })
    }
}

impl MediaAnchor for CallRelays {
    fn rewrite(&mut self, call_id: &str, direction: Direction, body: &[u8]) -> Option<Vec<u8>> {
        let session = self.session(call_id)?;
        let (ours, author) = match direction {
            Direction::Inward => (session.node_side, Leg::A),
            Direction::Outward => (session.phone_side, Leg::B),
        };
        let (body, stream) = match sip::sdp::anchor_audio(body, ours) {
            Ok(rewritten) => rewritten,
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "SDP not relayed");
                return None;
            }
        };
        let config = LegConfig::toward(stream.rtp, stream.rtcp_mux);
        let _ = session.commands.send(RelayCommand::UpdateLeg {
            leg: author,
            config,
        });
        Some(body)
    }

    fn answered(&mut self, call_id: &str) {
        if let Some(session) = self.sessions.get_mut(call_id) {
            session.answered = true;
        }
    }

    fn failed(&mut self, call_id: &str) {
        if self.sessions.get(call_id).is_some_and(|s| !s.answered) {
            self.end(call_id);
        }
    }

    fn end(&mut self, call_id: &str) {
        // Dropping the command sender stops the relay.
        self.sessions.remove(call_id);
    }
}
