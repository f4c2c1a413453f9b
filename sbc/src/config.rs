//! SBC configuration: one TOML file (`/etc/pbx/sbc.toml`), each key
//! overridable by a `SBC_...` environment variable and a flag (flag > env >
//! file > default). The defaults front one pbx-node on this machine.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pbx/sbc.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SbcConfig {
    /// Phone-facing listeners; `[::]` (the default) serves IPv6 and IPv4.
    pub udp_listen: SocketAddr,
    pub tcp_listen: SocketAddr,
    pub tls_listen: SocketAddr,
    pub wss_listen: SocketAddr,
    /// The browser softphone page (HTTPS, the TLS certificate above).
    pub https_listen: SocketAddr,
    /// The host phones are told in Via and Contact; unset = this machine's
    /// address on its default route.
    pub public_host: Option<String>,
    /// Our UDP address toward the pbx-nodes.
    pub internal_listen: SocketAddr,
    /// The pbx-nodes' SIP UDP addresses.
    pub nodes: Vec<SocketAddr>,
    /// PEM certificate chain and key for TLS and WSS; unset = a self-signed
    /// certificate generated into `data_dir` on first start.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Where phone-facing RTP sockets bind, and the address their SDP
    /// names (a NAT's public address in front of us); unset = `public_host`
    /// if it is an IP, else the bind address.
    pub media_public_bind: IpAddr,
    pub media_public_ip: Option<IpAddr>,
    /// Node-facing RTP sockets; unset = the IP of `internal_listen`.
    pub media_internal_ip: Option<IpAddr>,
    /// Threads relaying media; 0 = one per core but the one signalling
    /// runs on (at least one).
    pub media_threads: usize,
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    /// A double-CRLF keepalive to each phone registered over UDP this
    /// often, so its NAT keeps the mapping; 0 = none.
    pub udp_keepalive_interval_secs: u64,
    /// A TLS, WSS or WS connection must finish its handshake within this.
    pub tls_handshake_timeout_ms: u64,
    /// Phone-facing TCP/TLS/WS connections open at once, all sources
    /// together; further ones are refused.
    pub max_connections: usize,
    /// Larger SIP messages are refused (a stream connection sending one is
    /// closed).
    pub max_message_bytes: usize,
    /// Metrics (`/metrics`) and the admin endpoints.
    pub http_listen: SocketAddr,
    /// Rate limits, bans and allow/deny lists (`[guard]`).
    pub guard: crate::guard::GuardConfig,
    /// A secret shared with the pbx-nodes (their `edge_nonce_key_file`):
    /// with it, once a node has challenged a phone's request, the SBC
    /// challenges the like of it itself with nonces the nodes accept, and
    /// the challenged request never reaches a node. Unset = every request
    /// goes to a node.
    pub edge_nonce_key_file: Option<PathBuf>,
}

impl Default for SbcConfig {
    fn default() -> Self {
        SbcConfig {
            // Dual-stack: IPv6 and IPv4 on each socket.
            udp_listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 5060)),
            tcp_listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 5060)),
            tls_listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 5061)),
            wss_listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 8443)),
            https_listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 8444)),
            public_host: None,
            internal_listen: SocketAddr::from(([127, 0, 0, 1], 5080)),
            nodes: vec![SocketAddr::from(([127, 0, 0, 1], 5070))],
            tls_cert: None,
            tls_key: None,
            data_dir: PathBuf::from("sbc-data"),
            rtp_port_min: 30_000,
            rtp_port_max: 39_999,
            media_public_bind: IpAddr::from([0, 0, 0, 0]),
            media_public_ip: None,
            media_internal_ip: None,
            media_threads: 0,
            probe_interval_ms: 1000,
            probe_timeout_ms: 900,
            // Below the 30 s many consumer NATs keep an idle UDP mapping.
            udp_keepalive_interval_secs: 20,
            tls_handshake_timeout_ms: 5_000,
            max_connections: 10_000,
            max_message_bytes: 65_535,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            guard: crate::guard::GuardConfig::default(),
            edge_nonce_key_file: None,
        }
    }
}

