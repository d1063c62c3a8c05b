//! Faults noticed while running: what the engine makes of the watcher's
//! looks at origins and copies ([`crate::drivers::watch`]) and of a copy
//! found corrupt by a move out of it.
//!
//! The rules, for a model that is not moving (a running move finds its own
//! faults; a queued one is ended when the model has to fall back):
//! - a copy that changed (size or modification time), vanished, or whose
//!   tier directory is gone is dropped, and the model falls back to its
//!   origin in storage;
//! - a copy found corrupt by its checksums is removed the same way;
//! - an origin rewritten (size or modification time) invalidates what a
//!   tier holds of it: the model falls back to storage, the new stamps are
//!   recorded, and the next promotion copies it anew;
//! - an origin that vanished makes a model served from it (storage, RAM
//!   pins) unavailable; a model served from an intact copy keeps being
//!   served from it (its last complete copy);
//! - nothing that may be a model's last bytes is ever deleted: with the
//!   origin gone, a damaged or corrupt copy is kept and the model is
//!   unavailable;
//! - a model marked unavailable whose files are back as recorded is
//!   available again.
//!
//! Each fault is logged and recorded: the model's last one in `model_info`
//! (`fault`), the tier's recent ones in `tier_status` (`faults`).

use std::sync::Arc;

use crate::drivers::Source;
use crate::drivers::files::CORRUPT_MTIME;
use crate::drivers::watch::{CopyLook, Look, OriginLook, Stamp, WatchItem};

use super::engine::Engine;
use super::job::JobStatus;
use super::state::ModelId;
use super::views::FaultView;

/// Recent faults kept per tier for `tier_status`.
pub const FAULTS_KEPT: usize = 16;

impl Engine {
    /// Takes the watcher's last round of looks, and hands out the next
    /// round once one is due (cheap: the list of what to look at; the
    /// looks run on the watcher's thread).
    pub(crate) fn watch_files(&mut self, now: f64) {
        let Some(w) = self.machine.watch.as_mut() else { return };
        if let Some(news) = w.results() {
            for look in news {
                self.apply_look(now, look);
            }
        }
        if !self.machine.watch.as_ref().is_some_and(|w| w.due()) {
            return;
        }
        let items = self.watch_items();
        if let Some(w) = self.machine.watch.as_mut() {
            w.start(items);
        }
    }

    /// Every model with files that no running move holds, where it is
    /// served from now.
    fn watch_items(&self) -> Vec<WatchItem> {
        self.state
            .iter_models()
            .filter_map(|(_, m)| {
                let files = m.files.as_ref()?;
                if m.job.is_some_and(|k| self.running.contains(&k)) {
                    return None;
                }
                let copy = match self.machine.drivers[m.tier].source_of(&m.name) {
                    Source::Copy(dir) => Some(dir),
                    Source::Origin => None,
                };
                Some(WatchItem {
                    model: m.name.clone(),
                    tier: m.tier,
                    files: files.clone(),
                    copy,
                    unavailable: m.unavailable.is_some(),
                })
            })
            .collect()
    }

