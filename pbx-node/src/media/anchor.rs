//! A B2BUA call's media anchored at the node (when a feature needs it:
//! recording): a relay between a caller-facing and a callee-facing port
//! pair, steered by the call's SDP, with an optional recording tap.

use std::net::{IpAddr, SocketAddr};

use media::relay::udp::{LegSockets, RelayControl, RelayTap, UdpRelay};
use media::relay::{LegConfig, RelayConfig};
use media::Leg;
use sip::sdp::AudioStream;
use tracing::Instrument;

use crate::b2bua::call::MediaAnchor;
use media::ports::{PortError, PortPool};

pub struct AnchoredMedia {
    pub anchor: MediaAnchor,
    control: RelayControl,
    task: tokio::task::JoinHandle<()>,
}

impl AnchoredMedia {
    /// Leases a port pair on `caller_ip` (leg A) and one on `callee_ip`
    /// (leg B) and starts relaying between them.
    pub fn start(
        ports: &PortPool,
        caller_ip: IpAddr,
        callee_ip: IpAddr,
    ) -> Result<AnchoredMedia, PortError> {
        let (lease_a, rtp_a, rtcp_a) = ports.bind_pair(caller_ip)?;
        let (lease_b, rtp_b, rtcp_b) = ports.bind_pair(callee_ip)?;
        let anchor = MediaAnchor {
            toward_caller: SocketAddr::new(caller_ip, lease_a.rtp_port),
            toward_callee: SocketAddr::new(callee_ip, lease_b.rtp_port),
        };
        // Each leg learns where to send from its side's SDP (RelayTo).
        let (relay, control) = UdpRelay::new(
            RelayConfig::default(),
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
        // Called in the relay's task, which is in the call's span.
        let events = Box::new(|event| tracing::debug!(?event, "media relay"));
        let task = tokio::spawn(
            async move {
                let core = relay.run(events).await;
                tracing::debug!(stats = ?core.stats(), "media relay stopped");
                // The sockets are closed now: the ports may be reused.
                drop((lease_a, lease_b));
            }
            .instrument(tracing::Span::current()),
        );
        Ok(AnchoredMedia {
            anchor,
            control,
            task,
        })
    }

    /// Leg `leg` sends to the stream its side's SDP described.
    pub fn send_to(&self, leg: Leg, stream: &AudioStream) {
        let config = LegConfig::toward(stream.rtp, stream.rtcp_mux);
        self.control.update_leg(leg, config);
    }

    pub fn tap(&self, tap: Box<dyn RelayTap>) {
        self.control.tap(tap);
    }

    /// Stops the relay (closing its tap) and waits until its ports are free.
    pub async fn stop(self) {
        drop(self.control);
        let _ = self.task.await;
    }
}