impl SbcConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |detail: String| ConfigError::File {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        toml::from_str(&text).map_err(|e| file_error(e.to_string()))
    }

    /// The host in our Via and Contact toward phones.
    pub fn public_host(&self) -> String {
        if let Some(host) = &self.public_host {
            return host.clone();
        }
        let ip = if self.udp_listen.ip().is_unspecified() {
            // The source address of the default route; no packet is sent.
            sip::endpoint::local_ip_toward(SocketAddr::from(([192, 0, 2, 1], 9)))
                .unwrap_or(IpAddr::from([127, 0, 0, 1]))
        } else {
            self.udp_listen.ip()
        };
        match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        }
    }

    pub fn media_public_ip(&self) -> IpAddr {
        self.media_public_ip
            .or_else(|| self.public_host().trim_matches(['[', ']']).parse().ok())
            .unwrap_or(self.media_public_bind)
    }

    pub fn media_internal_ip(&self) -> IpAddr {
        self.media_internal_ip.unwrap_or(self.internal_listen.ip())
    }

    /// The media runtime's threads. Signalling has a thread of its own:
    /// as many media threads as cores had the two contend, and more
    /// relay threads than free cores cost cross-thread wake-ups (on 2
    /// cores, one media thread relayed 200 calls with 7-10% less CPU
    /// than two).
    pub fn media_threads(&self) -> usize {
        match self.media_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |cores| cores.get().saturating_sub(1))
                .max(1),
            threads => threads,
        }
    }

    /// File descriptors the SBC may need at full load: one per RTP port of
    /// the range and per connection, and 1,024 for the rest.
    pub fn open_files_needed(&self) -> u64 {
        u64::from(self.rtp_port_max.saturating_sub(self.rtp_port_min))
            + 1
            + self.max_connections as u64
            + 1024
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::Invalid("nodes: at least one pbx-node".into()));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key must be given together".into(),
            ));
        }
        if self.max_message_bytes < 1500 {
            return Err(ConfigError::Invalid(format!(
                "max_message_bytes {} is below one MTU (1500): every INVITE would be refused",
                self.max_message_bytes
            )));
        }
        if self.tls_handshake_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "tls_handshake_timeout_ms must be above 0".into(),
            ));
        }
        if self.rtp_port_max <= self.rtp_port_min.saturating_add(3) {
            return Err(ConfigError::Invalid(format!(
                "rtp_port_min {} .. rtp_port_max {} leaves no room for a call (2 port pairs)",
                self.rtp_port_min, self.rtp_port_max
            )));
        }
        Ok(())
    }
}

/// Command line; every option also reads its `SBC_...` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "sbc",
    about = "Session border controller in front of the pbx-nodes"
)]
pub struct Args {
    /// TOML config file (default /etc/pbx/sbc.toml when it exists).
    #[arg(long, env = "SBC_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "SBC_UDP_LISTEN")]
    pub udp_listen: Option<SocketAddr>,
    #[arg(long, env = "SBC_TCP_LISTEN")]
    pub tcp_listen: Option<SocketAddr>,
    #[arg(long, env = "SBC_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    #[arg(long, env = "SBC_WSS_LISTEN")]
    pub wss_listen: Option<SocketAddr>,
    #[arg(long, env = "SBC_HTTPS_LISTEN")]
    pub https_listen: Option<SocketAddr>,
    #[arg(long, env = "SBC_PUBLIC_HOST")]
    pub public_host: Option<String>,
    #[arg(long, env = "SBC_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,
    /// pbx-node SIP addresses, comma separated.
    #[arg(long, env = "SBC_NODES", value_delimiter = ',')]
    pub nodes: Option<Vec<SocketAddr>>,
    #[arg(long, env = "SBC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "SBC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    #[arg(long, env = "SBC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "SBC_RTP_PORT_MIN")]
    pub rtp_port_min: Option<u16>,
    #[arg(long, env = "SBC_RTP_PORT_MAX")]
    pub rtp_port_max: Option<u16>,
    #[arg(long, env = "SBC_MEDIA_PUBLIC_BIND")]
    pub media_public_bind: Option<IpAddr>,
    #[arg(long, env = "SBC_MEDIA_PUBLIC_IP")]
    pub media_public_ip: Option<IpAddr>,
    #[arg(long, env = "SBC_MEDIA_INTERNAL_IP")]
    pub media_internal_ip: Option<IpAddr>,
    #[arg(long, env = "SBC_MEDIA_THREADS")]
    pub media_threads: Option<usize>,
    #[arg(long, env = "SBC_UDP_KEEPALIVE_INTERVAL_SECS")]
    pub udp_keepalive_interval_secs: Option<u64>,
    #[arg(long, env = "SBC_TLS_HANDSHAKE_TIMEOUT_MS")]
    pub tls_handshake_timeout_ms: Option<u64>,
    #[arg(long, env = "SBC_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    #[arg(long, env = "SBC_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    #[arg(long, env = "SBC_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// The nonce key shared with the pbx-nodes.
    #[arg(long, env = "SBC_EDGE_NONCE_KEY_FILE")]
    pub edge_nonce_key_file: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "SBC_LOG_JSON")]
    pub log_json: bool,
}

