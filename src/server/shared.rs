//! The state every connection shares: the engine behind a mutex, the clock
//! that turns wall time into engine time, and the state file the engine's
//! snapshots are saved to.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::drivers::MachineKind;
use crate::error::EngineError;
use crate::requests::tier_status::{StatusCache, write_tier_status};
use crate::requests::watch::Watch;
use crate::requests::wire::{Id, Reply, error_response, with_id, write_value};
use crate::requests::{self, Envelope, Outcome, Prepare, Request};
use crate::store::StateStore;
use crate::tiers::Engine;

use super::events::{Hub, Watcher};

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
/// critical section is short, synchronous work (parsing and any blocking
/// preparation happen before locking, serialization and state-file writes
/// after), and the lock is never held across an `.await`, so a blocking
/// mutex is both correct and faster. Requests from all connections are
/// thereby applied one at a time, in arrival order.
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
    /// (An `Arc`: the open watcher's thread signals it too.)
    changed: Arc<tokio::sync::Notify>,
    clock: Clock,
    /// What requests may prepare before the engine is locked.
    prepare: Prepare,
    /// Where the engine's snapshots are saved (a real machine); `None` on
    /// the simulated one.
    store: Option<StateStore>,
    /// The connections watching events.
    hub: Hub,
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
    Wait { job_id: String, id: Option<Id> },
    /// The request has blocking work to do before the engine is locked:
    /// [`SharedEngine::answer_prepared`] does it (on a blocking thread).
    Prepare(Box<Envelope>),
    /// `watch`: the connection becomes an event stream (it writes the
    /// acknowledgement itself).
    Watch { spec: Watch, id: Option<Id> },
}

impl SharedEngine {
    pub fn new(engine: Engine, clock: Clock) -> SharedEngine {
        SharedEngine::build(engine, clock, None)
    }

    /// As [`SharedEngine::new`], saving the engine's snapshots to `store`
    /// (see [`SharedEngine::save_state`]). The engine's placement becomes
    /// durable: a move's source is released once a snapshot recording it
    /// has been saved.
    pub fn with_store(mut engine: Engine, clock: Clock, store: StateStore) -> SharedEngine {
        engine.set_durable(true);
        SharedEngine::build(engine, clock, Some(store))
    }

    fn build(mut engine: Engine, clock: Clock, store: Option<StateStore>) -> SharedEngine {
        // A counted open wakes the ticker, which applies it at once.
        let changed = Arc::new(tokio::sync::Notify::new());
        let wake = changed.clone();
        engine.set_open_waker(Arc::new(move || wake.notify_one()));
        let prepare = Prepare {
            walk_files: engine.machine_kind() == MachineKind::Real,
            max_files: engine.config().max_files_per_model,
        };
        SharedEngine {
            inner: Arc::new(Inner {
                engine: Mutex::new(engine),
                status_cache: Mutex::new(StatusCache::default()),
                changed,
                clock,
                prepare,
                store,
                hub: Hub::default(),
            }),
        }
    }

    /// Saves the engine's snapshot where the machine keeps its state (a
    /// no-op without one; unchanged state is not rewritten), then releases
    /// what the moves it records left behind. The snapshot is taken under
    /// the lock; the write and its fsyncs happen outside it. Blocking: the
    /// server calls it on a blocking thread.
    pub fn save_state(&self) {
        let Some(store) = &self.inner.store else { return };
        let (snap, now) = self.with(|engine, now| (engine.snapshot(now), now));
        match store.save(&snap, now) {
            Ok(_) => self.with(|engine, _| engine.saved(snap.epoch)),
            Err(e) => tracing::warn!("cannot save state: {e}"),
        }
    }

