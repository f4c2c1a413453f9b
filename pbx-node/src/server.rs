//! The SIP front of the node: UDP and TCP listeners (sip::transport) under
//! the transaction layer (sip::endpoint), and the dispatch of each request
//! to the registrar or the B2BUA.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use sip::endpoint::{Endpoint, EndpointEvent, Peer};
use sip::message::{Method, SipMessage};
use sip::transaction::{TimerConfig, TransactionKey};
use sip::transport::{TransportConfig, TransportLayer};
use sip::validate::Policy;
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::b2bua::{B2bua, CallConfig, CallMetrics, MediaServices};
use crate::repo::Repo;
use crate::service::{unix_now_ms, RegistrarService};

const ALLOWED_METHODS: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, UPDATE, INFO";

/// What the SIP front needs to answer requests.
pub struct SipServices {
    pub repo: Repo,
    pub auth: Arc<Authenticator>,
    pub node_id: u64,
    pub ring_timeout: std::time::Duration,
    pub call_metrics: CallMetrics,
    pub echo_test_number: String,
    pub conference_prefix: String,
    pub media_ip: Option<std::net::IpAddr>,
    pub media: MediaServices,
    /// Edge proxies whose requests name the device's address in its Via.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The bound SIP listeners.
pub struct SipServer {
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    pub b2bua: Arc<B2bua>,
    dispatcher: JoinHandle<()>,
}

impl SipServer {
    pub async fn start(
        services: SipServices,
        udp_listen: SocketAddr,
        tcp_listen: SocketAddr,
    ) -> io::Result<SipServer> {
        let (layer, inbound) = TransportLayer::new(TransportConfig::default());
        let udp_addr = layer.bind_udp(udp_listen).await?;
        let tcp_addr = layer.listen_tcp(tcp_listen).await?;
        let timers = TimerConfig::default();
        let (endpoint, mut events) = Endpoint::start(layer, inbound, Policy::endpoint(), timers);
        let registrar = Arc::new(RegistrarService::new(
            services.repo.clone(),
            services.auth.clone(),
            services.trusted_proxies,
        ));
        let b2bua = B2bua::new(
            services.auth,
            services.repo,
            endpoint.clone(),
            CallConfig {
                node_id: services.node_id,
                ring_timeout: services.ring_timeout,
                timers,
                udp_listen: udp_addr,
                tcp_listen: tcp_addr,
                echo_test_number: services.echo_test_number,
                conference_prefix: services.conference_prefix,
                media_ip: services.media_ip,
            },
            services.call_metrics,
            services.media,
        );
        let front = Front {
            endpoint,
            registrar,
            b2bua: b2bua.clone(),
        };
        let dispatcher = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                front.dispatch(event);
            }
        });
        tracing::info!(%udp_addr, %tcp_addr, "SIP listening");
        Ok(SipServer {
            udp_addr,
            tcp_addr,
            b2bua,
            dispatcher,
        })
    }

    pub fn stop(&self) {
        self.dispatcher.abort();
    }
}

struct Front {
    endpoint: Endpoint,
    registrar: Arc<RegistrarService>,
    b2bua: Arc<B2bua>,
}

impl Front {
    fn dispatch(&self, event: EndpointEvent) {
        match event {
            EndpointEvent::Request {
                key,
                request,
                source,
            } => self.on_request(key, request, source),
            EndpointEvent::Cancel { invite, .. } => self.b2bua.route_cancel(&invite),
            EndpointEvent::Stray { message, .. } => self.b2bua.route_stray(message),
        }
    }

    fn on_request(&self, key: TransactionKey, request: SipMessage, source: Peer) {
        let Some(method) = request.method().cloned() else {
            return;
        };
        let in_dialog = request.to_tag().is_some();
        match method {
            Method::Register => {
                let registrar = self.registrar.clone();
                let endpoint = self.endpoint.clone();
                // Each REGISTER waits on the store; running them apart keeps
                // one slow write from holding up every other phone.
                tokio::spawn(async move {
                    let response = registrar
                        .handle_register(&request, source, unix_now_ms())
                        .await;
                    endpoint.respond(&key, response);
                });
            }
            Method::Invite if !in_dialog => {
                tokio::spawn(self.b2bua.clone().on_invite(key, request, source));
            }
            _ if in_dialog => {
                if !self.b2bua.route_request(&key, &request) {
                    tracing::debug!(call_id = ?request.call_id().ok(), to_tag = ?request.to_tag(), %method, "no dialog for in-dialog request");
                    self.endpoint.respond(&key, request.response(481));
                }
            }
            Method::Options => {
                let mut response = request.response(200);
                response.headers.push("Allow", ALLOWED_METHODS);
                self.endpoint.respond(&key, response);
            }
            _ => {
                let mut response = request.response(405);
                response.headers.push("Allow", ALLOWED_METHODS);
                self.endpoint.respond(&key, response);
            }
        }
    }
}
