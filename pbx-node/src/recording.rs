//! Call recording: a tap on a call's media relay writes the call to a WAV
//! file in the spool directory; when the call ends the file is handed to
//! the uploader, which puts it in the blob store, indexes it in raft-store
//! and only then deletes the spooled copy. A blob store or raft outage
//! delays a recording; it never loses one (the spool is retried, also
//! after a restart).
//!
//! Spool layout: `<id>.part.wav` and `<id>.part.json` (the index record as
//! known at the answer) while recording, then `<id>.wav` with its final
//! index record `<id>.json` written last: a `.json` means "ready to
//! upload". A recording cut short by a crash is completed at the next start
//! from its `.part` pair, up to the last sample written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use media::recorder::{CallRecorder, RecordingLayout};
use media::relay::udp::RelayTap;
use media::wav::WavEncoding;
use media::Leg;
use tokio::sync::mpsc;

use crate::blobs::BlobStore;
use crate::model::Recording;
use crate::repo::Repo;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Retry pauses of the uploader after a failure: doubling up to a minute.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(60);

/// What a recording is of, known when the call is answered.
#[derive(Debug, Clone)]
pub struct RecordingStart {
    pub id: String,
    pub tenant_id: String,
    pub call_id: String,
    pub from: String,
    pub to: String,
    /// See [`Recording::reason`].
    pub reason: String,
    /// UTC unix milliseconds of the answer.
    pub start_ms: u64,
}

/// The node's recorder: starts taps, and owns the uploader.
pub struct Recordings {
    spool: PathBuf,
    layout: RecordingLayout,
    node_id: u64,
    /// Wakes the uploader when a recording is ready.
    ready: mpsc::UnboundedSender<()>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RecordingError + '_ {
    move |source| RecordingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn part_path(spool: &Path, id: &str) -> PathBuf {
    spool.join(format!("{id}.part.wav"))
}

fn wav_path(spool: &Path, id: &str) -> PathBuf {
    spool.join(format!("{id}.wav"))
}

fn index_path(spool: &Path, id: &str) -> PathBuf {
    spool.join(format!("{id}.json"))
}

fn part_index_path(spool: &Path, id: &str) -> PathBuf {
    spool.join(format!("{id}.part.json"))
}

fn write_index(path: &Path, index: &Recording) -> Result<(), RecordingError> {
    let encoded = serde_json::to_vec(index).map_err(|e| io_error(path)(e.into()))?;
    let mut out = File::create(path).map_err(io_error(path))?;
    out.write_all(&encoded)
        .and_then(|()| out.sync_all())
        .map_err(io_error(path))
}

const ENCODING: WavEncoding = WavEncoding::Pcm16;

fn channels(layout: &str) -> u16 {
    if layout == "mixed" {
        1
    } else {
        2
    }
}

/// Where a recording's audio lives in the blob store.
pub fn blob_key(tenant_id: &str, id: &str) -> String {
    format!("recordings/{tenant_id}/{id}.wav")
}

impl Recordings {
    /// Creates the spool directory and starts the uploader, which first
    /// uploads whatever an earlier run left ready in the spool.
    pub fn start(
        spool: PathBuf,
        stereo: bool,
        node_id: u64,
        blobs: Arc<dyn BlobStore>,
        repo: Repo,
    ) -> Result<(Arc<Recordings>, tokio::task::JoinHandle<()>), RecordingError> {
        std::fs::create_dir_all(&spool).map_err(io_error(&spool))?;
        // Nothing records yet: every `.part` is from a run that died.
        complete_interrupted(&spool);
        let (ready, wakeups) = mpsc::unbounded_channel();
        let uploader = tokio::spawn(upload_loop(spool.clone(), blobs, repo, wakeups));
        let layout = if stereo {
            RecordingLayout::Stereo
        } else {
            RecordingLayout::Mixed
        };
        let recordings = Recordings {
            spool,
            layout,
            node_id,
            ready,
        };
        Ok((Arc::new(recordings), uploader))
    }

