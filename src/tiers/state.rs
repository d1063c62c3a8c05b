//! The placement state: tiers with their byte accounting, and models with
//! their usage. Policies read it through [`State`]; only the engine changes it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, PressureConfig, UsageConfig, bytes_to_gb, gb_to_bytes};
use crate::drivers::ModelFiles;

use super::job::JobKey;

/// Index of a model in [`State::models`]; stable for the model's lifetime.
pub type ModelId = usize;

/// One tier and its byte accounting.
#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    /// Byte budget for models; `None` = unbounded (the last tier).
    pub limit: Option<u64>,
    /// Memory kept for the rest of the system.
    pub reserved: u64,
    /// Whether this tier has a reserve setting at all (reported by `update_limits`).
    pub has_reserved: bool,
    pub min_limit: Option<u64>,
    pub min_reserved: Option<u64>,
    pub access_s_per_gb: f64,
    pub max_models: Option<usize>,
    /// Bytes of the models whose current tier is this one.
    pub used: u64,
    /// Number of those models.
    pub models: usize,
    /// Bytes reserved by queued and running moves into this tier.
    pub incoming: u64,
    /// Part of `incoming` whose moves are running (their copies take room now).
    pub incoming_running: u64,
    /// Models on their way in (queued or running).
    pub incoming_models: usize,
    /// Bytes of pending moves out of this tier that moves into it already
    /// count on (each freed byte is counted once).
    pub claimed_out: u64,
    pub claimed_out_models: usize,
    /// RAM the engine tiers above hold outside these books (their pins,
    /// engines' CPU copies: `ram_held.rs`), counted against the limit.
    pub engine_held: u64,
    /// The models behind `engine_held` and their bytes (a move of one of
    /// them into this tier does not count its own pages twice).
    pub engine_held_by: Vec<(ModelId, u64)>,
    /// Memory-pressure floor: demote when the hardware has less free.
    pub min_free: Option<u64>,
    /// Why the tier's driver refuses moves into it (`None`: it takes them).
    /// No policy proposes a move into such a tier.
    pub refuses: Option<String>,
}

impl Tier {
    /// Committed bytes: what the tier holds plus what is reserved to come
    /// in, less what is leaving to make that room.
    pub fn committed(&self) -> u64 {
        (self.used + self.engine_held + self.incoming).saturating_sub(self.claimed_out)
    }

    /// Committed model count, likewise.
    pub fn committed_models(&self) -> usize {
        (self.models + self.incoming_models).saturating_sub(self.claimed_out_models)
    }

    /// used / limit; 0 for an unbounded tier.
    pub fn utilization(&self) -> f64 {
        match self.limit {
            Some(0) if self.used + self.engine_held > 0 => f64::INFINITY,
            Some(l) => (self.used + self.engine_held) as f64 / l as f64,
            None => 0.0,
        }
    }

    /// Pressure level from utilization (seed 000: keep RAM under 90%).
    pub fn pressure(&self, p: &PressureConfig) -> &'static str {
        let u = self.utilization();
        if self.limit.is_none() {
            "low"
        } else if u >= p.critical {
            "critical"
        } else if u >= p.high {
            "high"
        } else if u >= p.medium {
            "medium"
        } else {
            "low"
        }
    }

    /// Seconds to load `bytes` from this tier.
    pub fn load_seconds(&self, bytes: u64) -> f64 {
        bytes_to_gb(bytes) * self.access_s_per_gb
    }
}

/// What the engine knows of how a model is used. All of it is saved in the
/// state file ([`crate::store::ModelUsage`]) and restored at start; times
/// are the engine clock's (Unix seconds on a server), so the decay goes on
/// over a downtime.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Accesses since registration (plus the configured starting count).
    pub count: u64,
    /// Time of the last access.
    pub last_access: Option<f64>,
    /// Place of the last access in the engine's sequence of accesses (1 for
    /// the first access the engine saw, 0 for none): orders two accesses
    /// made at the same time.
    pub last_seq: u64,
    /// Time of the first access.
    pub first_access: Option<f64>,
    /// Exponentially decayed access count, as of `decayed_at`.
    pub decayed: f64,
    pub decayed_at: f64,
    /// Running mean and M2 (Welford) of inter-arrival gaps, seconds.
    pub gap_mean: f64,
    pub gap_m2: f64,
    pub gaps: u64,
    /// Accesses per hour of day and day of week (UTC, from the engine clock).
    pub by_hour: [u32; 24],
    pub by_weekday: [u32; 7],
}