    /// Acts on one model's look (see the module docs).
    pub(crate) fn apply_look(&mut self, now: f64, look: Look) {
        let Some(id) = self.state.model_id(&look.item.model) else { return };
        let Some(m) = self.state.model(id) else { return };
        // The look is stale when the model moved or its files were
        // replaced since; it is looked at again in the next round.
        let current = m.files.as_ref().is_some_and(|f| Arc::ptr_eq(f, &look.item.files));
        if m.tier != look.item.tier || !current || m.job.is_some_and(|k| self.running.contains(&k)) {
            return;
        }
        let tier = m.tier;
        let tier_name = self.state.tiers[tier].name.clone();
        match (look.origin, look.copy) {
            (OriginLook::Gone(why), Some(copy @ (CopyLook::Intact | CopyLook::Unrecorded(_)))) => {
                // The copy is all there is: it keeps serving.
                if let CopyLook::Unrecorded(t) = copy {
                    self.record_copy_mtimes(id, &t);
                }
                self.make_available(id);
                let action = format!("served from its copy in {tier_name}, its last complete copy");
                self.note_fault(now, id, tier, "origin_gone", why, action);
            }
            (OriginLook::Gone(why), copy) => {
                let reason = match copy {
                    Some(CopyLook::Damaged(d)) => format!("{why}, and {d}"),
                    _ => why,
                };
                self.make_unavailable(now, id, tier, "origin_gone", reason);
            }
            (OriginLook::Changed { stamps, reason }, _) => {
                self.end_queued_move(now, id, &reason);
                let dropped = self.fall_back(now, id, &reason);
                if let Err(why) = self.adopt_origin(id, &stamps) {
                    self.make_unavailable(now, id, tier, "origin_changed", format!("{reason}: {why}"));
                    return;
                }
                self.make_available(id);
                let action = if dropped {
                    format!("what {tier_name} held of it was dropped; served from storage, copied anew on the next promotion")
                } else {
                    "its new size and modification time are recorded".to_string()
                };
                self.note_fault(now, id, tier, "origin_changed", reason, action);
            }
            (origin, Some(CopyLook::Damaged(why))) => {
                if let OriginLook::Unrecorded(s) = origin
                    && let Err(why) = self.adopt_origin(id, &s)
                {
                    tracing::warn!(model = id, error = %why, "cannot record the origin's size");
                }
                self.end_queued_move(now, id, &why);
                self.fall_back(now, id, &why);
                self.make_available(id);
                let action = format!("the copy in {tier_name} was dropped; served from storage");
                self.note_fault(now, id, tier, "copy_changed", why, action);
            }
            (origin, copy) => {
                if let OriginLook::Unrecorded(s) = origin
                    && let Err(why) = self.adopt_origin(id, &s)
                {
                    tracing::warn!(model = id, error = %why, "cannot record the origin's size");
                }
                if let Some(CopyLook::Unrecorded(t)) = copy {
                    self.record_copy_mtimes(id, &t);
                }
                if self.state.model(id).is_some_and(|m| m.unavailable.is_some()) && !self.source_missing.contains_key(&id) {
                    // What a tier held of a vanished origin other than a copy
                    // (pages pinned in RAM) is of the old file, or nothing.
                    if !self.machine.drivers[tier].source_of(&look.item.model).is_copy() {
                        let why = format!("its files are back, and what {tier_name} held of them was of the vanished files");
                        self.fall_back(now, id, &why);
                    }
                    self.make_available(id);
                    let reason = "its files are back as recorded".to_string();
                    self.note_fault(now, id, tier, "available_again", reason, "available again".to_string());
                }
            }
        }
    }

    /// A move out of the model's copy in `tier` found that copy corrupt:
    /// it is removed and the model falls back to storage, unless the
    /// origin is damaged too (then the copy may hold the last bytes there
    /// are: it is kept, marked so it never matches again, and the model is
    /// unavailable).
    pub(crate) fn copy_corrupt(&mut self, now: f64, model: &str, tier: usize, reason: String, origin_problem: Option<String>) {
        let Some(id) = self.state.model_id(model) else { return };
        let Some(m) = self.state.model(id) else { return };
        if m.tier != tier || m.job.is_some_and(|k| self.running.contains(&k)) {
            return;
        }
        let tier_name = self.state.tiers[tier].name.clone();
        match origin_problem {
            Some(problem) => {
                if let Some(files) = self.state.model_mut(id).and_then(|m| m.files.as_mut()) {
                    for f in &mut Arc::make_mut(files).files {
                        f.copy_mtime_ns = Some(CORRUPT_MTIME);
                    }
                }
                let reason = format!("the copy in {tier_name} is corrupt ({reason}) and {problem}; the copy is kept");
                self.make_unavailable(now, id, tier, "copy_corrupt", reason);
            }
            None => {
                self.end_queued_move(now, id, &reason);
                self.fall_back(now, id, &reason);
                let action = format!("the copy in {tier_name} was removed; served from storage");
                self.note_fault(now, id, tier, "copy_corrupt", reason, action);
            }
        }
    }

