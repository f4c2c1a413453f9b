//! Which pbx-nodes are drained, kept in `<data_dir>/drained-nodes` so that
//! a restart of the SBC (its own upgrade, a crash) does not put a node that
//! is being upgraded back in the rotation.
//!
//! The file is one `ip:port` per line (`#` starts a comment). It is written
//! whole to a temporary file, synced and renamed over the old one, so a
//! crash leaves either the old list or the new one.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::SbcError;

const FILE_NAME: &str = "drained-nodes";
const HEADER: &str = "# pbx-nodes drained through the SBC's admin endpoint: no new dialogs\n\
                      # or registrations go to them. One ip:port per line.\n";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainedNodes {
    path: PathBuf,
    nodes: BTreeSet<SocketAddr>,
}

impl DrainedNodes {
    /// The list in `data_dir`; empty if there is none yet. A line that is
    /// no `ip:port` is an error naming the file and the line.
    pub fn load(data_dir: &Path) -> Result<DrainedNodes, SbcError> {
        let path = data_dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(SbcError::File {
                    path,
                    detail: e.to_string(),
                })
            }
        };
        let mut nodes = BTreeSet::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let node = line.parse().map_err(|_| SbcError::File {
                path: path.clone(),
                detail: format!("line {}: '{line}' is no ip:port", number + 1),
            })?;
            nodes.insert(node);
        }
        Ok(DrainedNodes { path, nodes })
    }

    pub fn nodes(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.nodes.iter().copied()
    }

    /// Records `node` as drained or not. On an error nothing changed,
    /// neither the file nor this list.
    pub fn set(&mut self, node: SocketAddr, draining: bool) -> Result<(), SbcError> {
        let mut nodes = self.nodes.clone();
        let changed = if draining {
            nodes.insert(node)
        } else {
            nodes.remove(&node)
        };
        if changed {
            self.write(&nodes).map_err(|e| SbcError::File {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
            self.nodes = nodes;
        }
        Ok(())
    }

    fn write(&self, nodes: &BTreeSet<SocketAddr>) -> std::io::Result<()> {
        let mut text = String::from(HEADER);
        for node in nodes {
            text.push_str(&node.to_string());
            text.push('\n');
        }
        let temporary = self.path.with_extension("new");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path)?;
        // The rename is durable once the directory is synced.
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn drains_survive_a_reload_and_undrains_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut drained = DrainedNodes::load(dir.path()).unwrap();
        assert_eq!(drained.nodes().count(), 0, "no file: nothing drained");
        drained.set(addr("10.0.0.1:5060"), true).unwrap();
        drained.set(addr("[2001:db8::2]:5060"), true).unwrap();
        drained.set(addr("10.0.0.1:5060"), true).unwrap();
        assert_eq!(DrainedNodes::load(dir.path()).unwrap(), drained);
        drained.set(addr("10.0.0.1:5060"), false).unwrap();
        drained.set(addr("10.0.0.9:5060"), false).unwrap();
        let reloaded = DrainedNodes::load(dir.path()).unwrap();
        assert_eq!(
            reloaded.nodes().collect::<Vec<_>>(),
            [addr("[2001:db8::2]:5060")]
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "# comment\n10.0.0.1:5060 # node a\n\nnode-b\n").unwrap();
        let error = DrainedNodes::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("drained-nodes"), "{error}");
        assert!(error.contains("line 4: 'node-b' is no ip:port"), "{error}");
        std::fs::write(&path, "10.0.0.1:5060 # node a\n").unwrap();
        let drained = DrainedNodes::load(dir.path()).unwrap();
        assert_eq!(drained.nodes().collect::<Vec<_>>(), [addr("10.0.0.1:5060")]);
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut drained = DrainedNodes::load(dir.path()).unwrap();
        drained.set(addr("10.0.0.1:5060"), true).unwrap();
        // The temporary file cannot be created where a directory stands.
        std::fs::create_dir(dir.path().join("drained-nodes.new")).unwrap();
        let before = drained.clone();
        assert!(drained.set(addr("10.0.0.2:5060"), true).is_err());
        assert_eq!(drained, before);
        assert_eq!(DrainedNodes::load(dir.path()).unwrap(), before);
    }
}
