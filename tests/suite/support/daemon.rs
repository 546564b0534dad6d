//! One harness for the daemon under test: `daemon::run_with` on a task of the test's runtime,
//! with the executor and options the test chooses, and the signals the test sends.

use isolated_runner::config::Config;
use isolated_runner::daemon::{self, DaemonOptions, ShutdownSignal};
use isolated_runner::job::JobExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// The running daemon of a test.
pub struct Daemon {
    signals: UnboundedSender<ShutdownSignal>,
    handle: tokio::task::JoinHandle<Result<(), daemon::Error>>,
}

impl Drop for Daemon {
    /// A test that panics must not leave a daemon polling or creating containers after the
    /// test's sweep (declare the daemon after what it uses, so it is dropped first).
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts the daemon with `executor` and `options`.
pub fn start(config: Config, executor: Arc<dyn JobExecutor>, options: DaemonOptions) -> Daemon {
    isolated_runner::install_crypto_provider();
    let (tx, source) = daemon::signal_channel();
    let handle = tokio::spawn(daemon::run_with(config, executor, source, options));
    Daemon {
        signals: tx,
        handle,
    }
}

impl Daemon {
    /// Sends `signal` as SIGTERM/SIGQUIT would.
    pub fn signal(&self, signal: ShutdownSignal) {
        self.signals
            .send(signal)
            .expect("the daemon still listens for signals");
    }

    /// Waits for the daemon to return, at most `within`; it must return `Ok`.
    pub async fn finished(mut self, within: Duration) {
        tokio::time::timeout(within, &mut self.handle)
            .await
            .expect("daemon stops")
            .expect("daemon task did not panic")
            .expect("daemon ran without error");
    }

    /// SIGTERM-equivalent, then [`Daemon::finished`].
    pub async fn stop(self, within: Duration) {
        let _ = self.signals.send(ShutdownSignal::Stop);
        self.finished(within).await
    }

    /// SIGQUIT-equivalent: stop polling, let jobs end; then [`Daemon::finished`].
    pub async fn drain(self, within: Duration) {
        let _ = self.signals.send(ShutdownSignal::Drain);
        self.finished(within).await
    }
}
