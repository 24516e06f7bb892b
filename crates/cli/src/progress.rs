//! A progress bar on stderr for long operations, shown only when stderr is a terminal
//! (scripts and logs get no carriage-return noise).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A progress bar for `total` items.
pub(crate) struct Bar {
    label: String,
    total: AtomicU64,
    shown: bool,
    last: Mutex<Option<Instant>>,
    started: Instant,
}

impl Bar {
    /// A bar labelled `label`; silent unless stderr is a terminal.
    pub(crate) fn new(label: &str, total: u64) -> Self {
        Self {
            label: label.to_owned(),
            total: AtomicU64::new(total.max(1)),
            shown: std::io::stderr().is_terminal(),
            last: Mutex::new(None),
            started: Instant::now(),
        }
    }

    /// Sets the number of items, once it is known (a file read after the bar began).
    pub(crate) fn set_total(&self, total: u64) {
        self.total.store(total.max(1), Ordering::Relaxed);
    }

    /// Shows that `done` items are done (at most ten redraws a second).
    pub(crate) fn set(&self, done: u64) {
        if !self.shown {
            return;
        }
        let total = self.total.load(Ordering::Relaxed);
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) && done < total {
            return;
        }
        *last = Some(Instant::now());
        let done = done.min(total);
        let width = 30u64;
        let filled = usize::try_from(done * width / total).unwrap_or(0);
        let bar: String = "#".repeat(filled) + &" ".repeat(30 - filled.min(30));
        let pct = done * 100 / total;
        let _ = write!(
            std::io::stderr(),
            "\r{} [{bar}] {pct:>3}% {done}/{total} ({:.1} s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Completes the bar and ends its line.
    pub(crate) fn finish(&self) {
        if self.shown {
            *self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            self.set(self.total.load(Ordering::Relaxed));
            let _ = writeln!(std::io::stderr());
        }
    }
}
