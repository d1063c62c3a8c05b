//! The boundary between the engine's decisions and the hardware that carries
//! them out.
//!
//! The engine never performs I/O: it tells a [`Backend`] to start or cancel a
//! move and asks it what the hardware can take; the backend reports progress
//! and endings through [`Backend::poll`]. The simulated backend (`sim`) does
//! this in virtual time; the real backend copies, pins and measures.
//! Every method is non-blocking.

use serde_json::{Map, Value};

/// Which job a backend event is about (the engine's internal job number).
pub type JobKey = u64;

/// What the hardware says about a tier's room.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Capacity {
    /// No hardware bound (the storage tier, or an unmeasured one).
    Unbounded,
    /// The tier's total bytes; the engine subtracts the reserve, what the
    /// tier holds and what is on its way in (simulated hardware).
    Total(u64),
    /// Bytes the hardware can take now, measured; the engine subtracts the
    /// reserve and the moves on their way in that are not resident yet.
    Free(u64),
    /// The tier cannot take models at all, with the reason.
    Unavailable,
}

/// One move for the backend to carry out.
#[derive(Debug, Clone)]
pub struct MoveOrder {
    pub job: JobKey,
    pub model: std::sync::Arc<str>,
    pub bytes: u64,
    pub from: usize,
    pub to: usize,
    /// Expected duration in engine seconds (the simulated backend's duration).
    pub expected_s: f64,
    /// Optional rate cap for this move, MB/s.
    pub bandwidth_mb_s: Option<f64>,
}

/// What a backend reports back.
#[derive(Debug, Clone, PartialEq)]
pub enum MoveEvent {
    /// The move completed: the model is durably in the target tier.
    Finished { job: JobKey },
    /// The move failed and was rolled back; the model is still in its source.
    Failed { job: JobKey, message: String, retryable: bool },
    /// A cancel took effect and the move was rolled back.
    Cancelled { job: JobKey },
    /// A model's files changed under the backend (vanished, reappeared).
    ModelUnavailable { model: String, reason: String },
}

/// Hardware that carries out the engine's moves.
pub trait Backend: Send {
    /// Short name for `health` (`sim`, `real`).
    fn name(&self) -> &'static str;
    /// What the hardware says about tier `tier`'s room.
    fn capacity(&self, tier: usize) -> Capacity;
    /// Whether tier `tier` can take models at all; an `Err` carries why not
    /// (the engine refuses such moves with `INVALID_REQUEST`).
    fn accepts_moves_into(&self, _tier: usize) -> Result<(), String> {
        Ok(())
    }
    /// Starts a move; an `Err` means it could not even start.
    fn start_move(&mut self, now: f64, order: &MoveOrder) -> Result<(), String>;
    /// Asks for a running move to stop and roll back; confirmed by a
    /// `Cancelled` (or, if it was too late, `Finished`) event.
    fn cancel_move(&mut self, now: f64, job: JobKey);
    /// Progress of a running move, 0..=1.
    fn progress(&self, now: f64, job: JobKey) -> f64;
    /// Appends the events since the last poll to `events`, in the order
    /// they happened (the caller reuses one buffer).
    fn poll(&mut self, now: f64, events: &mut Vec<MoveEvent>);
    /// The earliest time at which `poll` will have something new (virtual
    /// time drivers jump to it); `None` when nothing is pending or unknown.
    fn next_event_time(&self) -> Option<f64>;
    /// Extra, backend-specific facts about a tier for `tier_status`.
    fn tier_details(&self, _tier: usize) -> Map<String, Value> {
        Map::new()
    }
    /// Measured fraction of a model's bytes resident in its tier, where the
    /// backend can measure it.
    fn resident_fraction(&self, _model: &str, _tier: usize) -> Option<f64> {
        None
    }
    /// Whether a newly registered model can be placed in a fast tier at
    /// once (simulated hardware) or must be moved there by a job (real).
    fn places_instantly(&self) -> bool {
        true
    }
    /// Checks a model being registered and measures its size: `path` is
    /// where its weights are (real backend), `size` the size the request
    /// gave. Returns the size in bytes.
    fn register_model(&mut self, _name: &str, path: Option<&std::path::Path>, size: Option<u64>) -> Result<u64, String> {
        match (path, size) {
            (_, Some(size)) => Ok(size),
            (_, None) => Err("size_gb is required with the simulated backend".to_string()),
        }
    }
    /// Forgets a model: drops any copies tierd made (never the origin).
    fn unregister_model(&mut self, _name: &str, _tier: usize) {}
    /// Simulated load on the machine outside tierd (for pressure tests);
    /// real backends ignore it.
    fn set_external_use(&mut self, _tier: usize, _bytes: u64) {}
}
