//! The pools' low-water marks, watched: every 30 s (and at start) each product with a
//! mark is checked ([`dynreg_store::Operator::check_pools`], the rule in
//! [`dynreg_store::admin::below_low_water`]); one that fell below its mark gets a
//! `pool.low` audit line, once until it is refilled, and a warning in the log. The
//! outbox, when on, carries the audit line to the platform like any device event; with
//! no destination the log, the console's dashboard and the audit log still say it.
//! `dynreg serve` runs one watch whatever else it runs; several instances may watch one
//! store (the check fires each low pool once).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::Ops;
use crate::unix_now;

/// How often the marks are checked.
pub const EVERY: Duration = Duration::from_secs(30);

/// Checks the pools now and every `every` until `stop`.
pub async fn watch(ops: Ops, every: Duration, stop: CancellationToken) {
    loop {
        let ops2 = ops.clone();
        let now = unix_now();
        match tokio::task::spawn_blocking(move || ops2.check_pools(now)).await {
            Ok(Ok(fired)) => {
                for pid in fired {
                    tracing::warn!(
                        pid,
                        "pool running low: fewer free triplets than its low-water mark"
                    );
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "the pools could not be checked"),
            Err(_) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
