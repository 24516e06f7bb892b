//! What a Linux-class device does at boot, with the dynreg device SDK.
//!
//! Run it against a local `dynreg serve --demo` (which prints a pid and secret):
//!
//! ```sh
//! cargo run -p dynreg-client --example firmware -- 127.0.0.1 1883 <pid> <secret> /tmp/flash.json
//! ```
//!
//! The "flash" file stands for the device's persistent storage: the unique is
//! generated once and kept before the first attempt (so a retry after a power loss
//! asks for the same registration), and the triplet is kept once received (so the
//! device never registers again).

#![allow(missing_docs)]

use std::path::Path;
use std::time::Duration;

use dynreg_client::{Registration, RetryPolicy};

/// The device's persistent storage: `unique` first, the triplet once registered.
#[derive(Default)]
struct Flash {
    unique: String,
    uuid: String,
    secret: String,
    mac: String,
}

impl Flash {
    fn load(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut f = Self::default();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                match k {
                    "unique" => f.unique = v.into(),
                    "uuid" => f.uuid = v.into(),
                    "secret" => f.secret = v.into(),
                    "mac" => f.mac = v.into(),
                    _ => {}
                }
            }
        }
        f
    }

    /// Written to a temporary file and renamed, so a power cut never leaves half a file.
    fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let text = format!(
            "unique={}\nuuid={}\nsecret={}\nmac={}\n",
            self.unique, self.uuid, self.secret, self.mac
        );
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, host, port, pid, secret, flash_path] = args.as_slice() else {
        eprintln!("usage: firmware HOST PORT PID PRODUCT_SECRET FLASH_FILE");
        std::process::exit(2);
    };
    let flash_path = Path::new(flash_path);
    let mut flash = Flash::load(flash_path);
    if !flash.uuid.is_empty() {
        println!("already registered as {} (from flash)", flash.uuid);
        return;
    }
    if flash.unique.is_empty() {
        // Generate the unique once and persist it before talking to anyone.
        flash.unique = dynreg_client::random_uuid();
        flash.save(flash_path).expect("flash write");
    }
    let registration = Registration::new(host, pid, secret)
        .port(port.parse().expect("port"))
        .unique(&flash.unique)
        .timeout(Duration::from_secs(10))
        // A device at first boot may wait: many attempts, backing off to 5 minutes.
        .retry(RetryPolicy {
            max_attempts: 20,
            initial: Duration::from_secs(2),
            max: Duration::from_secs(300),
        });
    match registration.register_blocking() {
        Ok(t) => {
            flash.uuid = t.uuid;
            flash.secret = t.secret;
            flash.mac = t.mac;
            flash.save(flash_path).expect("flash write");
            println!("registered as {} under {}", flash.uuid, t.pid);
        }
        Err(e) => {
            // Not retryable (e.g. wrong product secret) or out of attempts: report
            // and let the next boot try again with the same unique.
            eprintln!("registration failed: {e}");
            std::process::exit(1);
        }
    }
}
