//! Blob storage for recordings (and later voicemail, prompts, backups):
//! one [`BlobStore`] trait, with a local directory as the embedded default;
//! S3 comes behind the same trait.
//!
//! Keys are `/`-separated paths of plain segments (`recordings/<tenant>/<id>.wav`),
//! so one key can never name a file outside the store.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob key '{0}' is not a path of letters, digits, '.', '-' and '_' segments")]
    BadKey(String),
    #[error("blob '{0}' does not exist")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where blobs live. Writes are durable when they return.
pub trait BlobStore: Send + Sync {
    /// Stores the contents of the file at `source` under `key` (replacing
    /// any blob of that key); returns the size stored.
    fn put_file<'a>(
        &'a self,
        key: &'a str,
        source: &'a Path,
    ) -> BoxFuture<'a, Result<u64, BlobError>>;
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, BlobError>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), BlobError>>;
}

/// Checks a key: non-empty segments of `[A-Za-z0-9._-]`, none of them `.` or `..`.
pub fn check_key(key: &str) -> Result<(), BlobError> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    if key.split('/').all(segment_ok) {
        Ok(())
    } else {
        Err(BlobError::BadKey(key.to_string()))
    }
}

/// Blobs as files under one directory, written to a temporary name,
/// fsynced and renamed, so a crash leaves either the old blob or the new.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    pub fn new(root: PathBuf) -> Self {
        LocalDirStore { root }
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn copy_durably(source: &Path, target: &Path) -> Result<u64, BlobError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let temporary = target.with_extension("partial");
    let size = std::fs::copy(source, &temporary).map_err(io_error(source))?;
    std::fs::File::open(&temporary)
        .and_then(|f| f.sync_all())
        .map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, target).map_err(io_error(target))?;
    // The rename itself is durable once the directory is synced.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))?;
    Ok(size)
}

impl BlobStore for LocalDirStore {
    fn put_file<'a>(
        &'a self,
        key: &'a str,
        source: &'a Path,
    ) -> BoxFuture<'a, Result<u64, BlobError>> {
        Box::pin(async move {
            let target = self.path_of(key)?;
            let source = source.to_path_buf();
            tokio::task::spawn_blocking(move || copy_durably(&source, &target))
                .await
                .map_err(|e| BlobError::Io {
                    path: self.root.clone(),
                    source: std::io::Error::other(e),
                })?
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, BlobError>> {
        Box::pin(async move {
            let path = self.path_of(key)?;
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(BlobError::NotFound(key.to_string()))
                }
                Err(e) => Err(io_error(&path)(e)),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            let path = self.path_of(key)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(&path)(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_reads_replaces_and_deletes_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path().join("blobs"));
        let source = dir.path().join("spooled.wav");
        std::fs::write(&source, b"first").unwrap();
        let key = "recordings/t1/abc.wav";
        assert_eq!(store.put_file(key, &source).await.unwrap(), 5);
        assert_eq!(store.get(key).await.unwrap(), b"first");
        std::fs::write(&source, b"second!").unwrap();
        assert_eq!(store.put_file(key, &source).await.unwrap(), 7);
        assert_eq!(store.get(key).await.unwrap(), b"second!");
        assert!(
            source.exists(),
            "the spooled file is the caller's to delete"
        );
        store.delete(key).await.unwrap();
        assert!(matches!(store.get(key).await, Err(BlobError::NotFound(_))));
        store.delete(key).await.unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("blobs/recordings/t1"))
            .unwrap()
            .collect();
        assert!(
            leftovers.is_empty(),
            "no temporary file left: {leftovers:?}"
        );
    }

    #[tokio::test]
    async fn keys_cannot_leave_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path().to_path_buf());
        let source = dir.path().join("x");
        std::fs::write(&source, b"x").unwrap();
        for key in ["../escape", "/abs", "a//b", "a/./b", "", "a/b c", "a\\b"] {
            assert!(
                matches!(
                    store.put_file(key, &source).await,
                    Err(BlobError::BadKey(_))
                ),
                "{key}"
            );
            assert!(
                matches!(store.get(key).await, Err(BlobError::BadKey(_))),
                "{key}"
            );
        }
        assert!(store.get("missing/blob").await.is_err());
    }
}
