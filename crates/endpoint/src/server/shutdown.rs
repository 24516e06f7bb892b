//! Counting open connections, and shutting down: stop accepting, ask every connection
//! to close after the registration it is processing, and after the grace abandon the
//! registrations still waiting for the store.
//!
//! Every connection task holds a permit until it ends, so the permits double as the
//! count of open connections: shutdown waits until it has them all back (no
//! per-connection bookkeeping, no wakeup of the accept loop when one ends).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{info, warn};

/// The permits of open connections: `max` for connections served, `refusal_slots` more
/// for connections taken in only to be refused at CONNECT ("server unavailable").
pub(super) struct Connections {
    permits: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    max: u32,
    refusal_slots: u32,
}

impl Connections {
    pub(super) fn new(max_connections: usize, refusal_slots: u32) -> Self {
        let max = u32::try_from(max_connections).unwrap_or(u32::MAX >> 3);
        Self {
            permits: Arc::new(Semaphore::new(max as usize)),
            refusals: Arc::new(Semaphore::new(refusal_slots as usize)),
            max,
            refusal_slots,
        }
    }

    /// A permit for a new connection, and whether it is over capacity (to be refused at
    /// CONNECT); `None` when even the refusal slots are taken (close it at once).
    pub(super) fn admit(&self) -> Option<(OwnedSemaphorePermit, bool)> {
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some((p, false)),
            Err(_) => self
                .refusals
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|p| (p, true)),
        }
    }

    /// Connections still open: permits not yet given back.
    fn open(&self) -> usize {
        (self.max as usize - self.permits.available_permits())
            + (self.refusal_slots as usize - self.refusals.available_permits())
    }

    async fn all_closed(&self) {
        let _all = self.permits.acquire_many(self.max).await;
        let _all_refusals = self.refusals.acquire_many(self.refusal_slots).await;
    }

    /// Asks every connection to close (`stop`), waits up to `grace` for them, then
    /// abandons the registrations still in flight (`abort`) and waits one more second.
    pub(super) async fn drain(
        &self,
        stop: &watch::Sender<bool>,
        abort: &watch::Sender<bool>,
        grace: Duration,
    ) {
        info!(
            open = self.open(),
            "shutting down: no longer accepting; closing connections"
        );
        let _ = stop.send(true);
        if tokio::time::timeout(grace, self.all_closed())
            .await
            .is_err()
        {
            warn!(
                left = self.open(),
                "shutdown grace over: abandoning the registrations still in flight"
            );
            let _ = abort.send(true);
            if tokio::time::timeout(Duration::from_secs(1), self.all_closed())
                .await
                .is_err()
            {
                warn!(
                    "connections still open after the shutdown grace; leaving them to the runtime"
                );
            }
        }
    }
}
