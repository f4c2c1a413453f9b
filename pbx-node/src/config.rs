//! Node configuration: one TOML file, each key overridable by a `PBX_...`
//! environment variable and by a command-line flag (flag > env > file >
//! default). The defaults run a single embedded node on a laptop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::demo::DemoSpec;

/// Where the config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pbx/node.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("peer '{0}' is not of the form <node id>@<host:port>")]
    Peer(String),
    #[error("{0}")]
    DemoRange(String),
}

/// A raft peer: its node id and the address its raft transport listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: u64,
    pub addr: String,
}

impl Peer {
    /// Parses `<node id>@<host:port>`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let (id, addr) = text
            .split_once('@')
            .ok_or_else(|| ConfigError::Peer(text.to_string()))?;
        let node_id = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::Peer(text.to_string()))?;
        if addr.trim().is_empty() {
            return Err(ConfigError::Peer(text.to_string()));
        }
        Ok(Peer {
            node_id,
            addr: addr.trim().to_string(),
        })
    }
}

/// The effective configuration of one node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: u64,
    pub sip_udp_listen: SocketAddr,
    pub sip_tcp_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Metrics and the management API.
    pub http_listen: SocketAddr,
    pub raft_listen: SocketAddr,
    pub cluster_id: String,
    /// Other raft nodes as `<node id>@<host:port>`; empty = single-node embedded mode.
    pub peers: Vec<String>,
    pub cluster_ca: Option<PathBuf>,
    pub cluster_cert: Option<PathBuf>,
    pub cluster_key: Option<PathBuf>,
    /// Offer a SHA-256 digest challenge before the MD5 one (RFC 8760). Off
    /// = MD5 only, for phones (and sipp 3.6) that only read the first challenge.
    pub sip_digest_sha256: bool,
    /// How long a call rings before the caller hears "no answer".
    pub ring_timeout_secs: u64,
    /// CDRs older than this many days are deleted; 0 keeps them forever.
    pub cdr_retention_days: u32,
    /// The number that reaches the echo test, in every tenant.
    pub echo_test_number: String,
    /// Dialling `<prefix><room digits>` joins that conference room.
    pub conference_prefix: String,
    /// RTP ports for media the node anchors (even RTP, odd RTCP).
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// The address the node puts in its SDP; unset = its address toward
    /// each caller.
    pub media_ip: Option<std::net::IpAddr>,
    /// Recordings with the caller on the left channel and the callee on
    /// the right; false = both mixed into one channel.
    pub recording_stereo: bool,
    /// The local blob store (recordings); unset = `<data_dir>/blobs`.
    pub blob_dir: Option<PathBuf>,
    /// Create the DEMO tenant with the `demo_extensions` range.
    pub demo: bool,
    /// The demo extension numbers, `<first>-<last>`.
    pub demo_extensions: String,
    /// One password for every demo extension (tests, benchmarks); unset =
    /// a random password each, printed once.
    pub demo_password: Option<String>,
    /// The password the system administrator `admin` gets when the cluster
    /// has none yet; unset = a random one, printed once.
    pub admin_password: Option<String>,
    /// How long an API login session lasts, in seconds.
    pub api_session_ttl_secs: u64,
    /// Login attempts allowed per minute from one source address.
    pub api_logins_per_minute: u32,
    /// Edge proxies (the SBC's inside addresses) trusted to name a
    /// device's address in its Via: what an extension's allowed
    /// registration networks are checked against.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The key the SBC signs the nonces of its digest challenges with (the
    /// same file as its `edge_nonce_key_file`): a phone's answer to the
    /// SBC's challenge is accepted, and the challenged request never
    /// reaches a node. Unset = only the nodes' own nonces.
    pub edge_nonce_key_file: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            sip_udp_listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            sip_tcp_listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            data_dir: PathBuf::from("pbx-data"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            raft_listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            cluster_id: "pbx".to_string(),
            peers: Vec::new(),
            cluster_ca: None,
            cluster_cert: None,
            cluster_key: None,
            sip_digest_sha256: true,
            ring_timeout_secs: 30,
            cdr_retention_days: 90,
            echo_test_number: "*43".to_string(),
            conference_prefix: "*8".to_string(),
            rtp_port_min: 20_000,
            rtp_port_max: 29_999,
            media_ip: None,
            recording_stereo: true,
            blob_dir: None,
            demo: false,
            demo_extensions: "100-109".to_string(),
            demo_password: None,
            admin_password: None,
            api_session_ttl_secs: 8 * 3600,
            api_logins_per_minute: 30,
            // The embedded appliance runs its SBC on the same host.
            edge_nonce_key_file: None,
            trusted_proxies: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|net| net.parse().ok())
                .collect(),
        }
    }
}

