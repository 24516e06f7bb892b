//! The server's log output: formatted lines are appended to a buffer in memory and
//! written to stderr by a thread of their own, many lines per `write` call.
//!
//! `dynreg serve` logs one line per registration. Written directly, each line is a
//! `write` system call on the connection's worker thread (a profile put the cost at about
//! 14% of the server's CPU per registration), and a stalled stderr (a full pipe, a slow
//! terminal) would stall every connection. Here a worker only appends to the buffer; the
//! log thread writes it out every [`FLUSH_EVERY`], or at once when [`FLUSH_AT`] bytes are
//! waiting. If stderr stops taking lines, at most [`MAX_BUFFERED`] bytes are kept and the
//! rest are counted and reported as dropped, rather than blocking the server.
//!
//! What is lost on a crash is at most the last [`FLUSH_EVERY`] of lines: a panic flushes
//! the buffer before the panic message is printed, and dropping the [`LogGuard`] (at the
//! end of `serve`, on every path out) writes what is left.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a line may wait in the buffer.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes that wake the log thread before its next round.
pub(crate) const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes beyond which new lines are dropped (and counted) instead of kept.
pub(crate) const MAX_BUFFERED: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    dropped: u64,
    closing: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Appends formatted log lines to the shared buffer; cheap to clone, one per event.
#[derive(Clone)]
pub(crate) struct BufferedLog {
    shared: Arc<Shared>,
}

impl Write for BufferedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        if state.buf.len() + bytes.len() > MAX_BUFFERED {
            // Count lines, not fragments: the formatter hands over one line per call.
            state.dropped += 1;
        } else {
            let before = state.buf.len();
            state.buf.extend_from_slice(bytes);
            if before < FLUSH_AT && state.buf.len() >= FLUSH_AT {
                self.shared.wake.notify_one();
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedLog {
    type Writer = BufferedLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Keeps the log thread running; dropping it writes out everything buffered and stops
/// the thread.
pub(crate) struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the log thread writing to `sink`; returns the writer to give the formatter and
/// the guard that flushes and stops it.
pub(crate) fn buffered<W: Write + Send + 'static>(
    sink: W,
) -> std::io::Result<(BufferedLog, LogGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
    });
    let for_thread = shared.clone();
    let thread = std::thread::Builder::new()
        .name("dynreg-log".into())
        .spawn(move || drain(&for_thread, sink))?;
    Ok((
        BufferedLog {
            shared: shared.clone(),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// Writes whatever is buffered now to `sink` (from any thread; used by the panic hook).
fn write_out(shared: &Shared, spare: &mut Vec<u8>, sink: &mut impl Write) -> bool {
    let dropped = {
        let mut state = shared.lock();
        std::mem::swap(&mut state.buf, spare);
        std::mem::take(&mut state.dropped)
    };
    if dropped > 0 {
        let _ = writeln!(
            spare,
            "dynreg: {dropped} log lines dropped (stderr was not taking them)"
        );
    }
    if !spare.is_empty() {
        let _ = sink.write_all(spare);
        let _ = sink.flush();
        spare.clear();
    }
    // Give back a buffer that has grown without bound (after a burst) to the allocator.
    if spare.capacity() > 4 * FLUSH_AT {
        *spare = Vec::new();
    }
    shared.lock().closing
}

fn drain(shared: &Shared, mut sink: impl Write) {
    let mut spare = Vec::new();
    loop {
        {
            let state = shared.lock();
            if !state.closing && state.buf.len() < FLUSH_AT {
                drop(
                    shared
                        .wake
                        .wait_timeout(state, FLUSH_EVERY)
                        .unwrap_or_else(PoisonError::into_inner),
                );
            }
        }
        if write_out(shared, &mut spare, &mut sink) {
            // Lines appended between the swap and the closing check.
            write_out(shared, &mut spare, &mut sink);
            return;
        }
    }
}

/// Installs a panic hook that writes out the buffered lines (to stderr) before the panic
/// message, so that the lines leading up to a panic are not lost with it.
pub(crate) fn flush_on_panic(log: &BufferedLog) {
    let shared = log.shared.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // try_lock: a panic while the buffer is locked (by this very thread, say) must
        // not deadlock here; those lines are then left to the log thread.
        let taken = match shared.state.try_lock() {
            Ok(mut state) => Some(std::mem::take(&mut state.buf)),
            Err(_) => None,
        };
        if let Some(lines) = taken {
            let mut stderr = std::io::stderr();
            let _ = stderr.write_all(&lines);
            let _ = stderr.flush();
        }
        previous(info);
    }));
}

/// Logs to stderr through the buffered log thread (this module): lines of
/// text, in colour only on a terminal, or one JSON object per line. The guard writes
/// out what is buffered when dropped.
pub(crate) fn init_tracing(json: bool) -> Option<LogGuard> {
    match buffered(std::io::stderr()) {
        Ok((writer, guard)) => {
            flush_on_panic(&writer);
            install_log(writer, json);
            Some(guard)
        }
        Err(e) => {
            eprintln!("dynreg: cannot start the log thread ({e}); logging unbuffered");
            install_log(std::io::stderr, json);
            None
        }
    }
}

fn install_log<W>(writer: W, json: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = if json {
        fmt.json().flatten_event(true).try_init()
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_and_all_by_the_time_the_guard_is_dropped() {
        let sink = Sink::default();
        let (log, guard) = buffered(sink.clone()).unwrap();
        let mut expected = String::new();
        for i in 0..20_000 {
            let line = format!("line {i}\n");
            log.clone().write_all(line.as_bytes()).unwrap();
            expected.push_str(&line);
        }
        drop(guard);
        assert_eq!(
            String::from_utf8(sink.0.lock().unwrap().clone()).unwrap(),
            expected
        );
    }

    #[test]
    fn a_line_is_written_without_waiting_for_the_guard() {
        let sink = Sink::default();
        let (mut log, _guard) = buffered(sink.clone()).unwrap();
        log.write_all(b"hello\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hello\n");
    }

    /// A sink that blocks until released, like a full pipe.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, Sink);

    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_drops_and_counts_lines_instead_of_blocking_the_writers() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Sink::default();
        let (log, guard) = buffered(Stuck(gate.clone(), sink.clone())).unwrap();
        // The first line is taken by the log thread, which then blocks in the sink.
        log.clone().write_all(b"first\n").unwrap();
        std::thread::sleep(FLUSH_EVERY * 3);
        let line = vec![b'x'; 1023];
        let lines = 2 * MAX_BUFFERED / 1024;
        for _ in 0..lines {
            let mut l = line.clone();
            l.push(b'\n');
            log.clone().write_all(&l).unwrap(); // never blocks
        }
        {
            let (lock, cv) = &*gate;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        drop(guard);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let kept = out.lines().filter(|l| l.starts_with('x')).count();
        assert!(kept > 0 && kept < lines, "kept {kept} of {lines}");
        let dropped = lines - kept;
        assert!(
            out.contains(&format!("dynreg: {dropped} log lines dropped")),
            "no drop count for {dropped} in the output's tail: {:?}",
            &out[out.len().saturating_sub(200)..]
        );
    }
}