    /// Whether a save is due now: moves have committed whose sources wait
    /// for their placement to be durable.
    pub fn save_pending(&self) -> bool {
        self.inner.store.is_some() && self.lock().pending_releases() > 0
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

    /// Runs `f` on the engine at the current engine time. The events it
    /// produced (when someone watches) are taken out under the lock and
    /// published to the watchers after it is released.
    pub fn with<T>(&self, f: impl FnOnce(&mut Engine, f64) -> T) -> T {
        let mut engine = self.lock();
        let now = self.inner.clock.now();
        let result = f(&mut engine, now);
        if engine.collecting_events() {
            let hub = &self.inner.hub;
            if hub.is_empty() {
                engine.collect_events(false);
                return result;
            }
            let events = engine.take_events();
            let progress = if hub.progress_due() {
                engine.running_progress(now)
            } else {
                Vec::new()
            };
            drop(engine);
            hub.publish(events, progress);
        }
        result
    }

    /// Registers a watcher of `spec` and turns the engine's event
    /// collection on.
    pub fn watch(&self, spec: &Watch) -> Arc<Watcher> {
        let w = self.inner.hub.add(spec);
        self.lock().collect_events(true);
        w
    }

    /// Unregisters a watcher (the engine stops collecting at its next
    /// call once nobody watches).
    pub fn unwatch(&self, w: &Arc<Watcher>) {
        self.inner.hub.remove(w);
    }

    /// Answers one request line, appending the response line to `out`.
    pub fn answer_line(&self, line: &[u8], out: &mut Vec<u8>) -> Answer {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Answer::Nothing;
        }
        let envelope = match requests::parse_line(line) {
            Ok(e) => e,
            Err(f) => {
                write_value(out, &error_response(&f.error, &f.id));
                return Answer::Written;
            }
        };
        match envelope.request {
            Request::TierStatus(_) => {
                self.write_status(&envelope.id, out);
                return Answer::Written;
            }
            Request::Watch(spec) => return Answer::Watch { spec, id: envelope.id },
            Request::Unwatch(_) => {
                write_value(out, &error_response(&crate::requests::unwatch::not_watching(), &envelope.id));
                return Answer::Written;
            }
            _ => {}
        }
        if envelope.request.needs_prepare(&self.inner.prepare) {
            // Checks that need no I/O answer first, as if unprepared.
            if let Request::RegisterModel(r) = &envelope.request
                && let Err(e) = self.with(|engine, _| r.precheck(engine))
            {
                write_value(out, &error_response(&e, &envelope.id));
                return Answer::Written;
            }
            return Answer::Prepare(Box::new(envelope));
        }
        self.answer(envelope, out)
    }

    /// Does a request's blocking preparation (on a blocking thread), then
    /// answers it.
    pub async fn answer_prepared(&self, envelope: Envelope, out: &mut Vec<u8>) -> Answer {
        let Envelope { id, mut request } = envelope;
        let ctx = self.inner.prepare;
        let prepared = tokio::task::spawn_blocking(move || request.prepare(&ctx).map(|()| request)).await;
        match prepared {
            Ok(Ok(request)) => self.answer(Envelope { id, request }, out),
            Ok(Err(e)) => {
                write_value(out, &error_response(&e, &id));
                Answer::Written
            }
            Err(e) => {
                let e = EngineError::Internal(format!("preparing the request failed: {e}"));
                write_value(out, &error_response(&e, &id));
                Answer::Written
            }
        }
    }

    /// Executes a parsed (and prepared) request and writes its answer.
    fn answer(&self, envelope: Envelope, out: &mut Vec<u8>) -> Answer {
        let result = self.with(|engine, now| requests::execute(engine, now, envelope.request));
        // One stored permit at most: cheap, and the ticker re-reads the engine.
        self.inner.changed.notify_one();
        match result {
            Ok(Outcome::Reply(v)) => write_value(out, &with_id(v, &envelope.id)),
            Ok(Outcome::WaitForJob(job_id)) => return Answer::Wait { job_id, id: envelope.id },
            Err(e) => write_value(out, &error_response(&e, &envelope.id)),
        }
        Answer::Written
    }

    /// The `tier_status` fast path: the typed view written straight to
    /// bytes (from the cache while nothing in it changed).
    fn write_status(&self, id: &Option<Id>, out: &mut Vec<u8>) {
        let start = out.len();
        let written = self.with(|engine, now| {
            engine.tick(now);
            let mut cache = self.inner.status_cache.lock().unwrap_or_else(PoisonError::into_inner);
            write_tier_status(engine, id, &mut cache, out)
        });
        if written.is_ok() {
            out.push(b'\n');
        } else {
            out.truncate(start);
            let e = EngineError::Internal("tier_status could not be serialized".into());
            write_value(out, &error_response(&e, id));
        }
    }

    /// Checks a waited-for job: `Ok(response)` once it has ended (or is
    /// unknown), `Err` while it runs, with the engine time to its next event.
    pub fn poll_wait(&self, job_id: &str, id: &Option<Id>) -> Result<Reply, Option<f64>> {
        self.with(|engine, now| {
            engine.tick(now);
            match engine.job_ended(job_id) {
                Some(false) => Err(engine.next_wakeup().map(|t| t - now)),
                Some(true) => Ok(match engine.job(now, job_id) {
                    Ok(v) => with_id(serde_json::to_value(v).unwrap_or(Value::Null), id),
                    Err(e) => error_response(&e, id),
                }),
                None => Ok(error_response(
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
    pub async fn wait_for_job(&self, job_id: &str, id: &Option<Id>, out: &mut Vec<u8>) {
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
