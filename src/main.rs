//! The `tierd` binary: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use tierd::bench::socket::{self as bench, BenchOptions};
use tierd::server::client::{self, LimitArgs, MoveArgs, Output, QueueAction};
use tierd::server::model_cli::ModelCommand;
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
    /// there instead of on stdio; with `mcp`, forward to that server instead
    /// of embedding an engine.
    #[arg(long, global = true, value_name = "PATH", num_args = 0..=1)]
    socket: Option<Option<PathBuf>>,

    /// Print the server's raw JSON answer (one line; full precision)
    /// instead of tables.
    #[arg(long, global = true)]
    json: bool,

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
    /// Serve MCP (Model Context Protocol) on stdin/stdout for LLM tools: an
    /// engine of its own, or with --socket the running server's.
    Mcp(McpArgs),
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
        /// Cap the move's copy rate, in MB/s (0.1 to 1000000), so it does
        /// not starve the disk or bus serving other models.
        #[arg(long, value_name = "MB_S")]
        bandwidth: Option<f64>,
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
    Request {
        #[arg(value_name = "JSON")]
        line: String,
    },
    /// Check that the server answers.
    Health,
    /// What every model source ([[sources]]) finds: name, kind, files, size,
    /// registered or not. Changes nothing.
    Discover,
    /// Follow the server's events (moves, models, limits, pressure, engines) as they happen.
    Watch {
        /// Event groups: jobs, models, tiers, pressure, engines (comma separated) [default: all].
        #[arg(long, value_delimiter = ',', value_name = "GROUPS")]
        events: Vec<String>,
        /// Seconds between two progress events of a move [default: 0.5].
        #[arg(long, value_name = "S")]
        progress_interval: Option<f64>,
    },
    /// Measure round trips over the socket against a minimal echo server.
    Bench(BenchArgs),
    /// The move-job queue: status, history, cancel.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Register a model: a weights file or a directory of shards (the path
    /// is made absolute here, against this directory).
    Register {
        name: String,
        path: PathBuf,
        /// Move it to this tier once registered (if it has room).
        #[arg(long)]
        tier: Option<String>,
        /// Its size, for a simulated server (a real one measures the files).
        #[arg(long, value_name = "GB")]
        size_gb: Option<f64>,
    },
    /// Forget a model; the copies tierd made go, its origin stays.
    Unregister { name: String },
    /// Keep a model where it is: no policy, make-room or pressure demotes it.
    Pin { name: String },
    /// Let the policies move a pinned model again.
    Unpin { name: String },
    /// One model: tier, serve path, residency, usage.
    Info { name: String },
    /// Count one access of a model (for loaders that report their own).
    Access { name: String },
    /// Print a model's serve path, the path to its fastest copy:
    /// `llama-server -m "$(tierd path m)"`.
    Path { name: String },
    /// Replay workloads against placement policies (no server needed).
    Sim(tierd::sim::cli::SimArgs),
    /// Measure the real backend: promotion to RAM against `cat` and
    /// `vmtouch -t`, a verified directory move against `cp`.
    BenchReal(tierd::bench::real::BenchArgs),
    /// Print a shell completion script (e.g. `tierd completions bash >
    /// ~/.local/share/bash-completion/completions/tierd`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or with --dir write one page per
    /// subcommand there (`tierd.1`, `tierd-move.1`, ...).
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Measure the llama-server engine tier: a load through tierd against a
    /// direct one, and time to loaded with files pinned against cold.
    BenchEngine(tierd::bench::engine::EngineBenchArgs),
}

/// The one-model commands (`tierd register`, `info`, `path`, ...) and their
/// `--json`; `None` for the others.
fn model_command(c: &Command) -> Option<ModelCommand> {
    let named = |name: &String| name.clone();
    Some(match c {
        Command::Register { name, path, tier, size_gb } => ModelCommand::Register {
            name: name.clone(),
            path: path.clone(),
            tier: tier.clone(),
            size_gb: *size_gb,
        },
        Command::Unregister { name } => ModelCommand::Unregister { name: named(name) },
        Command::Pin { name } => ModelCommand::Pin { name: named(name) },
        Command::Unpin { name } => ModelCommand::Unpin { name: named(name) },
        Command::Info { name } => ModelCommand::Info { name: named(name) },
        Command::Access { name } => ModelCommand::Access { name: named(name) },
        Command::Path { name } => ModelCommand::Path { name: named(name) },
        _ => return None,
    })
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
        /// Only jobs created at or after this time: a span back from now
        /// (90s, 30m, 2h, 1d, "1h 30m"), a UTC time (2026-12-03T10:00:00Z,
        /// "2026-12-03 10:00") or unix seconds.
        #[arg(long, value_name = "WHEN", value_parser = tierd::human::parse_when)]
        since: Option<tierd::human::When>,
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
    /// Hardware backend [default: the config's `backend` key, else sim].
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
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
    /// Serve Prometheus metrics at http://ADDR/metrics (for example
    /// 127.0.0.1:9464); loopback addresses only, unless --metrics-listen-any.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Allow --metrics-listen on a non-loopback address (the metrics name
    /// every model).
    #[arg(long, requires = "metrics_listen")]
    metrics_listen_any: bool,
}

