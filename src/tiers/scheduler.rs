//! The scheduler: time advancing ([`Engine::tick`]), the drivers' events,
//! starting ready jobs in priority order, retries with backoff, and the end
//! of a job (success, failure, cancel), which passes on to its dependents.

use std::borrow::Cow;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::drivers::{DriverEvent, MachineKind, MoveEvent, MoveOrder};
use crate::error::EngineError;

use super::engine::Engine;
use super::events::JobStep;
use super::job::{Attempt, CancelCause, Job, JobKey, JobStatus, Priority};
use super::views::JobView;

/// A small ordered set of job keys (the running jobs: at most
/// `max_concurrent_tasks`): a sorted vector, cheaper than a B-tree at that
/// size, iterated in key order like one.
#[derive(Debug, Default)]
pub(crate) struct SortedKeys(Vec<JobKey>);

impl SortedKeys {
    pub fn insert(&mut self, key: JobKey) -> bool {
        match self.0.binary_search(&key) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, key);
                true
            }
        }
    }

    pub fn remove(&mut self, key: &JobKey) -> bool {
        match self.0.binary_search(key) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains(&self, key: &JobKey) -> bool {
        self.0.binary_search(key).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, JobKey> {
        self.0.iter()
    }
}

/// An `f64` time usable as an ordered key (times are never negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimeKey(u64);

impl TimeKey {
    pub fn new(t: f64) -> TimeKey {
        TimeKey(t.max(0.0).to_bits())
    }

    pub fn time(self) -> f64 {
        f64::from_bits(self.0)
    }
}

/// One scheduling decision, for property tests and debugging.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedEvent {
    pub time: f64,
    pub kind: SchedEventKind,
    pub job: JobKey,
    pub priority: Priority,
}

/// What happened to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum SchedEventKind {
    Submitted,
    Started,
    Retrying { not_before: f64 },
    Ended { status: JobStatus },
}

