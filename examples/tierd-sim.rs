//! `tierd sim` as a stand-alone example, until `src/main.rs` carries the
//! subcommand: `cargo run --release --example tierd-sim -- --catalog C --trace T`.

use clap::Parser;
use tierd::sim::cli::{SimArgs, run};

#[derive(Parser)]
#[command(name = "tierd-sim", about = "Replay model-access traces against tierd's placement policies")]
struct Cli {
    #[command(flatten)]
    sim: SimArgs,
}

fn main() {
    if let Err(e) = run(Cli::parse().sim) {
        eprintln!("tierd sim: {e}");
        std::process::exit(1);
    }
}
