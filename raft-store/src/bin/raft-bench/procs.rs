//! A cluster of `raft-node` processes on loopback, driven over QUIC with a
//! client certificate. Used by the benchmark and by the multi-process tests
//! (which include this file), so that kill -9 is a real process kill.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use raft_store::{
    ClientReply, ClientRequest, ClusterCa, Command, CommandResult, KeyRange, NodeId, RangeResult,
    RemoteClient, Txn, TxnOp,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command as Process};

pub struct NodeProc {
    pub addr: SocketAddr,
    pub child: Option<Child>,
}

pub struct ProcCluster {
    pub dir: PathBuf,
    /// The program and the leading arguments that make it run a node.
    program: Vec<String>,
    pub nodes: BTreeMap<NodeId, NodeProc>,
    pub handle: ClusterHandle,
}

/// Talks to the nodes; cheap to clone into client tasks.
#[derive(Clone)]
pub struct ClusterHandle {
    addrs: Arc<BTreeMap<NodeId, SocketAddr>>,
    client: Arc<RemoteClient>,
}

fn free_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port on 127.0.0.1")
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

impl ProcCluster {
    /// Starts `n` node processes in `dir` and joins them into one cluster.
    pub async fn start(program: Vec<String>, dir: &Path, n: u64) -> Result<ProcCluster, Error> {
        let ca = ClusterCa::generate("bench")?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
        for id in 1..=n {
            let node = ca.issue_node(id)?;
            std::fs::write(dir.join(format!("node-{id}.pem")), &node.cert_pem)?;
            std::fs::write(dir.join(format!("node-{id}.key")), &node.key_pem)?;
        }
        let client = Arc::new(RemoteClient::new(
            &ca.issue_client("bench")?,
            Duration::from_secs(5),
        )?);
        let nodes: BTreeMap<NodeId, NodeProc> = (1..=n)
            .map(|id| {
                (
                    id,
                    NodeProc {
                        addr: free_addr(),
                        child: None,
                    },
                )
            })
            .collect();
        let addrs = Arc::new(nodes.iter().map(|(id, n)| (*id, n.addr)).collect());
        let mut cluster = ProcCluster {
            dir: dir.to_path_buf(),
            program,
            nodes,
            handle: ClusterHandle { addrs, client },
        };
        for id in 1..=n {
            cluster.spawn(id, id == 1).await?;
        }
        for id in 2..=n {
            let addr = cluster.nodes[&id].addr.to_string();
            cluster
                .admin(ClientRequest::AddLearner { id, addr, hops: 0 })
                .await?;
        }
        let voters = (1..=n).collect();
        cluster
            .admin(ClientRequest::ChangeVoters { voters, hops: 0 })
            .await?;
        Ok(cluster)
    }

    async fn admin(&self, request: ClientRequest) -> Result<(), Error> {
        match self.handle.call(1, request).await? {
            ClientReply::Done => Ok(()),
            other => Err(format!("membership change: {other:?}").into()),
        }
    }

    /// Starts node `id`'s process and waits until it says it is ready.
    pub async fn spawn(&mut self, id: NodeId, init: bool) -> Result<(), Error> {
        let node = self.nodes.get_mut(&id).ok_or("no such node")?;
        let (bin, leading) = self.program.split_first().ok_or("no program")?;
        let mut cmd = Process::new(bin);
        cmd.args(leading)
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(node.addr.to_string())
            .arg("--data-dir")
            .arg(self.dir.join(format!("data-{id}")))
            .arg("--ca-cert")
            .arg(self.dir.join("ca.pem"))
            .arg("--cert")
            .arg(self.dir.join(format!("node-{id}.pem")))
            .arg("--key")
            .arg(self.dir.join(format!("node-{id}.key")))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if init {
            cmd.arg("--init");
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await??;
        if ready.as_deref() != Some("ready") {
            return Err(format!("node {id} did not start: {ready:?}").into());
        }
        node.child = Some(child);
        Ok(())
    }

    /// kill -9.
    pub async fn kill(&mut self, id: NodeId) -> Result<(), Error> {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            child.kill().await?;
        }
        Ok(())
    }

    pub fn live(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.child.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn pid(&self, id: NodeId) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref()?.id()
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("data-{id}"))
    }

    /// The node that says it leads, if any live node does.
    pub async fn leader(&self) -> Option<NodeId> {
        for id in self.live() {
            if let Ok(ClientReply::Status(s)) = self.handle.call(id, ClientRequest::Status).await {
                if s.leader == Some(id) {
                    return Some(id);
                }
            }
        }
        None
    }
}

impl ClusterHandle {
    pub async fn call(&self, via: NodeId, request: ClientRequest) -> Result<ClientReply, Error> {
        let addr = self.addrs.get(&via).ok_or("no such node")?.to_string();
        Ok(self.client.call(via, &addr, request).await?)
    }

    /// Puts through node `via`; returns the revision of the write.
    pub async fn put(&self, via: NodeId, key: Vec<u8>, value: Vec<u8>) -> Result<u64, Error> {
        let command = Command::Txn(Txn::new().and_then([TxnOp::put(key, value)]));
        match self
            .call(via, ClientRequest::Write { command, hops: 0 })
            .await?
        {
            ClientReply::Command(CommandResult::Txn(t)) => Ok(t.revision),
            other => Err(format!("put: {other:?}").into()),
        }
    }

    pub async fn range(
        &self,
        via: NodeId,
        range: KeyRange,
        linearizable: bool,
    ) -> Result<RangeResult, Error> {
        let request = ClientRequest::Range {
            range,
            limit: 0,
            linearizable,
        };
        match self.call(via, request).await? {
            ClientReply::Range(r) => Ok(r),
            other => Err(format!("range: {other:?}").into()),
        }
    }
}
