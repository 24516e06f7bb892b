//! Files the CLI writes for the operator (factory CSVs, exports, batch results).
//!
//! Each holds secrets or may, so each is:
//! - **claimed** before any work is done: the final name is created with `O_EXCL`, so
//!   of two commands started together with one `--out`, exactly one wins and the other
//!   fails naming the path before it commits anything;
//! - **private**: mode 0600 whatever the umask;
//! - **complete or absent**: written to `.NAME.partial` beside it, synced and renamed
//!   over the claim at the end; on an error, or on SIGINT/SIGTERM/SIGHUP, both files
//!   are removed.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, PoisonError};

use anyhow::{Context, bail};

/// Paths to remove if the process is interrupted.
static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// What to tell the operator if the process is interrupted now.
static NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Creates `path` (which must not exist) with mode 0600.
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        let f = opts.open(path)?;
        // The umask can only take bits away; set the mode exactly anyway.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(f)
    }
    #[cfg(not(unix))]
    opts.open(path)
}

/// A file being written: claimed, private, renamed into place by [`OutFile::commit`].
pub(crate) struct OutFile {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    committed: bool,
}

impl OutFile {
    /// Claims `path` (refused, naming it, if it exists) and opens its partial file.
    pub(crate) fn claim(path: &Path) -> anyhow::Result<Self> {
        install_signal_cleanup();
        let name = path
            .file_name()
            .with_context(|| format!("{} is not a file name", path.display()))?;
        match create_private(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => bail!(
                "{} exists: choose another file (it may hold secrets found nowhere else)",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
        remember(path);
        let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
        // The claim makes the name ours: a partial file left by a killed run of the
        // same name is stale.
        let _ = std::fs::remove_file(&tmp);
        let file = match create_private(&tmp) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                forget(path);
                return Err(e).with_context(|| format!("cannot create {}", tmp.display()));
            }
        };
        remember(&tmp);
        Ok(Self {
            path: path.to_owned(),
            tmp,
            file,
            committed: false,
        })
    }

    /// A second handle on the partial file, for a writer that owns its output.
    pub(crate) fn handle(&self) -> anyhow::Result<File> {
        self.file
            .try_clone()
            .with_context(|| format!("cannot write {}", self.tmp.display()))
    }

    /// The final path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the partial file and renames it over the claim.
    pub(crate) fn commit(mut self) -> anyhow::Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.path).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.tmp.display(),
                self.path.display()
            )
        })?;
        self.committed = true;
        forget(&self.tmp);
        forget(&self.path);
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
            let _ = std::fs::remove_file(&self.path);
            forget(&self.tmp);
            forget(&self.path);
        }
    }
}

fn remember(path: &Path) {
    CLEANUP
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(path.to_owned());
}

fn forget(path: &Path) {
    CLEANUP
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|p| p != path);
}

/// Says `note` if the process is interrupted from now on.
pub(crate) fn note_on_interrupt(note: String) {
    NOTES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(note);
}

/// Installs (once) a handler for SIGINT, SIGTERM and SIGHUP that removes the claimed
/// and partial files, says what was already committed, and exits with 128 + the
/// signal's number.
fn install_signal_cleanup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(unix)]
        {
            // On a thread of its own (the caller may be inside a runtime already);
            // this waits until the handlers are registered, so no signal is missed.
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            std::thread::spawn(move || {
                use tokio::signal::unix::{SignalKind, signal};
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let signo = runtime.block_on(async {
                    let streams = (|| {
                        Ok::<_, io::Error>((
                            signal(SignalKind::interrupt())?,
                            signal(SignalKind::terminate())?,
                            signal(SignalKind::hangup())?,
                        ))
                    })();
                    let (mut int, mut term, mut hup) = match streams {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return None;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    Some(tokio::select! {
                        _ = int.recv() => 2,
                        _ = term.recv() => 15,
                        _ = hup.recv() => 1,
                    })
                });
                let Some(signo) = signo else { return };
                let paths =
                    std::mem::take(&mut *CLEANUP.lock().unwrap_or_else(PoisonError::into_inner));
                for p in &paths {
                    let _ = std::fs::remove_file(p);
                }
                let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                if shown.is_empty() {
                    eprintln!("interrupted");
                } else {
                    eprintln!("interrupted: removed {}", shown.join(", "));
                }
                for n in NOTES.lock().unwrap_or_else(PoisonError::into_inner).iter() {
                    eprintln!("{n}");
                }
                std::process::exit(128 + signo);
            });
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!(
                    "warning: cannot watch for signals ({e}): an interrupted run may leave a partial file"
                ),
                Err(_) => eprintln!(
                    "warning: cannot watch for signals: an interrupted run may leave a partial file"
                ),
            }
        }
    });
}