impl Usage {
    /// Records one access at `now`, the `seq`-th the engine saw.
    pub fn record(&mut self, now: f64, seq: u64, cfg: &UsageConfig) {
        self.last_seq = seq;
        self.decayed = self.frequency(now, cfg) + 1.0;
        self.decayed_at = now;
        if let Some(last) = self.last_access {
            let gap = (now - last).max(0.0);
            self.gaps += 1;
            let delta = gap - self.gap_mean;
            self.gap_mean += delta / self.gaps as f64;
            self.gap_m2 += delta * (gap - self.gap_mean);
        }
        self.count += 1;
        self.last_access = Some(now);
        if self.first_access.is_none() {
            self.first_access = Some(now);
        }
        let secs = now.max(0.0) as u64;
        self.by_hour[((secs / 3600) % 24) as usize] += 1;
        // 1970-01-01 was a Thursday; index 0 = Monday.
        self.by_weekday[((secs / 86_400 + 3) % 7) as usize] += 1;
    }

    /// Decayed access frequency as of `now`.
    pub fn frequency(&self, now: f64, cfg: &UsageConfig) -> f64 {
        if self.decayed == 0.0 {
            return 0.0;
        }
        let dt = (now - self.decayed_at).max(0.0);
        self.decayed * 0.5f64.powf(dt / cfg.half_life_s)
    }

    /// `hot`, `warm` or `cold` by decayed frequency.
    pub fn class(&self, now: f64, cfg: &UsageConfig) -> &'static str {
        let f = self.frequency(now, cfg);
        if f >= cfg.hot_threshold {
            "hot"
        } else if f >= cfg.warm_threshold {
            "warm"
        } else {
            "cold"
        }
    }

    /// Standard deviation of inter-arrival gaps.
    pub fn gap_stddev(&self) -> f64 {
        if self.gaps < 2 {
            0.0
        } else {
            (self.gap_m2 / (self.gaps - 1) as f64).sqrt()
        }
    }
}

/// One registered model.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: std::sync::Arc<str>,
    pub bytes: u64,
    /// Tier holding the model's complete copy that loads are served from.
    pub tier: usize,
    pub usage: Usage,
    /// A pinned model is never moved by a policy (up or down), make_room or
    /// a limit; only `move_tier` moves it.
    pub pinned: bool,
    /// The model's pending (queued or running) move, if any.
    pub job: Option<JobKey>,
    /// Set when the driver lost the model's files.
    pub unavailable: Option<String>,
    /// Origin file or directory, as registered.
    pub path: Option<PathBuf>,
    /// The model's files (real hardware): what moves read and write.
    pub files: Option<Arc<ModelFiles>>,
    pub registered_at: f64,
}

/// Tiers and models: what policies may read.
#[derive(Debug, Clone)]
pub struct State {
    pub tiers: Vec<Tier>,
    /// Models by id; `None` where a model was unregistered.
    pub models: Vec<Option<Model>>,
    pub by_name: HashMap<String, ModelId>,
    pub max_single_model: u64,
    pub usage_cfg: UsageConfig,
    pub pressure_cfg: PressureConfig,
    /// Ids of the models of each tier, in no particular order: policies
    /// look at one tier's models without scanning the whole catalog.
    /// Kept by [`State::attach`] and [`State::detach`].
    pub members: Vec<Vec<ModelId>>,
    /// Position of each model in its tier's `members` list, by id.
    slots: Vec<usize>,
    /// Bytes of every model in the catalog: at most [`MAX_CATALOG_BYTES`].
    catalog_bytes: u64,
}

/// Most bytes the catalog may hold in all: a quarter of `u64`. Every sum
/// the books form is bounded by it (a tier's `used` and `incoming` are each
/// at most the catalog, a reserve or limit at most `config::MAX_GB`), so
/// with this bound checked where bytes enter the books (a model added) no
/// sum of theirs can wrap. A model that would pass it is refused.
pub const MAX_CATALOG_BYTES: u64 = u64::MAX / 4;

