//! Starting a node: certificates, the raft store, the shared nonce secret,
//! demo data and the SIP listeners, in that order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use raft_store::{ClusterCa, NodeIdentity, RaftStore, StoreConfig, StoreError};

use crate::api::{ApiSettings, ApiState};
use crate::auth::Authenticator;
use crate::b2bua::{CallMetrics, MediaServices};
use crate::blobs::{BlobStore, LocalDirStore};
use crate::config::{ConfigError, NodeConfig};
use crate::demo::{ensure_demo, NewCredentials};
use crate::directory::Directory;
use crate::http::HttpServer;
use crate::media::conference::Conferences;
use crate::media::moh::MusicOnHold;
use crate::media::prompts::Prompts;
use crate::recording::Recordings;
use crate::repo::{Repo, RepoError};
use crate::server::{SipServer, SipServices};
use media::mixer::ConferencePrompts;
use media::ports::PortPool;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("cluster certificates: {0}")]
    Certificates(String),
    #[error("raft store: {0}")]
    Start(#[from] raft_store::StartError),
    #[error("raft store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("SIP listen: {0}")]
    SipListen(std::io::Error),
    #[error("HTTP listen: {0}")]
    HttpListen(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(prometheus::Error),
    #[error("media: {0}")]
    Media(String),
}

/// How long start-up waits for the cluster to have a leader.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);
const RETRY_PAUSE: Duration = Duration::from_millis(200);

fn read_file(path: &Path) -> Result<String, NodeError> {
    std::fs::read_to_string(path).map_err(|e| NodeError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

fn write_file(path: &Path, contents: &str) -> Result<(), NodeError> {
    std::fs::write(path, contents).map_err(|e| NodeError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// The node's cluster identity: from the configured PEM files, or in
/// single-node embedded mode a CA and node certificate generated into
/// `<data_dir>/tls` on first start and reused afterwards.
pub fn load_or_create_identity(config: &NodeConfig) -> Result<NodeIdentity, NodeError> {
    match (
        &config.cluster_ca,
        &config.cluster_cert,
        &config.cluster_key,
    ) {
        (Some(ca), Some(cert), Some(key)) => {
            return Ok(NodeIdentity {
                ca_pem: read_file(ca)?,
                cert_pem: read_file(cert)?,
                key_pem: read_file(key)?,
            })
        }
        (None, None, None) => {}
        _ => {
            return Err(NodeError::Certificates(
                "cluster_ca, cluster_cert and cluster_key must be given together".into(),
            ))
        }
    }
    if !config.peers.is_empty() {
        return Err(NodeError::Certificates(
            "a multi-node cluster needs cluster_ca, cluster_cert and cluster_key from one CA"
                .into(),
        ));
    }
    let dir = config.data_dir.join("tls");
    let paths = [
        dir.join("ca.pem"),
        dir.join("ca.key"),
        dir.join(format!("node-{}.pem", config.node_id)),
        dir.join(format!("node-{}.key", config.node_id)),
    ];
    let [ca_path, ca_key_path, cert_path, key_path] = &paths;
    if paths.iter().all(|p| p.exists()) {
        return Ok(NodeIdentity {
            ca_pem: read_file(ca_path)?,
            cert_pem: read_file(cert_path)?,
            key_pem: read_file(key_path)?,
        });
    }
    std::fs::create_dir_all(&dir).map_err(|e| NodeError::File {
        path: dir.clone(),
        detail: e.to_string(),
    })?;
    let ca = ClusterCa::generate(&config.cluster_id)
        .map_err(|e| NodeError::Certificates(e.to_string()))?;
    let identity = ca
        .issue_node(config.node_id)
        .map_err(|e| NodeError::Certificates(e.to_string()))?;
    write_file(ca_path, &ca.cert_pem)?;
    write_file(ca_key_path, &ca.key_pem)?;
    write_file(cert_path, &identity.cert_pem)?;
    write_file(key_path, &identity.key_pem)?;
    #[cfg(unix)]
    for key in [ca_key_path, key_path] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            NodeError::File {
                path: key.clone(),
                detail: e.to_string(),
            }
        })?;
    }
    Ok(identity)
}

/// Retries `op` while the cluster has no leader yet, or a leader change
/// left its outcome unknown (start-up, election). Every `op` given is an
/// idempotent "ensure" (read, and write only what is missing), so running
/// it again after an unknown outcome is safe.
async fn until_leader<T, F, Fut>(mut op: F) -> Result<T, RepoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RepoError>>,
{
    let deadline = tokio::time::Instant::now() + CLUSTER_WAIT;
    loop {
        match op().await {
            Err(RepoError::Store(StoreError::NoLeader(_) | StoreError::Unknown(_)))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(RETRY_PAUSE).await
            }
            other => return other,
        }
    }
}

/// A running node.
pub struct PbxNode {
    pub store: RaftStore,
    pub repo: Repo,
    pub sip: SipServer,
    pub http: HttpServer,
    cdr_retention: Option<tokio::task::JoinHandle<()>>,
    directory: tokio::task::JoinHandle<()>,
    recording_uploader: tokio::task::JoinHandle<()>,
    /// Demo extensions created by this start, with their only copy of the password.
    pub new_demo_credentials: Vec<NewCredentials>,
    /// The password of `admin`, when this start created it.
    pub new_admin_password: Option<String>,
}

impl PbxNode {
    /// Starts the node. With no peers it bootstraps (once) a one-node
    /// cluster; with peers, the node with the lowest id bootstraps and adds
    /// the others, which wait to be added.
    pub async fn start(config: &NodeConfig) -> Result<PbxNode, NodeError> {
        let peers = config.parsed_peers()?;
        let identity = load_or_create_identity(config)?;
        let mut store_config = StoreConfig::new(
            config.node_id,
            config.raft_listen,
            config.data_dir.join("raft"),
            identity,
        );
        store_config.cluster_id.clone_from(&config.cluster_id);
        let registry = prometheus::Registry::new();
        let store = RaftStore::start(store_config, &registry).await?;
        let initialized = store
            .raft()
            .is_initialized()
            .await
            .map_err(|e| StoreError::Fatal(e.to_string()))?;
        let bootstrapper = peers.iter().all(|p| p.node_id > config.node_id);
        if !initialized && bootstrapper {
            store.initialize().await?;
            for peer in &peers {
                until_leader(|| async { Ok(store.add_learner(peer.node_id, &peer.addr).await?) })
                    .await?;
            }
            if !peers.is_empty() {
                let mut voters = store.voters();
                voters.extend(peers.iter().map(|p| p.node_id));
                store.change_voters(voters).await?;
            }
        }
        Self::serve(config, store, registry).await
    }

    /// Starts the PBX on an already running store (tests use this to put
    /// several nodes on one in-process raft cluster).
    pub async fn serve(
        config: &NodeConfig,
        store: RaftStore,
        registry: prometheus::Registry,
    ) -> Result<PbxNode, NodeError> {
        let repo = Repo::new(store.clone());
        let secret = until_leader(|| repo.ensure_nonce_secret()).await?;
        let edge_nonce_key = config
            .edge_nonce_key_file
            .as_deref()
            .map(|path| {
                sip::auth::NonceKey::from_file(path).map_err(|e| NodeError::File {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })
            })
            .transpose()?;
        let (directory, directory_task) = until_leader(|| Directory::start(repo.clone())).await?;
        let new_demo_credentials = if config.demo {
            let spec = config.demo_spec()?;
            until_leader(|| ensure_demo(&repo, &spec)).await?.1
        } else {
            Vec::new()
        };
        let prompts = Arc::new(Prompts::builtin().map_err(|e| NodeError::Media(e.to_string()))?);
        let ports = PortPool::new(config.rtp_port_min, config.rtp_port_max)
            .map_err(|e| NodeError::Media(e.to_string()))?;
        let music = match ports.bind(std::net::IpAddr::from([0, 0, 0, 0])) {
            Ok((lease, socket)) => {
                MusicOnHold::start(socket, lease, prompts.music_on_hold.clone()).ok()
            }
            Err(e) => {
                tracing::warn!(error = %e, "no port for music on hold: held calls hear silence");
                None
            }
        };
        let blobs: Arc<dyn BlobStore> = Arc::new(LocalDirStore::new(config.blob_dir()));
        let (recordings, recording_uploader) = Recordings::start(
            config.recording_spool_dir(),
            config.recording_stereo,
            config.node_id,
            blobs.clone(),
            repo.clone(),
        )
        .map_err(|e| NodeError::Media(e.to_string()))?;
        let services = SipServices {
            repo: repo.clone(),
            auth: Arc::new(Authenticator::new(
                directory,
                secret,
                config.sip_digest_sha256,
                edge_nonce_key,
            )),
            node_id: config.node_id,
            ring_timeout: Duration::from_secs(config.ring_timeout_secs),
            call_metrics: CallMetrics::register(&registry).map_err(NodeError::Metrics)?,
            echo_test_number: config.echo_test_number.clone(),
            conference_prefix: config.conference_prefix.clone(),
            media_ip: config.media_ip,
            trusted_proxies: config.trusted_proxies.clone(),
            media: MediaServices {
                ports,
                music,
                conferences: Conferences::new(ConferencePrompts {
                    join: Some(prompts.conference_join.clone()),
                    leave: Some(prompts.conference_leave.clone()),
                }),
                prompts: prompts.clone(),
                recordings,
            },
        };
        let sip = SipServer::start(services, config.sip_udp_listen, config.sip_tcp_listen)
            .await
            .map_err(NodeError::SipListen)?;
        let api_settings = ApiSettings {
            session_ttl: Duration::from_secs(config.api_session_ttl_secs.max(60)),
            logins_per_minute: std::num::NonZeroU32::new(config.api_logins_per_minute)
                .unwrap_or(std::num::NonZeroU32::MIN),
            ..ApiSettings::default()
        };
        let api = ApiState::new(repo.clone(), blobs, api_settings);
        let new_admin_password = until_leader(|| {
            api.accounts.ensure_admin(
                config.admin_password.as_deref(),
                crate::service::unix_now_ms(),
            )
        })
        .await?;
        let http = HttpServer::start(config.http_listen, api, registry)
            .await
            .map_err(NodeError::HttpListen)?;
        let cdr_retention = crate::retention::start(repo.clone(), config.cdr_retention_days);
        Ok(PbxNode {
            store,
            repo,
            sip,
            http,
            cdr_retention,
            directory: directory_task,
            recording_uploader,
            new_demo_credentials,
            new_admin_password,
        })
    }

    pub async fn shutdown(self) {
        self.sip.stop();
        self.http.stop();
        if let Some(task) = &self.cdr_retention {
            task.abort();
        }
        self.directory.abort();
        self.recording_uploader.abort();
        self.store.shutdown().await;
    }
}
