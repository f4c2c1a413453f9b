//! The tokio driver around the sans-IO pieces: one task owns the
//! [`TransactionLayer`], reads every inbound message from the
//! [`TransportLayer`], validates it ([`classify`]), fires transaction timers
//! and sends what the layer asks for. The transaction user (TU) gets
//! [`EndpointEvent`]s and answers through [`Endpoint`].
//!
//! Responses of a server transaction go back to where its request came from
//! (the connection, or the UDP source address, which also works behind NAT);
//! a client transaction talks to the [`Peer`] it was started with.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use tokio::sync::mpsc;

use crate::message::{Method, SipMessage};
use crate::transaction::{
    release_spare_capacity, LayerEvent, TimerConfig, TransactionKey, TransactionLayer,
};
use crate::transport::{InboundMessage, Transport, TransportError, TransportLayer};
use crate::validate::{classify, Inbound, Policy};

/// Where a message came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// What the endpoint hands to the TU.
#[derive(Debug)]
pub enum EndpointEvent {
    /// A new request (neither ACK nor CANCEL) in a new server transaction;
    /// answer it with [`Endpoint::respond`]. INVITEs were already sent 100.
    Request {
        key: TransactionKey,
        request: SipMessage,
        source: Peer,
    },
    /// A CANCEL that matched the pending INVITE `invite`; the CANCEL itself
    /// has been answered 200. The TU answers the INVITE (487).
    Cancel {
        request: SipMessage,
        invite: TransactionKey,
        source: Peer,
    },
    /// An ACK for a 2xx, or a response that matches no client transaction
    /// (a retransmitted 2xx): dialog business (§13.3.1.4, §17.1.1.2).
    Stray { message: SipMessage, source: Peer },
}

/// What a client transaction reports to the TU that started it.
#[derive(Debug)]
pub enum ClientEvent {
    Response(SipMessage),
    /// Timer B or F: no final response in time (§8.1.3.1: act as 408).
    Timeout,
    /// The request could not be sent (§8.1.3.1: act as 503).
    TransportFailed(String),
}

enum Command {
    Respond {
        key: TransactionKey,
        response: SipMessage,
    },
    Request {
        request: SipMessage,
        target: Peer,
        reply: ClientReply,
    },
}

/// Where a client transaction's events go: one channel can serve many
/// transactions (a call's), told apart by `tag`.
#[derive(Debug, Clone)]
pub struct ClientReply {
    pub tag: u64,
    pub to: mpsc::UnboundedSender<(u64, ClientEvent)>,
}

impl ClientReply {
    fn send(&self, event: ClientEvent) {
        // The TU stopped listening: the outcome no longer matters to anyone.
        let _ = self.to.send((self.tag, event));
    }
}

/// Handle to the driver task; cheap to clone. The task stops when every
/// handle is dropped.
#[derive(Clone)]
pub struct Endpoint {
    commands: mpsc::UnboundedSender<Command>,
    transport: TransportLayer,
}

/// Events buffered toward the TU before reading the network pauses.
const TU_QUEUE: usize = 4096;

impl Endpoint {
    /// Starts the driver over transports whose listeners are already bound.
    pub fn start(
        transport: TransportLayer,
        inbound: mpsc::Receiver<InboundMessage>,
        policy: Policy,
        timers: TimerConfig,
    ) -> (Endpoint, mpsc::Receiver<EndpointEvent>) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (tu, tu_rx) = mpsc::channel(TU_QUEUE);
        let driver = Driver {
            layer: TransactionLayer::new(timers),
            transport: transport.clone(),
            policy,
            tu,
            server_sources: HashMap::new(),
            clients: HashMap::new(),
        };
        tokio::spawn(driver.run(inbound, command_rx));
        (
            Endpoint {
                commands,
                transport,
            },
            tu_rx,
        )
    }

    /// Answers the request of server transaction `key`.
    pub fn respond(&self, key: &TransactionKey, response: SipMessage) {
        // Fails only when the driver has stopped, and then nobody listens.
        let _ = self.commands.send(Command::Respond {
            key: key.clone(),
            response,
        });
    }

    /// Starts a client transaction (the request's top Via carries the
    /// branch); its responses go to `reply`.
    pub fn request(&self, request: SipMessage, target: Peer, reply: ClientReply) {
        if let Err(mpsc::error::SendError(Command::Request { reply, .. })) =
            self.commands.send(Command::Request {
                request,
                target,
                reply,
            })
        {
            reply.send(ClientEvent::TransportFailed("endpoint stopped".into()));
        }
    }

    /// Sends outside any transaction: ACK for a 2xx and 2xx retransmissions
    /// (RFC 3261 §13.3.1.4, §13.2.2.4).
    pub async fn send_stateless(
        &self,
        message: &SipMessage,
        target: Peer,
    ) -> Result<(), TransportError> {
        self.transport
            .send(target.transport, target.addr, message)
            .await
            .map(|_| ())
    }
}

