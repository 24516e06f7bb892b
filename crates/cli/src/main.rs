//! `dynreg`: the one binary. It parses arguments, loads configuration and calls the
//! library crates; it holds no logic of its own.

use clap::{Parser, Subcommand};

/// dynreg: dynamic registration of IoT devices over MQTT.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registration service (embedded MQTT endpoint + SQLite store).
    Serve,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            eprintln!(
                "dynreg {}: the registration endpoint (`dynreg serve`) is not built yet; \
                 it arrives with the MQTT endpoint. The protocol crate is ready: \
                 `cargo test --workspace` exercises it.",
                env!("CARGO_PKG_VERSION")
            );
            std::process::exit(2);
        }
    }
}
