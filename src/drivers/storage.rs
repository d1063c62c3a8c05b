//! `storage`: the tier of the models' origins, where they were registered
//! from. tierd only ever reads an origin; a model "in storage" is served
//! from it, so a move here copies nothing: it completes at once, once the
//! origin is known to be complete (else the copy the model leaves would be
//! its last one, and the move is refused).

use super::files::ModelFiles;
use super::machine::OpenContext;
use super::{Capacity, DriverEvent, JobKey, MoveEvent, MoveOrder, TierDriver};
use crate::config::TierConfig;

/// The origins' tier. See the module docs.
#[derive(Debug, Default)]
pub struct StorageDriver {
    /// Moves that completed, reported at the next poll.
    done: Vec<JobKey>,
    last_now: f64,
}

/// Opens the storage tier (no configuration of its own).
pub fn open(_ctx: &mut OpenContext, _tier: &TierConfig) -> Result<Box<dyn TierDriver>, String> {
    Ok(Box::new(StorageDriver::default()))
}

impl TierDriver for StorageDriver {
    fn kind(&self) -> &'static str {
        "storage"
    }

    fn capacity(&self) -> Capacity {
        Capacity::Unbounded
    }

    fn start_move(&mut self, now: f64, order: &MoveOrder) -> Result<(), String> {
        self.last_now = now;
        // The origin must be complete before the last other copy goes.
        if let Some(problem) = order.files.as_deref().and_then(ModelFiles::origin_problem)
            && order.source.is_copy()
        {
            return Err(format!(
                "refusing to demote {} to storage: {problem}; the copy it leaves is its last complete copy",
                order.model
            ));
        }
        self.done.push(order.job);
        Ok(())
    }

    fn cancel_move(&mut self, _now: f64, _job: JobKey) {
        // Nothing to stop: the move is complete the moment it starts.
    }

    fn progress(&self, _now: f64, job: JobKey) -> f64 {
        if self.done.contains(&job) { 1.0 } else { 0.0 }
    }

    fn poll(&mut self, now: f64, events: &mut Vec<DriverEvent>) {
        self.last_now = now;
        events.extend(self.done.drain(..).map(|job| DriverEvent {
            at: now,
            event: MoveEvent::Finished { job, checksums: None },
        }));
    }

    fn next_event_time(&self) -> Option<f64> {
        (!self.done.is_empty()).then_some(self.last_now)
    }

    fn check_copy(&self, _model: &str, files: &ModelFiles) -> Result<(), String> {
        match files.origin_problem() {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }
}
