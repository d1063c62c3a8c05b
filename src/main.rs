//! The `tierd` binary: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use tierd::bench::socket::{self as bench, BenchOptions};
use tierd::server::client::{self, LimitArgs, MoveArgs, QueueAction};
use tierd::server::serve::{self, BackendKind, ServeOptions};

/// mimalloc: the engine allocates a little per move job and per request;
/// glibc's allocator was a fifth of the simulator's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tierd: decides, and carries out, where ML model weights live across
/// memory tiers (RAM, swap, storage).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Unix socket of the server [default: $TIERD_SOCKET, else
    /// $XDG_RUNTIME_DIR/tierd/tierd.sock, else /tmp/tierd-$UID/tierd.sock;
    /// `serve` creates that directory with mode 0700]. With `serve`, listen
    /// there instead of on stdio.
    #[arg(long, global = true, value_name = "PATH", num_args = 0..=1)]
    socket: Option<Option<PathBuf>>,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands. Each arm of `main` hands its arguments to one library
/// function; a new subcommand (e.g. `sim`, calling `tierd::sim`) is one
/// variant here and one arm there.
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve requests: on stdin/stdout, or on the Unix socket given by --socket.
    Serve(ServeArgs),
    /// Show the tiers and the models in each.
    Status,
    /// Move a model to another tier.
    Move {
        model: String,
        tier: String,
        /// Show a progress bar until the move ends; fail unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// Demote the least-used models of the target tier if it lacks room.
        #[arg(long)]
        make_room: bool,
        /// Priority: low, normal, high or critical.
        #[arg(long)]
        priority: Option<String>,
    },
    /// Show or change tier limits (GB).
    Limits {
        #[arg(long, value_name = "GB")]
        ram_max: Option<f64>,
        #[arg(long, value_name = "GB")]
        swap_max: Option<f64>,
        #[arg(long, value_name = "GB")]
        ram_reserved: Option<f64>,
        /// Any limit, e.g. `--set swap_max_gb=12` (repeatable; the last tier is unbounded).
        #[arg(long, value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Let the policy place models by usage.
    Optimize {
        /// Show the plan without starting it.
        #[arg(long)]
        dry_run: bool,
    },
    /// List move jobs.
    Jobs,
    /// List models.
    Models {
        /// Only the models of this tier.
        #[arg(long)]
        tier: Option<String>,
    },
    /// Send one raw JSON request line and print the response line.
    Request { json: String },
    /// Check that the server answers.
    Health,
    /// Measure round trips over the socket against a minimal echo server.
    Bench(BenchArgs),
    /// The move-job queue: status, history, cancel.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Replay workloads against placement policies (no server needed).
    Sim(tierd::sim::cli::SimArgs),
    /// Measure the real backend: promotion to RAM against `cat` and
    /// `vmtouch -t`, a verified directory move against `cp`.
    BenchReal(tierd::bench::real::BenchArgs),
    /// Measure the llama-server engine tier: a load through tierd against a
    /// direct one, and time to loaded with files pinned against cold.
    BenchEngine(tierd::bench::engine::EngineBenchArgs),
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Counts, slots, and the queued and running jobs in start order.
    Status,
    /// Jobs newest first.
    History {
        /// At most this many jobs.
        #[arg(long)]
        limit: Option<usize>,
        /// Only jobs in this state: queued, running, success, failed, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Only jobs created at or after this unix time.
        #[arg(long)]
        since: Option<f64>,
    },
    /// Cancel a queued or running job (a running move rolls back).
    Cancel { job_id: String },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Configuration file (TOML) [default: the embedded seed configuration].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Engine seconds per wall second (50 makes moves 50x faster).
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    time_scale: f64,
    /// Serve stdin/stdout too when --socket is given.
    #[arg(long)]
    stdio: bool,
    /// Probability that a simulated move fails (overrides sim.fault_probability).
    #[arg(long, value_name = "P")]
    fault_probability: Option<f64>,
    /// Hardware backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Sim)]
    backend: BackendKind,
    /// Seconds running moves get to finish at shutdown before being rolled back.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    drain_timeout: f64,
    /// Connection loops: threads that serve socket connections, each with
    /// its own event loop (0 = everything on one thread) [default: one per
    /// CPU core, at most 4].
    #[arg(long, value_name = "N", default_value_t = serve::default_workers(), hide_default_value = true)]
    workers: usize,
    /// Socket connections served at once; at the cap the one idle longest
    /// is closed to make room [default: the config's max_connections, 1024].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Measured seconds per server and client count.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Client counts, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 8])]
    clients: Vec<usize>,
    /// tierd's connection loops (0 = connections on the main thread), as `serve --workers`.
    #[arg(long, value_name = "N", default_value_t = serve::default_workers())]
    workers: usize,
    /// Alternating echo/tierd rounds the measured seconds are split into.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// `--socket PATH` → PATH; `--socket` alone or absent → the default path.
fn socket_path(given: &Option<Option<PathBuf>>) -> PathBuf {
    match given {
        Some(Some(p)) => p.clone(),
        _ => client::default_socket_path(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = socket_path(&cli.socket);
    let result: Result<i32, String> = match cli.command {
        Command::Serve(a) => {
            serve::init_logging();
            let mut opts = ServeOptions {
                config: a.config,
                time_scale: a.time_scale,
                stdio: a.stdio || cli.socket.is_none(),
                socket: cli.socket.as_ref().map(|_| socket),
                max_connections: a.max_connections.map(|n| n as usize),
                fault_probability: a.fault_probability,
                backend: a.backend,
                drain_timeout: Duration::try_from_secs_f64(a.drain_timeout).unwrap_or(Duration::from_secs(10)),
                workers: a.workers,
                ..ServeOptions::default()
            };
            // `--socket` without a path: the default one, in its private directory.
            if let Some(None) = cli.socket {
                opts.socket_dir = client::default_socket_dir();
            }
            serve::run(opts).map(|()| 0).map_err(|e| e.to_string())
        }
        Command::Status => client::status(&socket).map_err(|e| e.to_string()),
        Command::Move {
            model,
            tier,
            wait,
            make_room,
            priority,
        } => {
            let args = MoveArgs {
                model,
                tier,
                wait,
                make_room,
                priority,
            };
            client::move_model(&socket, &args).map_err(|e| e.to_string())
        }
        Command::Limits {
            ram_max,
            swap_max,
            ram_reserved,
            set,
        } => {
            let args = LimitArgs {
                ram_max,
                swap_max,
                ram_reserved,
                set,
            };
            client::limits(&socket, &args).map_err(|e| e.to_string())
        }
        Command::Optimize { dry_run } => client::optimize(&socket, dry_run).map_err(|e| e.to_string()),
        Command::Jobs => client::jobs(&socket).map_err(|e| e.to_string()),
        Command::Models { tier } => client::models(&socket, tier.as_deref()).map_err(|e| e.to_string()),
        Command::Request { json } => client::request(&socket, &json).map_err(|e| e.to_string()),
        Command::Health => client::health(&socket).map_err(|e| e.to_string()),
        Command::Queue(q) => {
            let action = match q {
                QueueCommand::Status => QueueAction::Status,
                QueueCommand::History { limit, status, since } => QueueAction::History { limit, status, since },
                QueueCommand::Cancel { job_id } => QueueAction::Cancel { job_id },
            };
            client::queue(&socket, &action).map_err(|e| e.to_string())
        }
        Command::BenchEngine(args) => match tierd::bench::engine::run(&args) {
            Ok(report) => {
                print!("{report}");
                Ok(0)
            }
            Err(e) => Err(format!("bench-engine: {e}")),
        },
        Command::BenchReal(args) => match tierd::bench::real::run(&args) {
            Ok(report) => {
                print!("{report}");
                Ok(0)
            }
            Err(e) => Err(format!("bench-real: {e}")),
        },
        Command::Sim(args) => tierd::sim::cli::run(args).map(|()| 0).map_err(|e| format!("sim: {e}")),
        Command::Bench(a) => {
            serve::init_logging_with_default("warn");
            let opts = BenchOptions {
                seconds: a.seconds,
                clients: a.clients,
                workers: a.workers,
                rounds: a.rounds,
                ..BenchOptions::default()
            };
            bench::run(&opts).map(|_| 0).map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(message) => {
            eprintln!("tierd: {message}");
            ExitCode::FAILURE
        }
    }
}
