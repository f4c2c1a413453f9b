//! Cluster PKI: a cluster CA made with rcgen, per-node certificates, and the
//! mutual-TLS QUIC configurations built from them. A node accepts only peers
//! whose certificate the cluster CA signed, and checks that the node it
//! dialled presents the certificate of that node id.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::types::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
    #[error("PEM: {0}")]
    Pem(String),
}

/// The DNS name in a node's certificate, and the name a peer dials it by.
pub fn node_dns_name(id: NodeId) -> String {
    format!("node-{id}.raft.pbx")
}

/// A certificate authority for one cluster (`pbxctl cluster init` makes it).
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate and key in PEM, plus the CA that signed it.
#[derive(Clone)]
pub struct NodeIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClusterCa {
    pub fn generate(cluster_name: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{cluster_name} cluster CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues the certificate of node `id`: usable as server and as client.
    pub fn issue_node(&self, id: NodeId) -> Result<NodeIdentity, TlsError> {
        self.issue(&node_dns_name(id))
    }

    /// Issues a certificate for a non-voting client of the cluster (tools, benches).
    pub fn issue_client(&self, name: &str) -> Result<NodeIdentity, TlsError> {
        self.issue(&format!("{name}.client.raft.pbx"))
    }

    fn issue(&self, dns_name: &str) -> Result<NodeIdentity, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let mut params = CertificateParams::new(vec![dns_name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, dns_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeIdentity {
            ca_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn parse_cert(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("certificate: {e}")))
}

fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("private key: {e}")))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const ALPN: &[u8] = b"pbx-raft/1";

impl NodeIdentity {
    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(parse_cert(&self.ca_pem)?)?;
        Ok(Arc::new(roots))
    }

    /// Server side: requires a client certificate from the cluster CA.
    pub fn quic_server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider()).build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![parse_cert(&self.cert_pem)?], parse_key(&self.key_pem)?)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config()));
        Ok(config)
    }

    /// Client side: presents this identity and trusts only the cluster CA.
    pub fn quic_client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![parse_cert(&self.cert_pem)?], parse_key(&self.key_pem)?)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config()));
        Ok(config)
    }
}

/// Keepalives well inside the idle timeout, so a dead peer's connection is
/// dropped in about the time Raft needs to elect a new leader.
fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_millis(300)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(std::time::Duration::from_millis(1200)) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_bidi_streams(4096u32.into());
    t
}
