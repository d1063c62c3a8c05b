//! The real backend's benchmark (promotion to RAM against `cat` and
//! `vmtouch -t`, verified dir-to-dir move against `cp`):
//! `cargo bench --bench real -- --size-mb 1024 --reps 3`.
//! The same function backs the CLI's `bench-real` subcommand.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "real-bench", about = "tierd real backend benchmark")]
struct Cli {
    #[command(flatten)]
    args: tierd::bench::real::BenchArgs,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let cli = Cli::parse();
    match tierd::bench::real::run(&cli.args) {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    }
}
