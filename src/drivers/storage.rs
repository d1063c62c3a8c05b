//! `storage`: the tier of the models' origins, where they were registered
//! from. tierd only ever reads an origin; a model "in storage" is served
//! from it, so a move here copies nothing. It completes once the origin is
//! known to be complete; where the model's source holds a copy of its own,
//! that copy would otherwise be its last one, so a damaged origin refuses
//! the move. The check stats every file, on a thread of its own.

use std::sync::mpsc::{Receiver, Sender, channel};

use super::files::ModelFiles;
use super::machine::OpenContext;
use super::{Capacity, DriverEvent, JobKey, MoveEvent, MoveOrder, TierDriver};
use crate::config::TierConfig;

/// The origins' tier. See the module docs.
#[derive(Debug)]
pub struct StorageDriver {
    /// Moves started and not reported yet.
    running: Vec<JobKey>,
    tx: Sender<(JobKey, Result<(), String>)>,
    rx: Receiver<(JobKey, Result<(), String>)>,
    last_now: f64,
}

impl Default for StorageDriver {
    fn default() -> Self {
        let (tx, rx) = channel();
        StorageDriver {
            running: Vec::new(),
            tx,
            rx,
            last_now: 0.0,
        }
    }
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

    fn start_move(&mut self, now: f64, order: &MoveOrder<'_>) -> Result<(), String> {
        self.last_now = now;
        let (job, tx) = (order.job, self.tx.clone());
        match (&order.files, order.source.is_copy()) {
            (Some(files), true) => {
                let (files, model) = (std::sync::Arc::clone(files), order.model.clone());
                let (from, to) = (order.from_name.to_string(), order.to_name.to_string());
                std::thread::spawn(move || {
                    let out = match files.origin_problem() {
                        Some(problem) => Err(format!(
                            "refusing to demote {model} to {to}: {problem}; the copy in {from} is its last complete copy"
                        )),
                        None => Ok(()),
                    };
                    let _ = tx.send((job, out));
                });
            }
            // Nothing to check: the model was served from its origin.
            _ => {
                let _ = tx.send((job, Ok(())));
            }
        }
        self.running.push(job);
        Ok(())
    }

    fn cancel_move(&mut self, _now: f64, _job: JobKey) {
        // Nothing to stop: the move changes nothing until it completes.
    }

    fn progress(&self, _now: f64, _job: JobKey) -> f64 {
        0.0
    }

    fn poll(&mut self, now: f64, events: &mut Vec<DriverEvent>) {
        self.last_now = now;
        while let Ok((job, out)) = self.rx.try_recv() {
            self.running.retain(|j| *j != job);
            let event = match out {
                Ok(()) => MoveEvent::Finished {
                    job,
                    checksums: None,
                    mtimes: None,
                },
                Err(message) => MoveEvent::Failed {
                    job,
                    message,
                    retryable: false,
                },
            };
            events.push(DriverEvent { at: now, event });
        }
    }

    fn next_event_time(&self) -> Option<f64> {
        (!self.running.is_empty()).then_some(self.last_now)
    }

    fn source_of(&self, _model: &str) -> super::Source {
        super::Source::Origin
    }

    fn check_copy(&self, _model: &str, _files: &ModelFiles) -> Result<(), String> {
        Ok(())
    }
}