impl NodeConfig {
    /// Reads a TOML file; a missing key keeps its default.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Self::from_toml(&text).map_err(|detail| ConfigError::Parse {
            path: path.to_path_buf(),
            detail,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The demo data to create, checked.
    pub fn demo_spec(&self) -> Result<DemoSpec, ConfigError> {
        let (first, last) =
            DemoSpec::parse_range(&self.demo_extensions).map_err(ConfigError::DemoRange)?;
        Ok(DemoSpec {
            first,
            last,
            password: self.demo_password.clone(),
        })
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.blob_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("blobs"))
    }

    /// Where recordings wait until the blob store has them.
    pub fn recording_spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool").join("recordings")
    }

    pub fn parsed_peers(&self) -> Result<Vec<Peer>, ConfigError> {
        self.peers.iter().map(|p| Peer::parse(p)).collect()
    }
}

/// Command line; every option also reads its `PBX_...` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "pbx-node",
    about = "Multi-tenant IP PBX node: registrar on a replicated store"
)]
pub struct Args {
    /// TOML config file (default /etc/pbx/node.toml when it exists).
    #[arg(long, env = "PBX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Node id, unique in the raft cluster.
    #[arg(long, env = "PBX_NODE_ID")]
    pub node_id: Option<u64>,
    /// SIP UDP listen address.
    #[arg(long, env = "PBX_SIP_UDP_LISTEN")]
    pub sip_udp_listen: Option<SocketAddr>,
    /// SIP TCP listen address.
    #[arg(long, env = "PBX_SIP_TCP_LISTEN")]
    pub sip_tcp_listen: Option<SocketAddr>,
    /// Directory for the raft store and generated certificates.
    #[arg(long, env = "PBX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address (metrics, API).
    #[arg(long, env = "PBX_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// UDP address of the raft QUIC transport.
    #[arg(long, env = "PBX_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,
    /// Cluster name; data directories of another cluster are refused.
    #[arg(long, env = "PBX_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Raft peers, comma separated `<id>@<host:port>`.
    #[arg(long, env = "PBX_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Cluster CA certificate (PEM).
    #[arg(long, env = "PBX_CLUSTER_CA")]
    pub cluster_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    #[arg(long, env = "PBX_CLUSTER_CERT")]
    pub cluster_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "PBX_CLUSTER_KEY")]
    pub cluster_key: Option<PathBuf>,
    /// Offer SHA-256 digest challenges as well as MD5 (true/false).
    #[arg(long, env = "PBX_SIP_DIGEST_SHA256")]
    pub sip_digest_sha256: Option<bool>,
    /// Seconds a call rings before it is given up as not answered.
    #[arg(long, env = "PBX_RING_TIMEOUT_SECS")]
    pub ring_timeout_secs: Option<u64>,
    /// Days CDRs are kept (default 90; 0 = forever).
    #[arg(long, env = "PBX_CDR_RETENTION_DAYS")]
    pub cdr_retention_days: Option<u32>,
    /// The echo test's number (default *43).
    #[arg(long, env = "PBX_ECHO_TEST_NUMBER")]
    pub echo_test_number: Option<String>,
    /// Conference rooms are dialled as this prefix and the room number (default *8).
    #[arg(long, env = "PBX_CONFERENCE_PREFIX")]
    pub conference_prefix: Option<String>,
    /// Lowest RTP port the node anchors media on.
    #[arg(long, env = "PBX_RTP_PORT_MIN")]
    pub rtp_port_min: Option<u16>,
    /// Highest RTP port.
    #[arg(long, env = "PBX_RTP_PORT_MAX")]
    pub rtp_port_max: Option<u16>,
    /// The IP address the node puts in its SDP.
    #[arg(long, env = "PBX_MEDIA_IP")]
    pub media_ip: Option<std::net::IpAddr>,
    /// Record in stereo, caller left and callee right (true/false).
    #[arg(long, env = "PBX_RECORDING_STEREO")]
    pub recording_stereo: Option<bool>,
    /// Directory of the local blob store (default <data_dir>/blobs).
    #[arg(long, env = "PBX_BLOB_DIR")]
    pub blob_dir: Option<PathBuf>,
    /// Create the demo tenant (DEMO, demo.pbx.local, extensions 100–109).
    #[arg(long, env = "PBX_DEMO", num_args = 0..=1, default_missing_value = "true")]
    pub demo: Option<bool>,
    /// Demo extension numbers, `<first>-<last>` (default 100-109).
    #[arg(long, env = "PBX_DEMO_EXTENSIONS")]
    pub demo_extensions: Option<String>,
    /// One password for all demo extensions (default: random, printed once).
    #[arg(long, env = "PBX_DEMO_PASSWORD")]
    pub demo_password: Option<String>,
    /// Password of the system administrator `admin` when none exists yet
    /// (default: random, printed once).
    #[arg(long, env = "PBX_ADMIN_PASSWORD")]
    pub admin_password: Option<String>,
    /// Lifetime of an API login session in seconds (default 28800).
    #[arg(long, env = "PBX_API_SESSION_TTL_SECS")]
    pub api_session_ttl_secs: Option<u64>,
    /// Login attempts per minute from one source address (default 30).
    #[arg(long, env = "PBX_API_LOGINS_PER_MINUTE")]
    pub api_logins_per_minute: Option<u32>,
    /// Edge proxies trusted to name devices' addresses, comma separated
    /// CIDRs (default 127.0.0.0/8,::1/128).
    #[arg(long, env = "PBX_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// The SBC's nonce key file (its `edge_nonce_key_file`).
    #[arg(long, env = "PBX_EDGE_NONCE_KEY_FILE")]
    pub edge_nonce_key_file: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "PBX_LOG_JSON")]
    pub log_json: bool,
}