/// Why a model's bytes cannot enter the books: the catalog would hold more
/// than [`MAX_CATALOG_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BooksFull {
    pub catalog_bytes: u64,
    pub bytes: u64,
}

impl From<BooksFull> for crate::error::EngineError {
    fn from(b: BooksFull) -> Self {
        let mut details = serde_json::Map::new();
        details.insert("catalog_gb".into(), bytes_to_gb(b.catalog_bytes).into());
        details.insert("size_gb".into(), bytes_to_gb(b.bytes).into());
        details.insert("max_catalog_gb".into(), bytes_to_gb(MAX_CATALOG_BYTES).into());
        crate::error::EngineError::BadRequest {
            message: b.to_string(),
            details,
        }
    }
}

impl std::fmt::Display for BooksFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the catalog holds {} GB; {} GB more would pass the most tierd's books count ({} GB in all)",
            crate::human::bytes_gb(self.catalog_bytes),
            crate::human::bytes_gb(self.bytes),
            crate::human::bytes_gb(MAX_CATALOG_BYTES)
        )
    }
}

impl State {
    /// Empty tiers as configured.
    pub fn new(cfg: &Config) -> State {
        let tiers = cfg
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| Tier {
                name: t.name.clone(),
                limit: if i + 1 == cfg.tiers.len() {
                    None
                } else {
                    t.max_gb.map(gb_to_bytes)
                },
                reserved: t.reserved_gb.map(gb_to_bytes).unwrap_or(0),
                has_reserved: t.reserved_gb.is_some(),
                min_limit: t.min_max_gb.map(gb_to_bytes),
                min_reserved: t.min_reserved_gb.map(gb_to_bytes),
                access_s_per_gb: t.access_s_per_gb,
                max_models: t.max_models,
                used: 0,
                models: 0,
                incoming: 0,
                incoming_running: 0,
                incoming_models: 0,
                claimed_out: 0,
                claimed_out_models: 0,
                engine_held: 0,
                engine_held_by: Vec::new(),
                min_free: t.min_free_gb.map(gb_to_bytes),
                refuses: None,
            })
            .collect();
        State {
            tiers,
            models: Vec::new(),
            by_name: HashMap::new(),
            max_single_model: gb_to_bytes(cfg.max_single_model_gb),
            usage_cfg: cfg.usage.clone(),
            pressure_cfg: cfg.pressure.clone(),
            members: vec![Vec::new(); cfg.tiers.len()],
            slots: Vec::new(),
            catalog_bytes: 0,
        }
    }

    /// Records that model `id` now lives in `tier` (after placing it).
    #[inline]
    pub fn attach(&mut self, id: ModelId, tier: usize) {
        if self.slots.len() <= id {
            self.slots.resize(id + 1, usize::MAX);
        }
        self.slots[id] = self.members[tier].len();
        self.members[tier].push(id);
    }

    /// Whether model `id` is listed among `tier`'s members.
    pub fn is_member(&self, id: ModelId, tier: usize) -> bool {
        self.slots
            .get(id)
            .is_some_and(|&slot| self.members.get(tier).and_then(|l| l.get(slot)) == Some(&id))
    }

    /// Records that model `id` left `tier` (moved away or unregistered).
    #[inline]
    pub fn detach(&mut self, id: ModelId, tier: usize) {
        let Some(&slot) = self.slots.get(id) else { return };
        let list = &mut self.members[tier];
        if list.get(slot) != Some(&id) {
            return;
        }
        list.swap_remove(slot);
        if let Some(&moved) = list.get(slot) {
            self.slots[moved] = slot;
        }
        self.slots[id] = usize::MAX;
    }

    /// Whether `bytes` more may enter the books (checked arithmetic: the
    /// catalog stays within [`MAX_CATALOG_BYTES`]).
    pub fn check_room_in_books(&self, bytes: u64) -> Result<(), BooksFull> {
        match self.catalog_bytes.checked_add(bytes) {
            Some(total) if total <= MAX_CATALOG_BYTES => Ok(()),
            _ => Err(BooksFull {
                catalog_bytes: self.catalog_bytes,
                bytes,
            }),
        }
    }

    /// Bytes of every model in the catalog.
    pub fn catalog_bytes(&self) -> u64 {
        self.catalog_bytes
    }

    /// Adds `model` to the catalog in its tier, counting its bytes there;
    /// returns its id. Refused, changing nothing, when the books could not
    /// count its bytes ([`State::check_room_in_books`]).
    pub(crate) fn add_model(&mut self, model: Model) -> Result<ModelId, BooksFull> {
        let (tier, bytes) = (model.tier, model.bytes);
        self.check_room_in_books(bytes)?;
        let full = || BooksFull {
            catalog_bytes: self.catalog_bytes,
            bytes,
        };
        let used = self.tiers[tier].used.checked_add(bytes).ok_or_else(full)?;
        let id = self.models.len();
        self.by_name.insert(model.name.to_string(), id);
        self.models.push(Some(model));
        self.attach(id, tier);
        self.catalog_bytes += bytes;
        self.tiers[tier].used = used;
        self.tiers[tier].models += 1;
        Ok(id)
    }

    /// Counts model `id` at `bytes` instead of what it had (its origin was
    /// rewritten with another size). Refused, changing nothing, when the
    /// books could not count the new size.
    pub(crate) fn resize_model(&mut self, id: ModelId, bytes: u64) -> Result<(), BooksFull> {
        let Some(m) = self.models.get(id).and_then(|m| m.as_ref()) else {
            return Ok(());
        };
        let (old, tier) = (m.bytes, m.tier);
        let full = BooksFull {
            catalog_bytes: self.catalog_bytes,
            bytes,
        };
        let catalog = (self.catalog_bytes - old).checked_add(bytes).filter(|&c| c <= MAX_CATALOG_BYTES);
        let used = (self.tiers[tier].used - old).checked_add(bytes);
        let (Some(catalog), Some(used)) = (catalog, used) else {
            return Err(full);
        };
        self.catalog_bytes = catalog;
        self.tiers[tier].used = used;
        if let Some(m) = self.model_mut(id) {
            m.bytes = bytes;
        }
        Ok(())
    }

    /// Removes model `id` from the catalog and its tier's books.
    pub(crate) fn remove_model(&mut self, id: ModelId) -> Option<Model> {
        let m = self.models.get_mut(id)?.take()?;
        self.catalog_bytes -= m.bytes;
        self.tiers[m.tier].used -= m.bytes;
        self.tiers[m.tier].models -= 1;
        self.detach(id, m.tier);
        self.by_name.remove(&*m.name);
        Some(m)
    }

    /// Index of the last (unbounded) tier.
    pub fn last_tier(&self) -> usize {
        self.tiers.len() - 1
    }

    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }

    pub fn tier_names(&self) -> Vec<String> {
        self.tiers.iter().map(|t| t.name.clone()).collect()
    }

    pub fn model(&self, id: ModelId) -> Option<&Model> {
        self.models.get(id).and_then(|m| m.as_ref())
    }

    pub fn model_mut(&mut self, id: ModelId) -> Option<&mut Model> {
        self.models.get_mut(id).and_then(|m| m.as_mut())
    }

    pub fn model_id(&self, name: &str) -> Option<ModelId> {
        self.by_name.get(name).copied()
    }

    /// Live models with their ids.
    pub fn iter_models(&self) -> impl Iterator<Item = (ModelId, &Model)> {
        self.models.iter().enumerate().filter_map(|(i, m)| m.as_ref().map(|m| (i, m)))
    }

    /// Whether a model of `bytes` may live in tier `tier` at all.
    pub fn size_allowed(&self, bytes: u64, tier: usize) -> bool {
        tier == self.last_tier() || bytes <= self.max_single_model
    }

    /// Whether tier `tier` takes moves at all (its driver may refuse them).
    pub fn accepts_moves(&self, tier: usize) -> bool {
        self.tiers.get(tier).is_some_and(|t| t.refuses.is_none())
    }
}

/// Rounds a figure for the wire so sums of decimals print cleanly.
pub fn round6(x: f64) -> f64 {
    if x.is_finite() { (x * 1e6).round() / 1e6 } else { x }
}
