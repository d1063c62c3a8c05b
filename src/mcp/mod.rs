//! `tierd mcp`: an MCP server on stdio (the official Rust SDK, `rmcp`), so
//! LLM tools can drive tierd with the protocol they speak.
//!
//! Each tool ([`tools::TOOLS`]) is one tierd request: its arguments are the
//! request's body, its result the request's JSON answer, as text and as
//! `structuredContent`; an error answer is an `isError` result with the
//! error's message, so the model reads why. The requests are answered by
//! an engine of its own ([`Backend::Embedded`], built as `tierd serve`
//! builds it, ticked in the background) or, with `--socket PATH`, by a
//! running server ([`Backend::Socket`], one connection per call).
//!
//! Lifecycles: rmcp answers both the handshake revisions (`initialize`,
//! then `notifications/initialized`; 2024-11-05 to 2025-11-25) and the
//! current stateless revision (2026-07-28: `server/discover`, then
//! requests carrying their protocol version and client info in `_meta`).
//! Unknown methods answer JSON-RPC -32601.

pub mod tools;

use std::path::PathBuf;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, JsonObject, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::requests::MAX_LINE_BYTES;
use crate::server::serve::{self, ServeError, ServeOptions};
use crate::server::shared::{Answer, SharedEngine};

/// Longest answer line read from a server (a `tier_status` of many models
/// is large, but bounded; a server never sends more than this in one line).
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// What answers the tools' requests.
#[derive(Clone)]
pub enum Backend {
    /// An engine of this process, served to MCP only.
    Embedded(SharedEngine),
    /// A running `tierd serve --socket PATH`.
    Socket(PathBuf),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Embedded(_) => f.write_str("Embedded"),
            Backend::Socket(p) => write!(f, "Socket({})", p.display()),
        }
    }
}

impl Backend {
    /// Answers one request line (no newline) with the answer's JSON; `Err`
    /// when the answer could not be had at all (the server unreachable).
    pub async fn call(&self, line: &str) -> Result<Value, String> {
        let bytes = match self {
            Backend::Embedded(shared) => {
                let mut out = Vec::with_capacity(1024);
                let mut answer = shared.answer_line(line.as_bytes(), &mut out);
                if let Answer::Prepare(envelope) = answer {
                    answer = shared.answer_prepared(*envelope, &mut out).await;
                }
                if let Answer::Wait { job_id, id } = answer {
                    shared.wait_for_job(&job_id, &id, &mut out).await;
                }
                out
            }
            Backend::Socket(path) => forward(path, line).await?,
        };
        serde_json::from_slice(&bytes).map_err(|e| format!("tierd answered a line that is not JSON: {e}"))
    }
}

/// Sends `line` to the server at `path` on a connection of its own (a
/// `wait` then holds only that one) and reads its answer line.
async fn forward(path: &std::path::Path, line: &str) -> Result<Vec<u8>, String> {
    let unreachable = |e: std::io::Error| {
        format!(
            "cannot reach tierd at {}: {e}; start it with `tierd serve --socket {}`, or run `tierd mcp` without --socket to embed an engine",
            path.display(),
            path.display()
        )
    };
    let mut stream = tokio::net::UnixStream::connect(path).await.map_err(unreachable)?;
    let mut request = Vec::with_capacity(line.len() + 1);
    request.extend_from_slice(line.as_bytes());
    request.push(b'\n');
    stream.write_all(&request).await.map_err(unreachable)?;
    let mut reader = BufReader::new(stream).take(MAX_ANSWER_BYTES);
    let mut answer = Vec::with_capacity(1024);
    reader.read_until(b'\n', &mut answer).await.map_err(unreachable)?;
    if answer.last() != Some(&b'\n') {
        return Err(format!(
            "tierd at {} closed the connection without a complete answer",
            path.display()
        ));
    }
    answer.pop();
    Ok(answer)
}

/// The MCP side: tools over a [`Backend`].
#[derive(Debug, Clone)]
pub struct TierdMcp {
    backend: Backend,
}

impl TierdMcp {
    pub fn new(backend: Backend) -> TierdMcp {
        TierdMcp { backend }
    }

