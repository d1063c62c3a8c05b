//! Accesses learned from real opens: what the engine makes of the open
//! watcher's counted accesses ([`crate::drivers::opens`]), and the list of
//! files it hands the watcher.
//!
//! A counted open is recorded exactly as an `access_model` request
//! ([`Engine::access`]): the same usage statistics, the same policy
//! reaction (the default policy promotes a model opened repeatedly). The
//! watcher's thread reads the kernel and debounces; the engine only takes
//! the accesses from a channel at its tick, so its lock never waits on I/O.

use crate::drivers::Source;
use crate::drivers::opens::{OpenItem, OpenWatchStatus, Waker};
use crate::error::EngineError;

use super::engine::Engine;

/// Counted accesses applied per tick at most (the rest wait for the next).
const ACCESSES_PER_TICK: usize = 4096;

impl Engine {
    /// Applies the accesses counted since the last tick, then hands the
    /// watcher the current list of files if it may have changed.
    pub(crate) fn observe_opens(&mut self, now: f64) {
        let Some(w) = self.machine.opens.as_mut() else { return };
        let accesses = w.take(ACCESSES_PER_TICK);
        let due = w.sync_due(self.epoch);
        for a in accesses {
            match self.access(now, &a.model) {
                Ok(r) => {
                    self.dirty = true;
                    tracing::debug!(model = %a.model, pid = ?a.pid, usage = r.usage, jobs = ?r.jobs, "open counted as an access");
                }
                // Unregistered or unavailable since the open: nothing to count.
                Err(EngineError::ModelNotFound { .. } | EngineError::ModelUnavailable { .. }) => {}
                Err(e) => tracing::debug!(model = %a.model, error = %e, "open not counted"),
            }
        }
        // (After the accesses: a policy move they started may already have
        // changed the placement.)
        let due = due || self.machine.opens.as_mut().is_some_and(|w| w.sync_due(self.epoch));
        if due {
            let items = self.open_items();
            if let Some(w) = self.machine.opens.as_mut() {
                w.sync(items);
            }
        }
    }

    /// Every model with files, with the copy it is served from: what the
    /// open watcher watches. A model being moved keeps its source's files
    /// (the target's copy counts once the move commits).
    fn open_items(&self) -> Vec<OpenItem> {
        self.state
            .iter_models()
            .filter_map(|(_, m)| {
                let files = m.files.as_ref()?;
                let copy = match self.machine.drivers[m.tier].source_of(&m.name) {
                    Source::Copy(dir) => Some(dir),
                    Source::Origin => None,
                };
                Some(OpenItem {
                    model: m.name.clone(),
                    files: files.clone(),
                    copy,
                })
            })
            .collect()
    }

    /// Who to wake when an open was counted (the server's ticker), so the
    /// access is applied at once rather than at the next idle tick.
    pub fn set_open_waker(&mut self, waker: Waker) {
        if let Some(w) = &self.machine.opens {
            w.set_waker(waker);
        }
    }

    /// What `health` says about the open watcher (`open_watch`).
    pub fn open_watch_status(&self) -> OpenWatchStatus {
        match &self.machine.opens {
            Some(w) => w.status(),
            None => OpenWatchStatus {
                mechanism: "off".into(),
                reason: self.machine.opens_off.clone(),
                open_debounce_s: self.config().open_debounce_s,
                ..OpenWatchStatus::default()
            },
        }
    }
}