    /// Moves the model back to the last tier (its origin) at once, and
    /// lets its tier drop what it held (not waiting for a durable state:
    /// what is dropped is not a good copy, and a restart finds it gone).
    /// Returns whether it was anywhere else. `why` goes with the
    /// `model_fallback` event.
    fn fall_back(&mut self, now: f64, id: ModelId, why: &str) -> bool {
        let last = self.state.last_tier();
        let Some(m) = self.state.model_mut(id) else { return false };
        let from = m.tier;
        if from == last {
            return false;
        }
        m.tier = last;
        let (bytes, name, files) = (m.bytes, m.name.clone(), m.files.clone());
        let tiers = &mut self.state.tiers;
        tiers[from].used -= bytes;
        tiers[from].models -= 1;
        tiers[last].used += bytes;
        tiers[last].models += 1;
        self.state.detach(id, from);
        self.state.attach(id, last);
        self.link_serve_path(id);
        self.machine.drivers[from].release(&name, files.as_deref());
        self.refresh_next_event(from);
        self.epoch += 1;
        self.dirty = true;
        self.emit_fallback(now, &name, from, last, why);
        true
    }

    /// A queued move of the model cannot start from where it was: ended.
    fn end_queued_move(&mut self, now: f64, id: ModelId, why: &str) {
        let Some(key) = self.state.model(id).and_then(|m| m.job) else {
            return;
        };
        if self.jobs.get(&key).is_some_and(|j| j.status == JobStatus::Queued) {
            let message = format!("{why}; the move did not start");
            self.end_job(now, key, JobStatus::Failed, Some(("TASK_FAILED".into(), message)));
        }
    }

    /// Records the origin's new stamps: sizes (the model's bytes, in the
    /// books of its tier), modification times; its checksums and copy
    /// times are of the old files and go.
    /// Refused, changing nothing, when the books cannot count the new size.
    fn adopt_origin(&mut self, id: ModelId, stamps: &[Stamp]) -> Result<(), String> {
        let recorded = self.state.model(id).and_then(|m| m.files.as_ref()).map(|f| f.files.len());
        if recorded != Some(stamps.len()) {
            return Ok(());
        }
        let new: u64 = stamps.iter().fold(0u64, |sum, s| sum.saturating_add(s.size));
        if let Err(full) = self.state.resize_model(id, new) {
            return Err(full.to_string());
        }
        let Some(m) = self.state.model_mut(id) else { return Ok(()) };
        let Some(files) = m.files.as_mut() else { return Ok(()) };
        let files = Arc::make_mut(files);
        let rewritten = files
            .files
            .iter()
            .zip(stamps)
            .any(|(f, s)| f.size != s.size || f.mtime_ns.is_some_and(|t| t != s.mtime_ns));
        for (f, s) in files.files.iter_mut().zip(stamps) {
            if rewritten {
                f.blake3 = None;
                f.copy_mtime_ns = None;
            }
            f.size = s.size;
            f.mtime_ns = Some(s.mtime_ns);
        }
        files.bytes = new;
        Ok(())
    }

    /// Records the modification times of the model's copy (a copy of an
    /// older state file, found as it should be).
    fn record_copy_mtimes(&mut self, id: ModelId, mtimes: &[i64]) {
        let Some(files) = self.state.model_mut(id).and_then(|m| m.files.as_mut()) else {
            return;
        };
        let files = Arc::make_mut(files);
        for (f, t) in files.files.iter_mut().zip(mtimes) {
            f.copy_mtime_ns = Some(*t);
        }
    }

    /// The model sources' last scan, for `discover` and `model_info`.
    pub fn discovery(&self) -> Option<&Arc<crate::sources::Discovery>> {
        self.discovery.as_ref()
    }

    /// Records the model sources' latest scan.
    pub fn set_discovery(&mut self, discovery: crate::sources::Discovery) {
        self.discovery = Some(Arc::new(discovery));
    }

    /// Whether the model is marked gone from its source.
    pub fn is_source_missing(&self, name: &str) -> bool {
        self.state.model_id(name).is_some_and(|id| self.source_missing.contains_key(&id))
    }

    /// A model source no longer finds the model: it becomes unavailable
    /// (nothing is deleted; a queued move of it ends) and stays so until
    /// [`Engine::source_found`].
    pub fn source_missing(&mut self, now: f64, name: &str, reason: String) {
        let Some(id) = self.state.model_id(name) else { return };
        if self.source_missing.contains_key(&id) {
            return;
        }
        let tier = self.state.model(id).map(|m| m.tier).unwrap_or(0);
        self.source_missing.insert(id, reason.clone());
        self.make_unavailable(now, id, tier, "source_gone", reason);
        self.dirty = true;
    }