    /// Carries out tool `name` with `arguments`.
    pub async fn call(&self, name: &str, arguments: Option<JsonObject>) -> Result<CallToolResult, McpError> {
        let Some(tool) = tools::find(name) else {
            let known: Vec<&str> = tools::TOOLS.iter().map(|t| t.name).collect();
            return Err(McpError::invalid_params(
                format!("unknown tool {name:?}; known tools: {}", known.join(", ")),
                None,
            ));
        };
        let line = tools::request_line(tool.key, arguments.unwrap_or_default());
        if line.len() > MAX_LINE_BYTES {
            return Ok(error_result(format!(
                "{name}: the arguments are {} bytes, over tierd's {MAX_LINE_BYTES} byte request limit",
                line.len()
            )));
        }
        Ok(match self.backend.call(&line).await {
            Ok(answer) => result_of(name, answer),
            Err(message) => error_result(message),
        })
    }
}

/// Where a waited-for move reports its progress.
struct Progress {
    peer: rmcp::Peer<RoleServer>,
    token: ProgressToken,
    /// The client cancelled its call: stop reporting (the move goes on).
    cancelled: CancellationToken,
}

/// How often a waited-for move with a progress token is looked at.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

impl TierdMcp {
    /// `move_tier` with `wait`, reporting progress: the move is started
    /// without `wait`, then its job is looked at every [`PROGRESS_EVERY`]
    /// and each change is sent as `notifications/progress` (0 to 1) until
    /// the job ends; the answer is the ended job, as a plain `wait` answers.
    async fn move_with_progress(&self, mut args: JsonObject, progress: Progress) -> CallToolResult {
        args.remove("wait");
        let started = match self.backend.call(&tools::request_line("move_tier", args)).await {
            Ok(answer) => answer,
            Err(message) => return error_result(message),
        };
        let Some(job_id) = started.get("job_id").and_then(Value::as_str).map(String::from) else {
            return result_of("move_tier", started);
        };
        let status_line = tools::request_line("tier_job_status", job_object(&job_id));
        let mut last: Option<(f64, String)> = None;
        loop {
            let job = match self.backend.call(&status_line).await {
                Ok(job) => job,
                Err(message) => return error_result(message),
            };
            let state = job.get("status").and_then(Value::as_str).unwrap_or("");
            if !matches!(state, "queued" | "running") {
                return result_of("move_tier", job);
            }
            let fraction = job.get("progress").and_then(Value::as_f64).unwrap_or(0.0).clamp(0.0, 1.0);
            let message = match state {
                "queued" => format!("{job_id} queued"),
                _ => format!("{job_id} running, {:.0}%", fraction * 100.0),
            };
            if last.as_ref() != Some(&(fraction, message.clone())) && !progress.cancelled.is_cancelled() {
                let note = ProgressNotificationParam::new(progress.token.clone(), fraction)
                    .with_total(1.0)
                    .with_message(message.clone());
                if let Err(e) = progress.peer.notify_progress(note).await {
                    debug!("cannot send progress: {e}");
                }
                last = Some((fraction, message));
            }
            tokio::select! {
                _ = tokio::time::sleep(PROGRESS_EVERY) => {}
                _ = progress.cancelled.cancelled() => {
                    // The caller gave up waiting; the move goes on.
                    return error_result(format!(
                        "stopped waiting for {job_id}: the move continues; cancel it with cancel_job {{\"job_id\": \"{job_id}\"}}"
                    ));
                }
            }
        }
    }
}

fn job_object(job_id: &str) -> JsonObject {
    let mut m = JsonObject::new();
    m.insert("job_id".into(), Value::String(job_id.to_string()));
    m
}

/// An `isError` result carrying `message` only.
fn error_result(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// A tierd answer as a tool result. An error answer is `isError` with its
/// message first (what the model reads), the whole answer in
/// `structuredContent`; so is a waited-for move that ended failed or
/// cancelled, whose job view says why.
pub fn result_of(tool: &str, answer: Value) -> CallToolResult {
    let status = answer.get("status").and_then(Value::as_str).unwrap_or("");
    let failure = match status {
        "error" => {
            let e = answer.get("error");
            let message = e.and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or("unknown error");
            let code = e.and_then(|e| e.get("code")).and_then(Value::as_str).unwrap_or("ERROR");
            Some(format!("{tool} failed ({code}): {message}"))
        }
        "failed" | "cancelled" if answer.get("job_id").is_some() => {
            let job = answer.get("job_id").and_then(Value::as_str).unwrap_or("?");
            let why = answer.get("error").and_then(Value::as_str).unwrap_or("no reason given");
            Some(format!("job {job} {status}: {why}"))
        }
        _ => None,
    };
    let text = answer.to_string();
    match failure {
        Some(message) => {
            let mut r = CallToolResult::error(vec![ContentBlock::text(message), ContentBlock::text(text)]);
            r.structured_content = Some(answer);
            r
        }
        None => {
            let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
            r.structured_content = Some(answer);
            r
        }
    }
}

const INSTRUCTIONS: &str = "tierd decides where ML model weights live across memory tiers (GPU, RAM, swap, \
storage). Start with tier_status to learn the tiers and where each model is. move_tier promotes a model \
(e.g. to ram) before it is needed; with wait=true it answers when the move has ended. Errors say why and \
what to change (e.g. make_room=true, or a lower limit).";

impl ServerHandler for TierdMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("tierd", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = tools::TOOLS
            .iter()
            .map(tools::ToolDef::tool)
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| McpError::internal_error(e, None))?;
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(&self, request: CallToolRequestParams, context: RequestContext<RoleServer>) -> Result<CallToolResponse, McpError> {
        // A waited-for move whose caller asked for progress: reported as
        // the job runs, the answer the same as a plain wait's.
        if let (Some(token), Some(args)) = (context.meta.get_progress_token(), &request.arguments)
            && request.name == "move_tier"
            && args.get("wait") == Some(&Value::Bool(true))
        {
            let progress = Progress {
                peer: context.peer.clone(),
                token,
                cancelled: context.ct.clone(),
            };
            return Ok(self.move_with_progress(args.clone(), progress).await.into());
        }
        self.call(&request.name, request.arguments).await.map(CallToolResponse::from)
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        tools::find(name).and_then(|t| t.tool().ok())
    }
}

