//! The state every connection shares: the engine behind a mutex, and the
//! clock that turns wall time into engine time.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::Engine;

use super::dispatch::{self, Outcome, StatusCache};
use super::protocol::{self, Request};

/// Engine time: `start_unix + elapsed_wall * scale`, in unix seconds.
///
/// With `scale = 1` it is the wall clock; `--time-scale 50` makes a 1.8 s
/// promotion take 36 ms, for tests and demos. Job ids carry engine seconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Unix seconds at `start`.
    start_unix: f64,
    /// Monotonic origin, so a wall clock step never moves engine time back.
    start: Instant,
    /// Engine seconds per wall second.
    scale: f64,
}

impl Clock {
    /// A clock starting now. `scale` must be positive and finite (the CLI
    /// checks); anything else is treated as 1.
    pub fn new(scale: f64) -> Clock {
        let start_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Clock {
            start_unix,
            start: Instant::now(),
            scale: if scale.is_finite() && scale > 0.0 { scale } else { 1.0 },
        }
    }

    /// Current engine time.
    pub fn now(&self) -> f64 {
        self.start_unix + self.start.elapsed().as_secs_f64() * self.scale
    }

    /// Engine seconds per wall second.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The wall time that `engine_s` engine seconds take.
    pub fn wall(&self, engine_s: f64) -> Duration {
        let s = engine_s / self.scale;
        if s.is_finite() && s > 0.0 {
            Duration::from_secs_f64(s.min(3600.0))
        } else {
            Duration::ZERO
        }
    }
}

/// A cheap-to-clone handle on the engine and its clock.
///
/// The engine sits behind a `std::sync::Mutex`, not an async one: every
/// critical section is short, synchronous work (parse is done before
/// locking, serialization after), and the lock is never held across an
/// `.await`, so a blocking mutex is both correct and faster. Requests from
/// all connections are thereby applied one at a time, in arrival order.
#[derive(Clone)]
pub struct SharedEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Mutex<Engine>,
    /// Taken only while `engine` is held (so never contended); separate so
    /// that [`SharedEngine::lock`] keeps handing out a plain `Engine`.
    status_cache: Mutex<StatusCache>,
    /// Signalled after each request that may have changed the engine, so
    /// the background ticker can sleep long while nothing happens.
    changed: tokio::sync::Notify,
    clock: Clock,
    /// Where the engine's limits, usage and job history are saved (the real
    /// backend); `None` with the simulated backend.
    store: Option<crate::real::store::StateStore>,
}

impl std::fmt::Debug for SharedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEngine").field("clock", &self.inner.clock).finish()
    }
}

/// What answering one line produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The response was written to the output buffer.
    Written,
    /// Nothing to answer (a blank line).
    Nothing,
    /// A `"wait": true` move: answer once this job has ended.
    Wait { job_id: String, id: Option<Value> },
}

impl SharedEngine {
    pub fn new(engine: Engine, clock: Clock) -> SharedEngine {
        SharedEngine::build(engine, clock, None)
    }

    /// As [`SharedEngine::new`], saving the engine's state to `store`
    /// (see [`SharedEngine::save_state`]).
    pub fn with_store(engine: Engine, clock: Clock, store: crate::real::store::StateStore) -> SharedEngine {
        SharedEngine::build(engine, clock, Some(store))
    }

    fn build(engine: Engine, clock: Clock, store: Option<crate::real::store::StateStore>) -> SharedEngine {
        SharedEngine {
            inner: Arc::new(Inner {
                engine: Mutex::new(engine),
                status_cache: Mutex::new(StatusCache::default()),
                changed: tokio::sync::Notify::new(),
                clock,
                store,
            }),
        }
    }

