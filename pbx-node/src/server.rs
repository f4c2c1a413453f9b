//! The tokio driver: SIP over UDP and TCP (sip::transport), validation
//! (sip::validate) and one task per request into the registrar service.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use sip::transport::{InboundMessage, Transport, TransportConfig, TransportLayer};
use sip::validate::{classify, Inbound, Policy};
use tokio::task::JoinHandle;

use crate::service::{unix_now_ms, RegistrarService};

/// The bound SIP listeners.
pub struct SipServer {
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    dispatcher: JoinHandle<()>,
}

impl SipServer {
    pub async fn start(
        service: Arc<RegistrarService>,
        udp_listen: SocketAddr,
        tcp_listen: SocketAddr,
    ) -> io::Result<SipServer> {
        let (layer, mut inbound) = TransportLayer::new(TransportConfig::default());
        let udp_addr = layer.bind_udp(udp_listen).await?;
        let tcp_addr = layer.listen_tcp(tcp_listen).await?;
        let policy = Arc::new(Policy::endpoint());
        let dispatcher = tokio::spawn(async move {
            while let Some(message) = inbound.recv().await {
                let service = service.clone();
                let layer = layer.clone();
                let policy = policy.clone();
                // Each request waits on the store; running them apart keeps
                // one slow write from holding up every other phone.
                tokio::spawn(async move { dispatch(&service, &layer, &policy, message).await });
            }
        });
        tracing::info!(%udp_addr, %tcp_addr, "SIP listening");
        Ok(SipServer {
            udp_addr,
            tcp_addr,
            dispatcher,
        })
    }

    pub fn stop(&self) {
        self.dispatcher.abort();
    }
}

fn transport_name(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
        Transport::Ws => "ws",
        Transport::Wss => "wss",
    }
}

async fn dispatch(
    service: &RegistrarService,
    layer: &TransportLayer,
    policy: &Policy,
    message: InboundMessage,
) {
    let InboundMessage {
        transport,
        source,
        parsed,
        ..
    } = message;
    let response = match classify(parsed, policy) {
        Inbound::Accept(request) if request.is_request() => {
            let received_from = format!("{}:{source}", transport_name(transport));
            service
                .handle_request(&request, &received_from, unix_now_ms())
                .await
        }
        // This node sends no requests yet, so any response is stray.
        Inbound::Accept(_) => None,
        Inbound::Reject {
            status,
            reason,
            response,
        } => {
            tracing::debug!(%source, status, %reason, "rejected malformed request");
            response
        }
        Inbound::Drop { reason } => {
            tracing::debug!(%source, %reason, "dropped message");
            None
        }
    };
    if let Some(response) = response {
        // Sent back to where the request came from, which is also right
        // behind NAT (RFC 3581 behaviour without needing rport).
        if let Err(e) = layer.send(transport, source, &response).await {
            tracing::warn!(%source, error = %e, "could not send response");
        }
    }
}