impl Engine {
    /// The earliest time at which `tick` has something to do, for drivers
    /// that advance virtual time.
    pub fn next_wakeup(&self) -> Option<f64> {
        let b = self.drivers_next_event();
        let w = self.delayed.first().map(|(t, _)| t.time());
        match (b, w) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The earliest next event of any driver, from the engine's copy of
    /// each driver's answer (refreshed after every call that changes it).
    #[inline]
    fn drivers_next_event(&self) -> Option<f64> {
        self.next_event
    }

    /// Re-reads driver `tier`'s next event time after a call into it.
    #[inline(always)]
    pub(crate) fn refresh_next_event(&mut self, tier: usize) {
        let t = self.machine.drivers[tier].next_event_time();
        let old = std::mem::replace(&mut self.next_events[tier], t);
        if t == old {
            return;
        }
        match (t, self.next_event) {
            // Earlier than every other driver's: the new earliest.
            (Some(t), Some(m)) if t <= m => self.next_event = Some(t),
            (Some(t), None) => self.next_event = Some(t),
            // The earliest moved later (or went): look at them all.
            _ if old == self.next_event => {
                self.next_event = self.next_events.iter().copied().flatten().min_by(f64::total_cmp);
            }
            _ => {}
        }
    }

    /// Polls every driver that has something due by `now`, in tier order,
    /// into `events` (then sorted by time).
    #[inline(always)]
    fn poll_drivers(&mut self, now: f64, events: &mut Vec<DriverEvent>) {
        for i in 0..self.next_events.len() {
            if matches!(self.next_events[i], Some(t) if t <= now) {
                let first = events.len();
                self.machine.drivers[i].poll(now, events);
                for e in &mut events[first..] {
                    e.event.set_tier(i);
                }
                self.refresh_next_event(i);
            }
        }
        if events.len() > 1 {
            // Stable: one driver's events keep their order.
            events.sort_by(|a, b| a.at.total_cmp(&b.at).then(a.event.job().cmp(&b.event.job())));
        }
    }

    /// Advances the engine to `now`: checks memory-pressure floors, applies
    /// the drivers' events (in time order), makes jobs whose retry delay is
    /// over ready, and starts every queued move that may start, until
    /// nothing changes any more.
    pub fn tick(&mut self, now: f64) {
        // Origins and copies changed behind tierd's back (a real machine).
        if self.machine.watch.is_some() {
            self.watch_files(now);
        }
        // Other processes' opens of model files, counted as accesses.
        if self.machine.opens.is_some() {
            self.observe_opens(now);
        }
        // The RAM engine tiers hold, booked on the RAM tier below them.
        if self.has_engine_tiers && self.book_engine_ram(now) {
            self.dirty = true;
        }
        // Hardware can change without an event (other programs grow):
        // pressure floors are checked at most once per engine second.
        if self.has_floors && now >= self.next_pressure_check {
            self.next_pressure_check = now + 1.0;
            if !self.relieve_pressure(now).is_empty() {
                self.dirty = true;
            }
        }
        loop {
            let mut events = std::mem::take(&mut self.events);
            events.clear();
            if self.drivers_next_event().is_some_and(|t| t <= now) {
                self.poll_drivers(now, &mut events);
            }
            let had_events = !events.is_empty();
            if had_events {
                for e in events.drain(..) {
                    self.apply_event(now, e);
                }
            }
            self.events = events;
            // Retry delays that are over make their jobs ready again.
            while let Some(&(t, key)) = self.delayed.first() {
                if t.time() > now {
                    break;
                }
                self.delayed.pop_first();
                if let Some(j) = self.jobs.get(&key) {
                    self.ready.insert((j.priority, key));
                    self.dirty = true;
                }
            }
            // Pinned models whose reload into their engine tier failed go
            // to RAM (outside `close`, which may run mid-schedule).
            self.repin_fallbacks(now);
            self.deferred_drops(now);
            if !had_events && !self.dirty {
                return;
            }
            self.dirty = false;
            let started = self.schedule(now);
            if !had_events && started == 0 {
                return;
            }
        }
    }

    /// Starts the ready jobs that may start now, without looking at the
    /// drivers (a request's changes take effect at once; its tick came
    /// before it).
    pub(crate) fn start_ready(&mut self, now: f64) {
        if self.dirty {
            self.dirty = false;
            self.schedule(now);
        }
    }

    /// Turns schedule recording on (property tests check the log).
    pub fn record_schedule(&mut self, on: bool) {
        self.log = if on { Some(Vec::new()) } else { None };
    }

    /// The recorded scheduling decisions, oldest first.
    pub fn schedule_log(&self) -> &[SchedEvent] {
        self.log.as_deref().unwrap_or(&[])
    }

    pub(crate) fn record(&mut self, now: f64, kind: SchedEventKind, job: JobKey, priority: Priority) {
        // Ended jobs are told once their error is set (`close`).
        match kind {
            SchedEventKind::Submitted => self.emit_job(now, job, JobStep::Queued),
            SchedEventKind::Started => self.emit_job(now, job, JobStep::Started),
            SchedEventKind::Retrying { not_before } => self.emit_job(now, job, JobStep::Retried { not_before }),
            SchedEventKind::Ended { .. } => {}
        }
        if let Some(log) = &mut self.log {
            log.push(SchedEvent {
                time: now,
                kind,
                job,
                priority,
            });
        }
    }

    /// `cancel_job`: a queued job ends at once; a running one is asked to
    /// roll back (its driver confirms on a later tick: until then the job
    /// shows `cancelling`). Answers the job.
    pub fn cancel_job(&mut self, now: f64, id: &str) -> Result<JobView, EngineError> {
        self.cancel_job_for(now, id, CancelCause::Request)
    }

    /// As [`Engine::cancel_job`], for the server shutting down: the job's
    /// error says "cancelled at shutdown" or "rolled back at shutdown".
    pub fn cancel_job_at_shutdown(&mut self, now: f64, id: &str) -> Result<JobView, EngineError> {
        self.cancel_job_for(now, id, CancelCause::Shutdown)
    }

    fn cancel_job_for(&mut self, now: f64, id: &str, cause: CancelCause) -> Result<JobView, EngineError> {
        let key = self.job_by_id(id)?;
        let Some(job) = self.jobs.get_mut(&key) else {
            return Err(EngineError::JobNotFound { job_id: id.to_string() });
        };
        match job.status {
            JobStatus::Queued => {
                self.end_job(
                    now,
                    key,
                    JobStatus::Cancelled,
                    Some(("CANCELLED".into(), cause.queued_message().into())),
                );
            }
            // A second cancel of a job already rolling back changes nothing.
            JobStatus::Running if job.cancel_requested => {}
            JobStatus::Running => {
                job.cancel_requested = true;
                job.cancel_at_shutdown = cause == CancelCause::Shutdown;
                let to = job.to;
                // A move whose target is done and whose source is unloading
                // ends on the unload's answer: completed if the engine let
                // go (too late), else cancelled.
                if job.moving_out.is_none() {
                    self.machine.drivers[to].cancel_move(now, key);
                    self.refresh_next_event(to);
                }
                // A driver that rolls back at once (the simulated one) says
                // so in its next events: take them now.
                self.apply_due_events(now);
            }
            s => {
                return Err(EngineError::JobEnded {
                    job_id: id.to_string(),
                    status: s.as_str().to_string(),
                });
            }
        }
        self.start_ready(now);
        self.job_view(now, key)
            .ok_or_else(|| EngineError::JobNotFound { job_id: id.to_string() })
    }

    /// Applies the events the drivers already have for `now`.
    fn apply_due_events(&mut self, now: f64) {
        if self.drivers_next_event().is_some_and(|t| t <= now) {
            let mut events = std::mem::take(&mut self.events);
            events.clear();
            self.poll_drivers(now, &mut events);
            for e in events.drain(..) {
                self.apply_event(now, e);
            }
            self.events = events;
        }
    }

    #[inline]
    fn apply_event(&mut self, now: f64, e: DriverEvent) {
        match e.event {
            MoveEvent::Finished { job, checksums, mtimes } => self.target_finished(now, job, checksums, mtimes),
            MoveEvent::MovedOut { job, error } => self.moved_out(now, job, error),
            MoveEvent::Failed { job, message, retryable } => self.fail_run(now, job, message, retryable),
            MoveEvent::Cancelled { job } => {
                self.cancelled_run(now, job);
            }
            MoveEvent::ModelUnavailable { model, reason } => {
                if let Some(id) = self.state.model_id(&model)
                    && let Some(m) = self.state.model_mut(id)
                {
                    let tier = m.tier;
                    m.unavailable = Some(reason);
                    if self.collecting_events()
                        && let Some(reason) = self.state.model(id).and_then(|m| m.unavailable.clone())
                    {
                        self.emit_unavailable(now, &model, tier, &reason);
                    }
                }
            }
            MoveEvent::CopyCorrupt {
                model,
                tier,
                reason,
                origin_problem,
                ..
            } => self.copy_corrupt(now, &model, tier, reason, origin_problem),
            event @ (MoveEvent::EngineLoaded { .. }
            | MoveEvent::EngineUnloaded { .. }
            | MoveEvent::EngineActivity { .. }
            | MoveEvent::LoadTimed { .. }) => self.engine_event(now, event),
        }
    }

    /// A running move was rolled back on request (or at shutdown).
    fn cancelled_run(&mut self, now: f64, job: JobKey) {
        if self.running.contains(&job) {
            let cause = self.jobs.get(&job).and_then(Job::cancel_cause).unwrap_or(CancelCause::Request);
            let outcome = match cause {
                CancelCause::Request => "cancelled",
                CancelCause::Shutdown => "rolled back at shutdown",
            };
            self.stop_running(now, job, outcome, false);
            self.end_job(
                now,
                job,
                JobStatus::Cancelled,
                Some(("CANCELLED".into(), cause.rolled_back_message().into())),
            );
        }
    }

    /// The target of a running move has the model: the source lets go
    /// first where its driver must confirm that (an engine tier unloads,
    /// [`crate::drivers::TierDriver::start_move_out`]); the move commits
    /// now, or once that confirmation comes ([`Engine::moved_out`]).
    fn target_finished(&mut self, now: f64, key: JobKey, checksums: Option<Vec<String>>, mtimes: Option<Vec<i64>>) {
        if !self.running.contains(&key) {
            return;
        }
        let Some(job) = self.jobs.get(&key) else { return };
        if job.moving_out.is_some() {
            // Already waiting for its source (a repeated report).
            return;
        }
        let (from, to, model) = (job.from, job.to, job.model);
        let Some(name) = self.state.model(model).map(|m| m.name.clone()) else {
            return self.finish_job(now, key, checksums, mtimes);
        };
        let to_kind = self.machine.drivers[to].kind();
        match self.machine.drivers[from].start_move_out(now, key, &name, to_kind) {
            Ok(false) => self.finish_job(now, key, checksums, mtimes),
            Ok(true) => {
                if let Some(job) = self.jobs.get_mut(&key) {
                    job.moving_out = Some((checksums, mtimes));
                }
                self.refresh_next_event(from);
            }
            Err(message) => self.source_refused(now, key, message),
        }
    }

    /// The source of a move waiting for it ([`Engine::target_finished`])
    /// let go of the model, or could not.
    fn moved_out(&mut self, now: f64, key: JobKey, error: Option<String>) {
        if !self.running.contains(&key) {
            return;
        }
        let Some(waiting) = self.jobs.get_mut(&key).and_then(|j| j.moving_out.take()) else {
            return;
        };
        match error {
            // The source let go: too late for a cancel, the move completes.
            None => self.finish_job(now, key, waiting.0, waiting.1),
            Some(message) => self.source_refused(now, key, message),
        }
    }

    /// The source of a move could not let go of the model (an engine's
    /// unload failed or timed out): the model stays where it was, and what
    /// the target brought in is released as for any failed move.
    fn source_refused(&mut self, now: f64, key: JobKey, message: String) {
        let Some(job) = self.jobs.get(&key) else { return };
        let (from, to, model, cancel) = (job.from, job.to, job.model, job.cancel_requested);
        if let Some(m) = self.state.model(model) {
            let (name, files) = (m.name.clone(), m.files.clone());
            self.machine.drivers[to].release(&name, files.as_deref());
        }
        if cancel {
            return self.cancelled_run(now, key);
        }
        let from_name = self.state.tiers[from].name.clone();
        // Not retried: the engine said no; a new move asks it again.
        self.fail_run(now, key, format!("tier {from_name} did not let go of the model: {message}"), false);
    }

    /// Bookkeeping common to every end of a run. A run that `completed`
    /// is at full progress; any other keeps what its driver last reached.
    fn stop_running(&mut self, now: f64, key: JobKey, outcome: impl Into<Cow<'static, str>>, completed: bool) {
        self.running.remove(&key);
        let Some(job) = self.jobs.get_mut(&key) else { return };
        job.progress = if completed {
            1.0
        } else {
            self.machine.drivers[job.to].progress(now, key).clamp(0.0, 1.0).max(job.progress)
        };
        if let Some(a) = job.attempts.last_mut() {
            a.ended_at = Some(now);
            a.outcome = Some(outcome.into());
        }
        let (to, bytes) = (job.to, job.bytes);
        self.state.tiers[to].incoming_running -= bytes;
        self.dirty = true;
    }

    /// A move completed: the model is in its target; its source lets go of
    /// it (once the new placement is durable, with a state file).
    fn finish_job(&mut self, now: f64, key: JobKey, checksums: Option<Vec<String>>, mtimes: Option<Vec<i64>>) {
        if !self.running.contains(&key) {
            return;
        }
        self.stop_running(now, key, "success", true);
        let Some(job) = self.jobs.get(&key) else { return };
        let (from, to, bytes, model) = (job.from, job.to, job.bytes, job.model);
        // What this attempt took teaches the estimate of later moves.
        if self.machine.kind == MachineKind::Real
            && let Some(a) = job.attempts.last()
        {
            let (kf, kt) = (self.machine.drivers[from].kind(), self.machine.drivers[to].kind());
            self.move_rates.record(kf, kt, bytes, now - a.started_at, job.bandwidth_mb_s);
        }
        let tiers = &mut self.state.tiers;
        tiers[from].used -= bytes;
        tiers[from].models -= 1;
        tiers[to].used += bytes;
        tiers[to].models += 1;
        tiers[to].incoming -= bytes;
        tiers[to].incoming_models -= 1;
        if let Some(m) = self.state.model_mut(model) {
            m.tier = to;
            m.job = None;
            if let (Some(sums), Some(files)) = (checksums, m.files.as_mut()) {
                let files = Arc::make_mut(files);
                for (f, h) in files.files.iter_mut().zip(sums) {
                    f.blake3 = Some(h);
                }
            }
            // The modification times of the copy that serves it now (none
            // when it is served from its origin).
            if let Some(files) = m.files.as_mut()
                && (mtimes.is_some() || files.files.iter().any(|f| f.copy_mtime_ns.is_some()))
            {
                let files = Arc::make_mut(files);
                let mut mtimes = mtimes.into_iter().flatten();
                for f in &mut files.files {
                    f.copy_mtime_ns = mtimes.next();
                }
            }
            let name = m.name.clone();
            self.state.detach(model, from);
            self.state.attach(model, to);
            // The serve path leads to the new copy before the old one goes.
            self.link_serve_path(model);
            // An engine tier unloads toward where the model goes (vLLM's
            // sleep level); other drivers ignore this.
            let to_kind = self.machine.drivers[to].kind();
            self.machine.drivers[from].moving_out(&name, to_kind);
            self.release_model(model, from);
        }
        self.metrics.moves_succeeded += 1;
        self.metrics.bytes_moved += u128::from(bytes);
        let (prio, dependents) = match self.jobs.get_mut(&key) {
            Some(j) => (j.priority, std::mem::take(&mut j.dependents)),
            None => (Priority::Normal, SmallVec::new()),
        };
        self.record(
            now,
            SchedEventKind::Ended {
                status: JobStatus::Success,
            },
            key,
            prio,
        );
        self.close(now, key, JobStatus::Success, None);
        // Dependents with nothing else to wait for become ready.
        for d in dependents {
            if let Some(j) = self.jobs.get_mut(&d)
                && j.status == JobStatus::Queued
                && j.unmet_deps > 0
            {
                j.unmet_deps -= 1;
                if j.unmet_deps == 0 {
                    self.ready.insert((j.priority, d));
                }
            }
        }
    }

    fn fail_run(&mut self, now: f64, key: JobKey, message: String, retryable: bool) {
        if !self.running.contains(&key) {
            return;
        }
        self.stop_running(now, key, format!("failed: {message}"), false);
        let Some(job) = self.jobs.get_mut(&key) else { return };
        if retryable && !job.cancel_requested && job.attempt <= job.max_retries {
            // attempt n failed; retry n waits base * 2^(n-1), capped.
            let delay = (self.cfg.moves.retry_base_s * 2f64.powi(job.attempt.saturating_sub(1) as i32)).min(self.cfg.moves.retry_cap_s);
            job.status = JobStatus::Queued;
            job.not_before = now + delay;
            job.progress = 0.0;
            let (prio, at) = (job.priority, job.not_before);
            self.queued += 1;
            self.delayed.insert((TimeKey::new(at), key));
            self.record(now, SchedEventKind::Retrying { not_before: at }, key, prio);
            self.metrics.retries += 1;
        } else {
            let status = if job.cancel_requested {
                JobStatus::Cancelled
            } else {
                JobStatus::Failed
            };
            self.end_job(now, key, status, Some(("TASK_FAILED".into(), message)));
        }
    }

    /// Ends a queued or just-stopped job that did not succeed: releases its
    /// reservation and fails its dependents.
    pub(crate) fn end_job(&mut self, now: f64, key: JobKey, status: JobStatus, error: Option<(String, String)>) {
        let Some(job) = self.jobs.get_mut(&key) else { return };
        if job.status.is_terminal() {
            return;
        }
        let (to, bytes, model, prio, not_before) = (job.to, job.bytes, job.model, job.priority, job.not_before);
        if job.status == JobStatus::Queued {
            self.queued -= 1;
            job.unmet_deps = 0;
            self.ready.remove(&(prio, key));
            self.delayed.remove(&(TimeKey::new(not_before), key));
        }
        let dependents = std::mem::take(&mut job.dependents);
        let id = job.id.clone();
        self.record(now, SchedEventKind::Ended { status }, key, prio);
        let t = &mut self.state.tiers[to];
        t.incoming -= bytes;
        t.incoming_models -= 1;
        if let Some(m) = self.state.model_mut(model)
            && m.job == Some(key)
        {
            m.job = None;
        }
        match status {
            JobStatus::Cancelled => self.metrics.moves_cancelled += 1,
            _ => self.metrics.moves_failed += 1,
        }
        self.close(now, key, status, error);
        self.dirty = true;
        // Dependents cannot run any more.
        for d in dependents {
            let msg = format!("Dependency {id} did not succeed ({})", status.as_str());
            if self.jobs.get(&d).is_some_and(|j| j.status == JobStatus::Queued) {
                self.end_job(now, d, JobStatus::Failed, Some(("DEPENDENCY_FAILED".into(), msg)));
            }
        }
    }

    /// Marks a job ended and bounds the history.
    pub(crate) fn close(&mut self, now: f64, key: JobKey, status: JobStatus, error: Option<(String, String)>) {
        self.repin_ended(key, status, error.as_ref().map(|e| e.1.as_str()));
        if let Some(job) = self.jobs.get_mut(&key) {
            job.status = status;
            job.ended_at = Some(now);
            let slot = super::views::status_slot(status);
            *self.metrics.moves_by_route.entry((job.from, job.to, slot)).or_insert(0) += 1;
            if let (Some(started), Some(h)) = (job.started_at, self.metrics.move_duration.get_mut(job.to)) {
                h[slot].observe(now - started);
            }
            job.error = error;
            // Room counted on from this move is no longer pending.
            let from = &mut self.state.tiers[job.from];
            from.claimed_out -= job.bytes - job.unclaimed_bytes;
            from.claimed_out_models -= 1 - job.unclaimed_models;
            job.unclaimed_bytes = 0;
            job.unclaimed_models = 0;
        }
        if self.collecting_events() {
            self.emit_job(now, key, JobStep::Ended);
            if status == JobStatus::Success
                && let Some(j) = self.jobs.get(&key)
            {
                let (name, from, to) = (j.model_name.clone(), j.from, j.to);
                self.emit_placed(now, &name, to, Some(from));
            }
        }
        self.ended.push_back(key);
        while self.ended.len() > self.cfg.job_history.max(1) {
            let Some(old) = self.ended.pop_front() else { break };
            if let Some(id) = self.jobs.discard(&old)
                && !id.is_empty()
            {
                self.job_ids.remove(&id);
            }
        }
    }

    /// Starts ready jobs in priority order (FIFO within a priority) while
    /// slots are free; returns how many started. A ready job whose bytes do
    /// not fit yet is passed over for lower-priority jobs that do.
    pub(crate) fn schedule(&mut self, now: f64) -> usize {
        let mut started = 0;
        let mut blocked_on_room: SmallVec<[JobKey; 8]> = SmallVec::new();
        let mut cursor: Option<(Priority, JobKey)> = None;
        while self.running.len() < self.max_concurrent {
            let next = match cursor {
                None => self.ready.first(),
                Some(c) => self.ready.after(c),
            };
            let Some((prio, key)) = next else { break };
            cursor = Some((prio, key));
            let Some(job) = self.jobs.get(&key) else {
                self.ready.remove(&(prio, key));
                continue;
            };
            if !self.fits_now(job) {
                blocked_on_room.push(key);
                continue;
            }
            let (to, bytes) = (job.to, job.bytes);
            self.ready.remove(&(prio, key));
            // The order borrows the job and its model; the drivers are
            // another field of the engine.
            let started_move = {
                let source = self.machine.drivers[job.from].source_of(&job.model_name);
                let order = MoveOrder {
                    job: key,
                    model: &job.model_name,
                    files: self.state.model(job.model).and_then(|m| m.files.as_ref()),
                    bytes,
                    from: job.from,
                    to,
                    from_name: &self.state.tiers[job.from].name,
                    to_name: &self.state.tiers[to].name,
                    source,
                    expected_s: job.estimated_s,
                    bandwidth_mb_s: job.bandwidth_mb_s,
                };
                self.machine.drivers[to].start_move(now, &order)
            };
            self.refresh_next_event(to);
            match started_move {
                Ok(()) => {
                    self.queued -= 1;
                    self.running.insert(key);
                    self.state.tiers[to].incoming_running += bytes;
                    self.metrics.moves_started += 1;
                    started += 1;
                    if let Some(job) = self.jobs.get_mut(&key) {
                        job.status = JobStatus::Running;
                        job.attempt += 1;
                        job.started_at.get_or_insert(now);
                        job.attempts.push(Attempt {
                            attempt: job.attempt,
                            started_at: now,
                            ended_at: None,
                            outcome: None,
                        });
                    }
                    // After the attempt is counted, for its event.
                    self.record(now, SchedEventKind::Started, key, prio);
                }
                Err(message) => {
                    self.end_job(now, key, JobStatus::Failed, Some(("TASK_FAILED".into(), message)));
                }
            }
        }
        // Nothing running, retrying or waiting to be released could ever
        // free room for these: fail them rather than leave them waiting forever.
        if self.running.is_empty() && self.delayed.is_empty() && self.pending_releases.is_empty() && started == 0 {
            for key in blocked_on_room {
                let msg = self
                    .jobs
                    .get(&key)
                    .map(|j| {
                        let t = &self.state.tiers[j.to];
                        let over_limit = t
                            .limit
                            .is_some_and(|limit| t.used + t.engine_held + t.incoming_running + j.bytes > limit);
                        let short = if over_limit {
                            format!("{} limit exceeded", t.name.to_uppercase())
                        } else {
                            format!("Insufficient {}: the hardware has too little room", t.name.to_uppercase())
                        };
                        format!("{short}: no room for {} and no move in progress to free it", j.model_name)
                    })
                    .unwrap_or_default();
                self.end_job(now, key, JobStatus::Failed, Some(("RESOURCE_UNAVAILABLE".into(), msg)));
            }
        }
        started
    }
}
