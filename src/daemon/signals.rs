//! Where shutdown requests come from: real Unix signals in production, a channel in tests.

use tokio::sync::mpsc;

/// A shutdown request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGQUIT: stop asking for jobs, let running jobs finish.
    Drain,
    /// SIGTERM or SIGINT: cancel running jobs gracefully and exit within `shutdown_timeout`; a
    /// second one aborts the jobs.
    Stop,
}

/// A source of shutdown requests.
#[async_trait::async_trait]
pub trait SignalSource: Send + 'static {
    /// The next request; `None` when the source can give no more (the daemon then runs on).
    async fn recv(&mut self) -> Option<ShutdownSignal>;
}

/// SIGQUIT, SIGTERM and SIGINT of the process.
pub struct OsSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl OsSignals {
    /// Installs the handlers. Must run inside a tokio runtime.
    pub fn new() -> std::io::Result<OsSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(OsSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }
}

#[async_trait::async_trait]
impl SignalSource for OsSignals {
    async fn recv(&mut self) -> Option<ShutdownSignal> {
        tokio::select! {
            Some(()) = self.term.recv() => Some(ShutdownSignal::Stop),
            Some(()) = self.int.recv() => Some(ShutdownSignal::Stop),
            Some(()) = self.quit.recv() => Some(ShutdownSignal::Drain),
            else => None,
        }
    }
}

/// Signals sent through a channel; see [`signal_channel`].
pub struct ChannelSignals(mpsc::UnboundedReceiver<ShutdownSignal>);

/// A sender to drive the daemon's shutdown from tests, and the matching source.
pub fn signal_channel() -> (mpsc::UnboundedSender<ShutdownSignal>, ChannelSignals) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ChannelSignals(rx))
}

#[async_trait::async_trait]
impl SignalSource for ChannelSignals {
    async fn recv(&mut self) -> Option<ShutdownSignal> {
        self.0.recv().await
    }
}