    /// A model source finds the model (again): marked gone, it is available
    /// again if its files are as recorded (else the watcher's view stands).
    pub fn source_found(&mut self, now: f64, name: &str) {
        let Some(id) = self.state.model_id(name) else { return };
        if self.source_missing.remove(&id).is_none() {
            return;
        }
        let Some(m) = self.state.model(id) else { return };
        let (tier, problem) = (m.tier, m.files.as_ref().and_then(|f| f.origin_problem()));
        match problem {
            None => {
                self.make_available(id);
                let reason = "its source finds it again".to_string();
                self.note_fault(now, id, tier, "available_again", reason, "available again".to_string());
            }
            Some(p) => {
                if let Some(m) = self.state.model_mut(id) {
                    m.unavailable = Some(p);
                }
            }
        }
    }

    /// A model source finds the model under its name with other files (a
    /// newer `ollama pull`, a new snapshot of the ref): what tiers hold of
    /// the old files is dropped, the model falls back to storage and is
    /// served from the new files (its usage kept). Not while a move of it
    /// runs (`Ok(false)`: the next scan tries again); refused, changing
    /// nothing but the fall-back, when the new files are another model's or
    /// the books cannot count them.
    pub fn source_replaced(&mut self, now: f64, name: &str, files: crate::drivers::ModelFiles) -> Result<bool, String> {
        let Some(id) = self.state.model_id(name) else { return Ok(false) };
        let Some(m) = self.state.model(id) else { return Ok(false) };
        if m.job.is_some_and(|k| self.running.contains(&k)) {
            return Ok(false);
        }
        let tier = m.tier;
        let old = m.path.clone();
        self.check_shared_files(name, &files).map_err(|e| e.to_string())?;
        let reason = format!(
            "its source has new files ({}, was {})",
            files.origin.display(),
            old.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
        );
        self.end_queued_move(now, id, &reason);
        self.fall_back(now, id, &reason);
        self.state.resize_model(id, files.bytes).map_err(|f| f.to_string())?;
        if let Some(m) = self.state.model_mut(id) {
            m.path = Some(files.origin.clone());
            m.files = Some(Arc::new(files));
        }
        self.source_missing.remove(&id);
        self.make_available(id);
        self.epoch += 1;
        self.dirty = true;
        self.note_fault(
            now,
            id,
            tier,
            "source_changed",
            reason,
            "served from its new files in storage".into(),
        );
        Ok(true)
    }

    fn make_available(&mut self, id: ModelId) {
        if self.source_missing.contains_key(&id) {
            return;
        }
        if let Some(m) = self.state.model_mut(id)
            && m.unavailable.take().is_some()
        {
            tracing::info!(model = %m.name, "model available again");
            self.dirty = true;
        }
    }

    /// Marks the model unavailable (once: the first cause stays), nothing deleted.
    fn make_unavailable(&mut self, now: f64, id: ModelId, tier: usize, kind: &'static str, reason: String) {
        let Some(m) = self.state.model_mut(id) else { return };
        if m.unavailable.is_some() {
            return;
        }
        m.unavailable = Some(reason.clone());
        let name = m.name.clone();
        self.emit_unavailable(now, &name, tier, &reason);
        self.end_queued_move(now, id, &reason);
        self.note_fault(now, id, tier, kind, reason, "unavailable".to_string());
    }

    /// Logs a fault and records it for the model and its tier (a fault
    /// seen again, round after round, is recorded once).
    fn note_fault(&mut self, now: f64, id: ModelId, tier: usize, kind: &'static str, reason: String, action: String) {
        if self.model_faults.get(&id).is_some_and(|f| f.kind == kind && f.reason == reason) {
            return;
        }
        let Some(m) = self.state.model(id) else { return };
        let tier_name = self.state.tiers[tier].name.clone();
        if kind == "available_again" {
            tracing::info!(model = %m.name, tier = %tier_name, %reason, "model available again");
        } else {
            tracing::warn!(model = %m.name, tier = %tier_name, kind, %reason, %action, "fault noticed while running");
        }
        let fault = FaultView {
            at: now,
            model_name: m.name.to_string(),
            tier: tier_name,
            kind: kind.into(),
            reason,
            action,
        };
        if let Some(log) = self.fault_log.get_mut(tier) {
            if log.len() >= FAULTS_KEPT {
                log.pop_front();
            }
            log.push_back(fault.clone());
        }
        self.model_faults.insert(id, fault);
    }
}