/// Options of `tierd mcp`.
#[derive(Debug, Clone)]
pub struct McpOptions {
    /// How the embedded engine is built (config, backend, time scale…);
    /// its socket and stdio settings are not used.
    pub serve: ServeOptions,
    /// Forward to the server on this socket instead of embedding one.
    pub forward: Option<PathBuf>,
}

/// Serves MCP on stdin/stdout until the client closes stdin or a signal
/// comes; an embedded engine then drains its moves as `serve` does.
pub async fn serve_mcp(opts: McpOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<(), ServeError> {
    check_options(&opts)?;
    let token = CancellationToken::new();
    let (backend, ticker) = match &opts.forward {
        Some(path) => (Backend::Socket(path.clone()), None),
        None => {
            let shared = serve::build_shared(&opts.serve)?;
            shared.save_state();
            let ticker = tokio::spawn(serve::run_ticker(shared.clone(), token.clone()));
            (Backend::Embedded(shared), Some(ticker))
        }
    };
    info!(backend = ?backend, "tierd mcp serving on stdio");
    let service = TierdMcp::new(backend.clone());
    let ct = token.child_token();
    let run = async {
        match service.serve_with_ct(rmcp::transport::stdio(), ct).await {
            Ok(running) => {
                if let Err(e) = running.waiting().await {
                    warn!("mcp service ended abnormally: {e}");
                }
            }
            Err(e) => warn!("mcp: no session started: {e}"),
        }
    };
    tokio::select! {
        _ = run => info!("mcp client closed the session: shutting down"),
        _ = shutdown => {}
    }
    token.cancel();
    if let (Backend::Embedded(shared), Some(ticker)) = (&backend, ticker) {
        serve::drain_jobs(shared, opts.serve.drain_timeout).await;
        let _ = ticker.await;
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || s.save_state()).await;
    }
    info!("tierd mcp stopped");
    Ok(())
}

/// Refuses engine options next to `--socket`: the running server's engine
/// answers then, so they would be silently ignored.
fn check_options(opts: &McpOptions) -> Result<(), ServeError> {
    let Some(path) = &opts.forward else { return Ok(()) };
    let d = ServeOptions::default();
    let s = &opts.serve;
    let mut given = Vec::new();
    if s.config.is_some() {
        given.push("--config");
    }
    if s.backend != d.backend {
        given.push("--backend");
    }
    if s.time_scale != d.time_scale {
        given.push("--time-scale");
    }
    if s.fault_probability.is_some() {
        given.push("--fault-probability");
    }
    if s.drain_timeout != d.drain_timeout {
        given.push("--drain-timeout");
    }
    if given.is_empty() {
        return Ok(());
    }
    Err(ServeError::Option(format!(
        "{} configure the embedded engine, but --socket {} forwards to a running server, whose engine answers: drop them, or drop --socket",
        given.join(", "),
        path.display()
    )))
}

/// The blocking entry point of `tierd mcp`.
pub fn run(opts: McpOptions) -> Result<(), ServeError> {
    let runtime = serve::runtime()?;
    let result = runtime.block_on(serve_mcp(opts, serve::shutdown_signal()));
    // stdin is read on a blocking thread that may sit in read(2) forever.
    runtime.shutdown_background();
    result
}
