//! Process plumbing shared by the long-running subcommands: logging, the shutdown tree, and
//! the bounded drain on Ctrl-C or SIGTERM (STYLE.md #8).

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;

/// How long in-flight work gets to finish after a shutdown signal.
pub const GRACE: Duration = Duration::from_secs(10);

pub fn init_logging(filter: &str, json: bool) {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // One JSON object per line, with the span fields (a request's `request_id`) on every event
    // inside it, for log pipelines; text for people.
    let _ = if json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

/// The root of a process's shutdown tree and the tracker of its background tasks.
pub struct Services {
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl Services {
    pub fn new() -> Self {
        Self {
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// Runs `task` in the tracker; an error ends the whole process's service tree, since a
    /// half-running node (say, a gateway without its control plane) would only mislead.
    pub fn spawn<F, E>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            if let Err(e) = task.await {
                tracing::error!(service = name, "stopped: {e}");
                shutdown.cancel();
            }
        });
    }

    /// Waits for Ctrl-C, SIGTERM or an internal failure, then drains within [`GRACE`].
    pub async fn run_until_signal(self) -> Result<()> {
        tokio::select! {
            _ = wait_for_signal() => eprintln!("shutting down (in-flight requests get {}s)", GRACE.as_secs()),
            _ = self.shutdown.cancelled() => {}
        }
        self.drain().await
    }

    pub async fn drain(self) -> Result<()> {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            eprintln!(
                "some tasks did not stop within {}s; exiting anyway",
                GRACE.as_secs()
            );
        }
        Ok(())
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