impl Args {
    /// The file config (if any) with flags and env applied on top. Started
    /// with no config file at all, the node runs the demo.
    pub fn resolve(&self) -> Result<NodeConfig, ConfigError> {
        let (mut config, had_file) = match &self.config {
            Some(path) => (NodeConfig::from_file(path)?, true),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                (NodeConfig::from_file(Path::new(DEFAULT_CONFIG_PATH))?, true)
            }
            None => (NodeConfig::default(), false),
        };
        if !had_file {
            config.demo = true;
        }
        self.apply(&mut config);
        config.parsed_peers()?;
        config.demo_spec()?;
        Ok(config)
    }

    fn apply(&self, config: &mut NodeConfig) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *target = v.clone();
            }
        }
        set(&mut config.node_id, &self.node_id);
        set(&mut config.sip_udp_listen, &self.sip_udp_listen);
        set(&mut config.sip_tcp_listen, &self.sip_tcp_listen);
        set(&mut config.data_dir, &self.data_dir);
        set(&mut config.http_listen, &self.http_listen);
        set(&mut config.raft_listen, &self.raft_listen);
        set(&mut config.cluster_id, &self.cluster_id);
        set(&mut config.peers, &self.peers);
        set(&mut config.sip_digest_sha256, &self.sip_digest_sha256);
        set(&mut config.demo, &self.demo);
        set(&mut config.ring_timeout_secs, &self.ring_timeout_secs);
        set(&mut config.cdr_retention_days, &self.cdr_retention_days);
        set(&mut config.echo_test_number, &self.echo_test_number);
        set(&mut config.conference_prefix, &self.conference_prefix);
        set(&mut config.rtp_port_min, &self.rtp_port_min);
        set(&mut config.rtp_port_max, &self.rtp_port_max);
        if self.media_ip.is_some() {
            config.media_ip = self.media_ip;
        }
        set(&mut config.recording_stereo, &self.recording_stereo);
        set(&mut config.trusted_proxies, &self.trusted_proxies);
        if self.blob_dir.is_some() {
            config.blob_dir.clone_from(&self.blob_dir);
        }
        if self.edge_nonce_key_file.is_some() {
            config
                .edge_nonce_key_file
                .clone_from(&self.edge_nonce_key_file);
        }
        set(&mut config.demo_extensions, &self.demo_extensions);
        if self.demo_password.is_some() {
            config.demo_password.clone_from(&self.demo_password);
        }
        if self.admin_password.is_some() {
            config.admin_password.clone_from(&self.admin_password);
        }
        set(&mut config.api_session_ttl_secs, &self.api_session_ttl_secs);
        set(
            &mut config.api_logins_per_minute,
            &self.api_logins_per_minute,
        );
        if self.cluster_ca.is_some() {
            config.cluster_ca.clone_from(&self.cluster_ca);
        }
        if self.cluster_cert.is_some() {
            config.cluster_cert.clone_from(&self.cluster_cert);
        }
        if self.cluster_key.is_some() {
            config.cluster_key.clone_from(&self.cluster_key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_override_defaults_and_flags_override_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "node_id = 3\nsip_udp_listen = \"127.0.0.1:5070\"\npeers = [\"1@10.0.0.1:7400\"]\ndemo = false\n",
        )
        .expect("write config");
        let args = Args::try_parse_from([
            "pbx-node",
            "--config",
            path.to_str().expect("utf-8 path"),
            "--node-id",
            "4",
            "--sip-digest-sha256",
            "false",
        ])
        .expect("args");
        let config = args.resolve().expect("resolve");
        assert_eq!(config.node_id, 4);
        assert_eq!(
            config.sip_udp_listen,
            "127.0.0.1:5070".parse().expect("addr")
        );
        assert_eq!(config.sip_tcp_listen, NodeConfig::default().sip_tcp_listen);
        assert_eq!(
            config.parsed_peers().expect("peers"),
            vec![Peer {
                node_id: 1,
                addr: "10.0.0.1:7400".into()
            }]
        );
        assert!(!config.demo);
        assert!(!config.sip_digest_sha256);
    }

    #[test]
    fn unknown_key_and_bad_peer_are_errors() {
        assert!(NodeConfig::from_toml("sip_port = 5060").is_err());
        assert!(Peer::parse("10.0.0.1:7400").is_err());
        assert!(Peer::parse("x@10.0.0.1:7400").is_err());
        let backwards = NodeConfig {
            demo_extensions: "109-100".into(),
            ..NodeConfig::default()
        };
        assert!(backwards.demo_spec().is_err());
    }

    #[test]
    fn demo_flag_without_value_means_true() {
        let args = Args::try_parse_from(["pbx-node", "--demo"]).expect("args");
        assert_eq!(args.demo, Some(true));
    }
}