/// `tierd mcp`: the embedded engine's options, as `serve`'s.
#[derive(Debug, Args)]
struct McpArgs {
    /// Configuration file (TOML) of the embedded engine [default: the embedded seed configuration].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Engine seconds per wall second (50 makes moves 50x faster).
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    time_scale: f64,
    /// Probability that a simulated move fails (overrides sim.fault_probability).
    #[arg(long, value_name = "P")]
    fault_probability: Option<f64>,
    /// Hardware backend of the embedded engine [default: the config's
    /// `backend` key, else sim].
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Seconds running moves get to finish at shutdown before being rolled back.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    drain_timeout: f64,
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

/// `tierd man`: the main page on stdout, or every page into `dir`.
fn man(dir: Option<&std::path::Path>) -> Result<i32, String> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(format!("man: {} is not a directory", dir.display()));
            }
            clap_mangen::generate_to(cmd, dir).map_err(|e| format!("man: {}: {e}", dir.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out).map_err(|e| format!("man: {e}"))?;
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = socket_path(&cli.socket);
    if let Some(cmd) = model_command(&cli.command) {
        return exit(tierd::server::model_cli::run(&socket, &cmd, cli.json).map_err(|e| e.to_string()));
    }
    let output = if cli.json { Output::Json } else { Output::Human };
    // `--json` is the raw answer of a client command, or the JSON report of
    // `sim`; the commands with no answer to print say so rather than
    // ignore it.
    let mut cli = cli;
    if cli.json {
        match &mut cli.command {
            Command::Sim(args) => args.run.report = tierd::sim::cli::ReportFormat::Json,
            Command::Serve(_)
            | Command::Bench(_)
            | Command::BenchReal(_)
            | Command::Mcp(_)
            | Command::Completions { .. }
            | Command::Man { .. } => {
                eprintln!(
                    "tierd: --json applies to the client commands (status, move, limits, ...) and sim; serve, mcp, bench, bench-real, completions and man have no JSON answer"
                );
                return ExitCode::from(2);
            }
            _ => {}
        }
    }
    let result: Result<i32, String> = match cli.command {
        Command::Serve(a) => {
            serve::init_logging();
            let mut opts = ServeOptions {
                config: a.config,
                time_scale: a.time_scale,
                // Under socket activation stdin is not a peer (systemd
                // gives /dev/null): serve the passed socket only.
                stdio: a.stdio || (cli.socket.is_none() && !tierd::server::systemd::activated()),
                socket: cli.socket.as_ref().map(|_| socket),
                max_connections: a.max_connections.map(|n| n as usize),
                fault_probability: a.fault_probability,
                backend: a.backend,
                drain_timeout: Duration::try_from_secs_f64(a.drain_timeout).unwrap_or(Duration::from_secs(10)),
                workers: a.workers,
                metrics_listen: a.metrics_listen,
                metrics_listen_any: a.metrics_listen_any,
                ..ServeOptions::default()
            };
            // `--socket` without a path: the default one, in its private directory.
            if let Some(None) = cli.socket {
                opts.socket_dir = client::default_socket_dir();
            }
            serve::run(opts).map(|()| 0).map_err(|e| e.to_string())
        }
        Command::Mcp(a) => {
            serve::init_logging_with_default("warn");
            let opts = tierd::mcp::McpOptions {
                serve: ServeOptions {
                    config: a.config,
                    time_scale: a.time_scale,
                    fault_probability: a.fault_probability,
                    backend: a.backend,
                    drain_timeout: Duration::try_from_secs_f64(a.drain_timeout).unwrap_or(Duration::from_secs(10)),
                    ..ServeOptions::default()
                },
                forward: cli.socket.as_ref().map(|_| socket),
            };
            tierd::mcp::run(opts).map(|()| 0).map_err(|e| e.to_string())
        }
        Command::Status => client::status(&socket, output).map_err(|e| e.to_string()),
        Command::Watch { events, progress_interval } => {
            let args = tierd::server::follow::WatchArgs {
                events,
                json: output == Output::Json,
                progress_interval_s: progress_interval,
            };
            tierd::server::follow::watch(&socket, &args).map_err(|e| e.to_string())
        }
        Command::Move {
            model,
            tier,
            wait,
            make_room,
            priority,
            bandwidth,
        } => {
            let args = MoveArgs {
                model,
                tier,
                wait,
                make_room,
                priority,
                bandwidth_mb_s: bandwidth,
                output,
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
                output,
            };
            client::limits(&socket, &args).map_err(|e| e.to_string())
        }
        Command::Optimize { dry_run } => client::optimize(&socket, dry_run, output).map_err(|e| e.to_string()),
        Command::Jobs => client::jobs(&socket, output).map_err(|e| e.to_string()),
        Command::Models { tier } => client::models(&socket, tier.as_deref(), output).map_err(|e| e.to_string()),
        Command::Request { line } => client::request(&socket, &line).map_err(|e| e.to_string()),
        Command::Health => client::health(&socket, output).map_err(|e| e.to_string()),
        Command::Discover => client::discover(&socket, output == Output::Json).map_err(|e| e.to_string()),
        Command::Queue(q) => {
            let action = match q {
                QueueCommand::Status => QueueAction::Status,
                QueueCommand::History { limit, status, since } => QueueAction::History { limit, status, since },
                QueueCommand::Cancel { job_id } => QueueAction::Cancel { job_id },
            };
            client::queue(&socket, &action, output).map_err(|e| e.to_string())
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tierd", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => man(dir.as_deref()),
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
        // Run above, by `model_command`.
        Command::Register { .. }
        | Command::Unregister { .. }
        | Command::Pin { .. }
        | Command::Unpin { .. }
        | Command::Info { .. }
        | Command::Access { .. }
        | Command::Path { .. } => Ok(0),
    };
    exit(result)
}

/// The process's exit code for a command's result (errors on stderr).
fn exit(result: Result<i32, String>) -> ExitCode {
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(message) => {
            eprintln!("tierd: {message}");
            ExitCode::FAILURE
        }
    }
}