    /// Saves limits, usage, pins and job history where the backend keeps
    /// its state (a no-op without one; unchanged state is not rewritten).
    pub fn save_state(&self) {
        if let Some(store) = &self.inner.store {
            let result = self.with(|engine, now| store.save_engine(engine, now));
            if let Err(e) = result {
                tracing::warn!("cannot save state: {e}");
            }
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Notified after each request that may have changed the engine.
    pub fn changed(&self) -> &tokio::sync::Notify {
        &self.inner.changed
    }

    /// Locks the engine. A panic while it was held (a bug) leaves the lock
    /// poisoned; the engine keeps its invariants between calls, so serving
    /// goes on rather than failing every later request.
    pub fn lock(&self) -> MutexGuard<'_, Engine> {
        self.inner.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the engine at the current engine time.
    pub fn with<T>(&self, f: impl FnOnce(&mut Engine, f64) -> T) -> T {
        let mut engine = self.lock();
        let now = self.inner.clock.now();
        f(&mut engine, now)
    }

    /// Answers one request line, appending the response line to `out`.
    pub fn answer_line(&self, line: &[u8], out: &mut Vec<u8>) -> Answer {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Answer::Nothing;
        }
        let envelope = match protocol::parse_line(line) {
            Ok(e) => e,
            Err(f) => {
                write_value(out, &dispatch::error_response(&f.error, &f.id));
                return Answer::Written;
            }
        };
        if envelope.request == Request::TierStatus {
            let start = out.len();
            let written = self.with(|engine, now| {
                let mut cache = self.inner.status_cache.lock().unwrap_or_else(PoisonError::into_inner);
                dispatch::write_tier_status(engine, now, &envelope.id, &mut cache, out)
            });
            if written.is_ok() {
                out.push(b'\n');
            } else {
                out.truncate(start);
                let e = EngineError::Internal("tier_status could not be serialized".into());
                write_value(out, &dispatch::error_response(&e, &envelope.id));
            }
            return Answer::Written;
        }
        let result = self.with(|engine, now| dispatch::execute(engine, now, envelope.request));
        // One stored permit at most: cheap, and the ticker re-reads the engine.
        self.inner.changed.notify_one();
        match result {
            Ok(Outcome::Reply(v)) => write_value(out, &dispatch::with_id(v, &envelope.id)),
            Ok(Outcome::WaitForJob(job_id)) => return Answer::Wait { job_id, id: envelope.id },
            Err(e) => write_value(out, &dispatch::error_response(&e, &envelope.id)),
        }
        Answer::Written
    }

    /// Checks a waited-for job: `Some(response)` once it has ended (or is
    /// unknown), `None` while it runs, with the engine time of its next event.
    pub fn poll_wait(&self, job_id: &str, id: &Option<Value>) -> Result<Value, Option<f64>> {
        self.with(|engine, now| {
            engine.tick(now);
            match engine.job_ended(job_id) {
                Some(false) => Err(engine.next_wakeup().map(|t| t - now)),
                Some(true) => Ok(match engine.job_status(now, job_id) {
                    Ok(v) => dispatch::with_id(v, id),
                    Err(e) => dispatch::error_response(&e, id),
                }),
                None => Ok(dispatch::error_response(
                    &EngineError::JobNotFound {
                        job_id: job_id.to_string(),
                    },
                    id,
                )),
            }
        })
    }

    /// Waits (polling, a few ms of wall time apart) until job `job_id`
    /// ends, then appends its status line to `out`.
    pub async fn wait_for_job(&self, job_id: &str, id: &Option<Value>, out: &mut Vec<u8>) {
        loop {
            match self.poll_wait(job_id, id) {
                Ok(v) => {
                    write_value(out, &v);
                    return;
                }
                Err(next) => {
                    let pause = next
                        .map(|s| self.inner.clock.wall(s))
                        .unwrap_or(MAX_WAIT_POLL)
                        .clamp(Duration::from_millis(1), MAX_WAIT_POLL);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Longest pause between two checks of a waited-for job.
const MAX_WAIT_POLL: Duration = Duration::from_millis(10);

/// Appends `v` and a newline to `out`.
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    if serde_json::to_writer(&mut *out, v).is_err() {
        // Serializing a `Value` into a Vec cannot fail; keep the line valid
        // all the same.
        out.extend_from_slice(
            br#"{"status":"error","error":{"code":"INTERNAL_ERROR","message":"response not serializable","details":{}}}"#,
        );
    }
    out.push(b'\n');
}

/// The response to a line over the size limit.
pub fn too_long_response(bytes: usize, out: &mut Vec<u8>) {
    let mut details = serde_json::Map::new();
    details.insert("bytes".into(), bytes.into());
    details.insert("limit".into(), protocol::MAX_LINE_BYTES.into());
    let e = EngineError::BadRequest {
        message: format!(
            "request line of {bytes} bytes exceeds the {} byte limit; it was skipped",
            protocol::MAX_LINE_BYTES
        ),
        details,
    };
    write_value(out, &dispatch::error_response(&e, &None));
}
