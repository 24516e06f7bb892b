//! Helpers shared by the binary's tests: a clean `dynreg` command and reading a child's
//! stderr line by line.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// `dynreg` with none of the environment that would change what it does.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dynreg"));
    c.env_remove("DYNREG_DATA_DIR")
        .env_remove("DYNREG_MASTER_KEY")
        .env_remove("DYNREG_CONFIG")
        .env_remove("DYNREG_DATABASE_URL")
        .env_remove("DYNREG_MASTER_KEY_FILE")
        .env_remove("DYNREG_SECRET")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    c
}

/// The lines of a child's stderr (which must be piped), as they come.
pub fn stderr_lines(child: &mut Child) -> Receiver<String> {
    lines(child.stderr.take().expect("stderr is piped"))
}

/// The lines of a child's stdout (which must be piped), as they come.
pub fn stdout_lines(child: &mut Child) -> Receiver<String> {
    lines(child.stdout.take().expect("stdout is piped"))
}

fn lines(from: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Reads lines until one contains `needle` (panicking after 30 s); returns them all.
pub fn wait_for(rx: &Receiver<String>, needle: &str) -> Vec<String> {
    let start = Instant::now();
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains(needle)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no `{needle}` in {lines:?}"
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(l);
        }
    }
    lines
}

/// Sends SIGTERM to `child` (through the shell's builtin `kill`, which every POSIX
/// shell has, so the test needs no procps); true when it was sent.
pub fn sigterm(child: &Child) -> bool {
    Command::new("sh")
        .args(["-c", "kill -TERM \"$0\"", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// `dynreg --json --data-dir data ARGS` in `dir`, which must succeed: its JSON output
/// (null when it printed none).
pub fn json(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = bin()
        .args(["--json", "--data-dir", "data"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