impl Args {
    pub fn resolve(&self) -> Result<SbcConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => SbcConfig::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                SbcConfig::from_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => SbcConfig::default(),
        };
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *target = v.clone();
            }
        }
        fn set_some<T: Clone>(target: &mut Option<T>, value: &Option<T>) {
            if value.is_some() {
                target.clone_from(value);
            }
        }
        set(&mut config.udp_listen, &self.udp_listen);
        set(&mut config.tcp_listen, &self.tcp_listen);
        set(&mut config.tls_listen, &self.tls_listen);
        set(&mut config.wss_listen, &self.wss_listen);
        set(&mut config.https_listen, &self.https_listen);
        set_some(&mut config.public_host, &self.public_host);
        set(&mut config.internal_listen, &self.internal_listen);
        set(&mut config.nodes, &self.nodes);
        set_some(&mut config.tls_cert, &self.tls_cert);
        set_some(&mut config.tls_key, &self.tls_key);
        set(&mut config.data_dir, &self.data_dir);
        set(&mut config.rtp_port_min, &self.rtp_port_min);
        set(&mut config.rtp_port_max, &self.rtp_port_max);
        set(&mut config.media_public_bind, &self.media_public_bind);
        set_some(&mut config.media_public_ip, &self.media_public_ip);
        set_some(&mut config.media_internal_ip, &self.media_internal_ip);
        set(&mut config.media_threads, &self.media_threads);
        set(
            &mut config.udp_keepalive_interval_secs,
            &self.udp_keepalive_interval_secs,
        );
        set(
            &mut config.tls_handshake_timeout_ms,
            &self.tls_handshake_timeout_ms,
        );
        set(&mut config.max_connections, &self.max_connections);
        set(&mut config.max_message_bytes, &self.max_message_bytes);
        set(&mut config.http_listen, &self.http_listen);
        set_some(&mut config.edge_nonce_key_file, &self.edge_nonce_key_file);
        config.check()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_threads_leave_signalling_a_core_unless_set() {
        let auto = SbcConfig::default().media_threads();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(auto, cores.saturating_sub(1).max(1));
        let set = SbcConfig {
            media_threads: 3,
            ..SbcConfig::default()
        };
        assert_eq!(set.media_threads(), 3);
    }

    #[test]
    fn file_values_and_their_checks() {
        let config: SbcConfig = toml::from_str(
            "public_host = \"sbc.example.net\"\nnodes = [\"10.0.0.1:5060\", \"10.0.0.2:5060\"]\n\
             media_public_ip = \"203.0.113.5\"\n",
        )
        .unwrap();
        assert_eq!(config.public_host(), "sbc.example.net");
        assert_eq!(config.nodes.len(), 2);
        assert_eq!(
            config.media_public_ip(),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            config.media_internal_ip(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        config.check().unwrap();
        assert!(
            toml::from_str::<SbcConfig>("nodez = []").is_err(),
            "unknown key"
        );
        let no_nodes = SbcConfig {
            nodes: Vec::new(),
            ..SbcConfig::default()
        };
        assert!(no_nodes.check().is_err());
        let half_tls = SbcConfig {
            tls_cert: Some("/x.pem".into()),
            ..SbcConfig::default()
        };
        assert!(half_tls.check().is_err());
    }
}