/// The local address the kernel would use toward `dest` (no packet is
/// sent): what to put in Via and Contact when listening on a wildcard.
pub fn local_ip_toward(dest: SocketAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = match dest {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(dest)?;
    Ok(socket.local_addr()?.ip())
}

struct Driver {
    layer: TransactionLayer,
    transport: TransportLayer,
    policy: Policy,
    tu: mpsc::Sender<EndpointEvent>,
    server_sources: HashMap<TransactionKey, Peer>,
    clients: HashMap<TransactionKey, (Peer, ClientReply)>,
}

impl Driver {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<InboundMessage>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        loop {
            let deadline = self.layer.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = inbound.recv() => match message {
                    Some(message) => self.on_inbound(message).await,
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    None => break,
                },
                () = sleep => {
                    let events = self.layer.handle_timeouts(tokio::time::Instant::now().into_std());
                    self.process(events, None).await;
                }
            }
        }
    }

    async fn on_inbound(&mut self, inbound: InboundMessage) {
        let source = Peer {
            transport: inbound.transport,
            addr: inbound.source,
        };
        match classify(inbound.parsed, &self.policy) {
            Inbound::Accept(message) => {
                // Remember where a new server transaction answers to before
                // the layer emits its first response (the 100 Trying).
                let key = TransactionKey::of_incoming(&message).ok();
                let new_server_key = key
                    .as_ref()
                    .filter(|key| key.server && self.layer.get(key).is_none())
                    .cloned();
                if let Some(key) = &new_server_key {
                    self.server_sources.insert(key.clone(), source);
                }
                let events = self.layer.handle_incoming_keyed(
                    key,
                    message,
                    source.transport.is_reliable(),
                    tokio::time::Instant::now().into_std(),
                );
                if let Some(key) = new_server_key {
                    if self.layer.get(&key).is_none() {
                        // An ACK or a request that started nothing.
                        self.server_sources.remove(&key);
                    }
                }
                self.process(events, Some(source)).await;
            }
            Inbound::Reject {
                status,
                reason,
                response,
            } => {
                tracing::debug!(%source.addr, status, %reason, "rejected malformed request");
                if let Some(response) = response {
                    self.send(source, &response).await;
                }
            }
            Inbound::Drop { reason } => {
                tracing::debug!(%source.addr, %reason, "dropped message");
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        let now = tokio::time::Instant::now().into_std();
        match command {
            Command::Respond { key, response } => match self
                .layer
                .send_response(&key, response, now)
            {
                Ok(events) => self.process(events, None).await,
                // The transaction ended first (e.g. Timer H): nothing to do.
                Err(e) => tracing::debug!(branch = %key.branch, error = %e, "response not sent"),
            },
            Command::Request {
                request,
                target,
                reply,
            } => {
                let key = match TransactionKey::for_client(&request) {
                    Ok(key) => key,
                    Err(e) => {
                        reply.send(ClientEvent::TransportFailed(e.to_string()));
                        return;
                    }
                };
                self.clients.insert(key, (target, reply));
                match self
                    .layer
                    .send_request(request, target.transport.is_reliable(), now)
                {
                    Ok((_, layer_events)) => self.process(layer_events, None).await,
                    Err(e) => tracing::warn!(error = %e, "request not started"),
                }
            }
        }
    }

    async fn process(&mut self, events: Vec<LayerEvent>, source: Option<Peer>) {
        for event in events {
            match event {
                LayerEvent::Send { key, message } => self.send_for(&key, &message).await,
                LayerEvent::Request { key, request } => {
                    let Some(source) = self.server_sources.get(&key).copied() else {
                        continue;
                    };
                    self.to_tu(EndpointEvent::Request {
                        key,
                        request,
                        source,
                    })
                    .await;
                }
                LayerEvent::Cancel {
                    key,
                    request,
                    invite,
                } => self.on_cancel(key, request, invite).await,
                LayerEvent::Response { key, response } => {
                    if let Some((_, reply)) = self.clients.get(&key) {
                        reply.send(ClientEvent::Response(response));
                    }
                }
                LayerEvent::Timeout { key } => {
                    if let Some((_, reply)) = self.clients.get(&key) {
                        reply.send(ClientEvent::Timeout);
                    }
                }
                LayerEvent::Stray(message) => {
                    if let Some(source) = source {
                        self.to_tu(EndpointEvent::Stray { message, source }).await;
                    }
                }
                LayerEvent::Terminated { key } => {
                    // Both tables shrink back after a burst, as the layer's does.
                    if self.server_sources.remove(&key).is_some() {
                        release_spare_capacity(&mut self.server_sources);
                    }
                    if self.clients.remove(&key).is_some() {
                        release_spare_capacity(&mut self.clients);
                    }
                }
            }
        }
    }

    async fn on_cancel(
        &mut self,
        key: TransactionKey,
        request: SipMessage,
        invite: Option<TransactionKey>,
    ) {
        let status = if invite.is_some() { 200 } else { 481 };
        let response = request.response(status);
        let source = self.server_sources.get(&key).copied();
        match self
            .layer
            .send_response(&key, response, tokio::time::Instant::now().into_std())
        {
            Ok(events) => Box::pin(self.process(events, None)).await,
            Err(e) => tracing::debug!(error = %e, "CANCEL response not sent"),
        }
        if let (Some(invite), Some(source)) = (invite, source) {
            self.to_tu(EndpointEvent::Cancel {
                request,
                invite,
                source,
            })
            .await;
        }
    }

    async fn send_for(&mut self, key: &TransactionKey, message: &SipMessage) {
        let target = if key.server {
            self.server_sources.get(key).copied()
        } else {
            self.clients.get(key).map(|(peer, _)| *peer)
        };
        let Some(target) = target else {
            return;
        };
        if !self.send(target, message).await && !key.server {
            if let Some((_, reply)) = self.clients.get(key) {
                reply.send(ClientEvent::TransportFailed(format!(
                    "could not send {} to {}",
                    message.method().map_or("message", Method::as_str),
                    target.addr
                )));
            }
        }
    }

    /// Sends; a failure is logged and reported as `false`.
    async fn send(&self, target: Peer, message: &SipMessage) -> bool {
        match self
            .transport
            .send(target.transport, target.addr, message)
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(dest = %target.addr, error = %e, "send failed");
                false
            }
        }
    }

    async fn to_tu(&self, event: EndpointEvent) {
        // The TU is gone only during shutdown.
        let _ = self.tu.send(event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::RequestBuilder;
    use crate::transport::TransportConfig;
    use std::time::Duration;

    async fn endpoint() -> (Endpoint, mpsc::Receiver<EndpointEvent>, SocketAddr) {
        let (layer, inbound) = TransportLayer::new(TransportConfig::default());
        let addr = layer
            .bind_udp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let (endpoint, events) =
            Endpoint::start(layer, inbound, Policy::endpoint(), TimerConfig::default());
        (endpoint, events, addr)
    }

    fn reply() -> (ClientReply, mpsc::UnboundedReceiver<(u64, ClientEvent)>) {
        let (to, rx) = mpsc::unbounded_channel();
        (ClientReply { tag: 7, to }, rx)
    }

    fn options(from: SocketAddr) -> SipMessage {
        RequestBuilder::new(Method::Options, "sip:bob@127.0.0.1".parse().unwrap())
            .via("UDP", &from.ip().to_string(), Some(from.port()))
            .from("<sip:alice@127.0.0.1>", Some("a1"))
            .to("<sip:bob@127.0.0.1>")
            .call_id("endpoint-test")
            .cseq(1)
            .build()
    }

    #[tokio::test]
    async fn request_and_response_travel_through_both_drivers() {
        let (alice, _alice_events, alice_addr) = endpoint().await;
        let (bob, mut bob_events, bob_addr) = endpoint().await;
        let (reply, mut responses) = reply();
        alice.request(
            options(alice_addr),
            Peer {
                transport: Transport::Udp,
                addr: bob_addr,
            },
            reply,
        );
        let Some(EndpointEvent::Request {
            key,
            request,
            source,
        }) = bob_events.recv().await
        else {
            panic!("bob got no request")
        };
        assert_eq!(source.addr, alice_addr);
        bob.respond(&key, request.response(200));
        match tokio::time::timeout(Duration::from_secs(5), responses.recv()).await {
            Ok(Some((7, ClientEvent::Response(r)))) => assert_eq!(r.status(), Some(200)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn request_to_a_silent_peer_times_out_after_timer_f() {
        let (alice, _events, alice_addr) = endpoint().await;
        // A bound socket that never answers.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        tokio::time::pause();
        let (reply, mut responses) = reply();
        alice.request(
            options(alice_addr),
            Peer {
                transport: Transport::Udp,
                addr: silent.local_addr().unwrap(),
            },
            reply,
        );
        match responses.recv().await {
            Some((7, ClientEvent::Timeout)) => {}
            other => panic!("{other:?}"),
        }
    }
}