    /// A relay tap recording one call from now on.
    pub fn tap(&self, start: RecordingStart) -> Result<Box<dyn RelayTap>, RecordingError> {
        let part = part_path(&self.spool, &start.id);
        let file = File::create(&part).map_err(io_error(&part))?;
        let now = Instant::now();
        let recorder = CallRecorder::new(BufWriter::new(file), ENCODING, self.layout, now)
            .map_err(|e| RecordingError::Io {
                path: part.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let index = Recording {
            id: start.id,
            tenant_id: start.tenant_id,
            call_id: start.call_id,
            from: start.from,
            to: start.to,
            reason: start.reason,
            start_ms: start.start_ms,
            end_ms: start.start_ms,
            layout: match self.layout {
                RecordingLayout::Stereo => "stereo",
                RecordingLayout::Mixed => "mixed",
            }
            .to_string(),
            content_type: "audio/wav".to_string(),
            size_bytes: 0,
            blob_key: String::new(),
            node_id: self.node_id,
        };
        write_index(&part_index_path(&self.spool, &index.id), &index)?;
        Ok(Box::new(RecordingTap {
            recorder: Some(recorder),
            started: now,
            spool: self.spool.clone(),
            index,
            ready: self.ready.clone(),
        }))
    }
}

struct RecordingTap {
    /// `None` once writing failed (disk full): the call goes on unrecorded.
    recorder: Option<CallRecorder<BufWriter<File>>>,
    started: Instant,
    spool: PathBuf,
    index: Recording,
    ready: mpsc::UnboundedSender<()>,
}

impl RelayTap for RecordingTap {
    fn rtp(&mut self, from: Leg, packet: &[u8], now: Instant) {
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.push_rtp(from, packet, now);
        }
    }

    fn tick(&mut self, now: Instant) {
        let Some(recorder) = self.recorder.as_mut() else {
            return;
        };
        if let Err(error) = recorder.flush(now) {
            tracing::error!(id = %self.index.id, %error, "recording stopped: cannot write the spool");
            self.recorder = None;
        }
    }

    fn close(self: Box<Self>, now: Instant) {
        let RecordingTap {
            recorder,
            started,
            spool,
            mut index,
            ready,
        } = *self;
        let Some(recorder) = recorder else {
            return;
        };
        let elapsed = now.saturating_duration_since(started).as_millis();
        index.end_ms = index.start_ms + u64::try_from(elapsed).unwrap_or(u64::MAX);
        // Finishing syncs the file: off the relay's thread.
        tokio::task::spawn_blocking(move || match finish(recorder, &spool, &index) {
            Ok(()) => {
                let _ = ready.send(());
            }
            Err(error) => tracing::error!(id = %index.id, %error, "recording not finished"),
        });
    }
}

/// Completes the WAV, moves it to its final spool name and writes its
/// index record last.
fn finish(
    recorder: CallRecorder<BufWriter<File>>,
    spool: &Path,
    index: &Recording,
) -> Result<(), RecordingError> {
    let part = part_path(spool, &index.id);
    let file = recorder
        .finish()
        .map_err(|e| RecordingError::Io {
            path: part.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .into_inner()
        .map_err(|e| io_error(&part)(e.into_error()))?;
    file.sync_all().map_err(io_error(&part))?;
    publish(spool, index)
}

/// Moves a finished recording to its final name and marks it ready.
fn publish(spool: &Path, index: &Recording) -> Result<(), RecordingError> {
    let part = part_path(spool, &index.id);
    let wav = wav_path(spool, &index.id);
    std::fs::rename(&part, &wav).map_err(io_error(&wav))?;
    write_index(&index_path(spool, &index.id), index)?;
    let part_index = part_index_path(spool, &index.id);
    std::fs::remove_file(&part_index).map_err(io_error(&part_index))
}

/// Completes each recording a crash interrupted, from its `.part` pair.
fn complete_interrupted(spool: &Path) {
    let Ok(entries) = std::fs::read_dir(spool) else {
        return;
    };
    for path in entries.flatten().map(|e| e.path()) {
        if !path.to_string_lossy().ends_with(".part.json") {
            continue;
        }
        match complete_one(spool, &path) {
            Ok(id) => {
                tracing::warn!(%id, "recording interrupted by a restart: kept up to the restart")
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "interrupted recording left in the spool")
            }
        }
    }
}

fn complete_one(spool: &Path, part_index: &Path) -> Result<String, RecordingError> {
    let bytes = std::fs::read(part_index).map_err(io_error(part_index))?;
    let mut index: Recording = serde_json::from_slice(&bytes)
        .map_err(|e| io_error(part_index)(std::io::Error::other(e)))?;
    let part = part_path(spool, &index.id);
    let frames = media::wav::complete_interrupted(&part, ENCODING, channels(&index.layout))
        .map_err(|e| io_error(&part)(std::io::Error::other(e.to_string())))?;
    index.end_ms = index.start_ms + frames * 1000 / u64::from(media::SAMPLE_RATE);
    publish(spool, &index)?;
    Ok(index.id)
}

/// Uploads every ready recording, then waits for the next (or for the
/// retry pause after a failure).
async fn upload_loop(
    spool: PathBuf,
    blobs: Arc<dyn BlobStore>,
    repo: Repo,
    mut wakeups: mpsc::UnboundedReceiver<()>,
) {
    let mut retry = FIRST_RETRY;
    loop {
        let failed = match upload_ready(&spool, blobs.as_ref(), &repo).await {
            Ok(()) => false,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?retry, "recording upload delayed");
                true
            }
        };
        if failed {
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                woken = wakeups.recv() => if woken.is_none() { return },
            }
            retry = (retry * 2).min(LAST_RETRY);
        } else {
            retry = FIRST_RETRY;
            if wakeups.recv().await.is_none() {
                return;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error(transparent)]
    Spool(#[from] RecordingError),
    #[error("blob store: {0}")]
    Blob(#[from] crate::blobs::BlobError),
    #[error("index: {0}")]
    Index(#[from] crate::repo::RepoError),
}

async fn upload_ready(spool: &Path, blobs: &dyn BlobStore, repo: &Repo) -> Result<(), UploadError> {
    let entries = std::fs::read_dir(spool).map_err(io_error(spool))?;
    let mut ready: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    // Oldest first: ids start with the start time.
    ready.sort();
    for json in ready {
        let bytes = std::fs::read(&json).map_err(io_error(&json))?;
        let mut index: Recording = match serde_json::from_slice(&bytes) {
            Ok(index) => index,
            Err(e) => {
                // Left for an operator to look at; the rest go on.
                tracing::error!(path = %json.display(), error = %e, "unreadable recording index in the spool");
                continue;
            }
        };
        let wav = wav_path(spool, &index.id);
        index.blob_key = blob_key(&index.tenant_id, &index.id);
        index.size_bytes = blobs.put_file(&index.blob_key, &wav).await?;
        repo.put_recording(&index).await?;
        std::fs::remove_file(&wav).map_err(io_error(&wav))?;
        std::fs::remove_file(&json).map_err(io_error(&json))?;
        tracing::info!(id = %index.id, bytes = index.size_bytes, "recording stored");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_cut_by_a_crash_is_completed_and_made_ready() {
        let spool = tempfile::tempdir().unwrap();
        let index = Recording {
            id: "0000000000001000-abc".into(),
            tenant_id: "t1".into(),
            call_id: "c1".into(),
            from: "100".into(),
            to: "101".into(),
            reason: "inbound".into(),
            start_ms: 1_000,
            end_ms: 1_000,
            layout: "stereo".into(),
            content_type: "audio/wav".into(),
            size_bytes: 0,
            blob_key: String::new(),
            node_id: 1,
        };
        // What a tap leaves when the process dies: half a second of stereo
        // audio under a header that was never completed.
        write_index(&part_index_path(spool.path(), &index.id), &index).unwrap();
        let file = File::create(part_path(spool.path(), &index.id)).unwrap();
        let mut writer = media::wav::WavWriter::new(file, ENCODING, 2).unwrap();
        writer.write_samples(&[100; 8000]).unwrap();
        drop(writer);

        complete_interrupted(spool.path());
        let ready: Recording =
            serde_json::from_slice(&std::fs::read(index_path(spool.path(), &index.id)).unwrap())
                .unwrap();
        assert_eq!(ready.end_ms, 1_500, "ends where the audio does");
        let wav = std::fs::read(wav_path(spool.path(), &index.id)).unwrap();
        assert_eq!(&wav[40..44], &16_000u32.to_le_bytes());
        assert!(!part_path(spool.path(), &index.id).exists());
        assert!(!part_index_path(spool.path(), &index.id).exists());
    }
}
