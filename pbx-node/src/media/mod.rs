//! Media the node anchors itself, for the features that need it: the RTP
//! port range, the built-in prompts, the media applications (echo test,
//! conference rooms), the music-on-hold stream, and the relay of calls
//! whose media is anchored for recording.

pub mod anchor;
pub mod conference;
pub mod echo;
pub mod moh;
pub mod prompts;

use std::future::Future;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::b2bua::local::RemoteMedia;

/// A running media application of one call. Dropping it stops the task
/// (and so releases its RTP ports).
pub struct MediaApp {
    updates: watch::Sender<RemoteMedia>,
    finished: oneshot::Receiver<()>,
    task: JoinHandle<()>,
}

impl MediaApp {
    fn spawn(
        updates: watch::Sender<RemoteMedia>,
        app: impl Future<Output = ()> + Send + 'static,
    ) -> MediaApp {
        let (done, finished) = oneshot::channel();
        let task = tokio::spawn(async move {
            app.await;
            let _ = done.send(());
        });
        MediaApp {
            updates,
            finished,
            task,
        }
    }

    /// The caller's media changed (re-INVITE).
    pub fn update(&self, media: RemoteMedia) {
        let _ = self.updates.send(media);
    }

    /// Resolves when the application ends by itself.
    pub async fn finished(&mut self) {
        let _ = (&mut self.finished).await;
    }
}

impl Drop for MediaApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
