//! The engine's books checked against a recount (tests and debugging).

use std::collections::HashSet;

use super::engine::Engine;
use super::job::JobStatus;
use super::scheduler::TimeKey;

impl Engine {
    /// Checks the engine's books against a recount: each tier's bytes and
    /// model counts, the reservations of pending moves, the room claimed
    /// from moves leaving, one pending job per model, and every queued job
    /// in exactly one of the ready, waiting and delayed sets.
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.state.tiers.len();
        let mut used = vec![0u64; n];
        let mut count = vec![0usize; n];
        for (id, m) in self.state.iter_models() {
            used[m.tier] += m.bytes;
            count[m.tier] += 1;
            if !self.state.is_member(id, m.tier) {
                return Err(format!("model {} is missing from the member list of its tier", m.name));
            }
        }
        let catalog = self.state.iter_models().try_fold(0u64, |sum, (_, m)| sum.checked_add(m.bytes));
        if catalog != Some(self.state.catalog_bytes()) || self.state.catalog_bytes() > super::state::MAX_CATALOG_BYTES {
            return Err(format!(
                "catalog books {} bytes, recount {catalog:?} (at most {})",
                self.state.catalog_bytes(),
                super::state::MAX_CATALOG_BYTES
            ));
        }
        if self.state.members.iter().map(Vec::len).sum::<usize>() != self.state.by_name.len() {
            return Err("tier member lists do not match the models".into());
        }
        let mut incoming = vec![0u64; n];
        let mut incoming_running = vec![0u64; n];
        let mut busy = HashSet::new();
        let mut claimed_out = vec![0u64; n];
        for j in self.jobs.values() {
            if !j.status.is_terminal() {
                claimed_out[j.from] += j.bytes - j.unclaimed_bytes;
            }
        }
        for j in self.jobs.values() {
            if matches!(j.status, JobStatus::Queued | JobStatus::Running) {
                incoming[j.to] += j.bytes;
                if j.status == JobStatus::Running {
                    incoming_running[j.to] += j.bytes;
                }
                if !busy.insert(j.model) {
                    return Err(format!("model {} has two pending jobs", j.model_name));
                }
            }
        }
        let queued = self.jobs.values().filter(|j| j.status == JobStatus::Queued).count();
        if queued != self.queued {
            return Err(format!("{} jobs queued, the books say {}", queued, self.queued));
        }
        for j in self.jobs.values() {
            let k = (j.priority, j.key);
            let queued = j.status == JobStatus::Queued;
            let sets = self.ready.contains(&k) as u8
                + (queued && j.unmet_deps > 0) as u8
                + self.delayed.contains(&(TimeKey::new(j.not_before), j.key)) as u8;
            if !queued && sets != 0 {
                return Err(format!("job {} is {} but in a queue set", j.id, j.status.as_str()));
            }
            if queued && sets != 1 {
                return Err(format!("queued job {} is in {sets} of ready/waiting/delayed", j.id));
            }
            if (j.status == JobStatus::Running) != self.running.contains(&j.key) {
                return Err(format!("job {} running set mismatch", j.id));
            }
        }
        // The engine's copy of each driver's next event time is what the
        // driver says now (else a due event would never be polled).
        for (i, d) in self.machine.drivers.iter().enumerate() {
            if self.next_events.get(i) != Some(&d.next_event_time()) {
                return Err(format!(
                    "tier {i}: cached next event {:?}, driver says {:?}",
                    self.next_events.get(i),
                    d.next_event_time()
                ));
            }
        }
        let earliest = self.next_events.iter().copied().flatten().min_by(f64::total_cmp);
        if earliest != self.next_event {
            return Err(format!("earliest next event {:?}, recount {earliest:?}", self.next_event));
        }
        for (i, t) in self.state.tiers.iter().enumerate() {
            if t.claimed_out != claimed_out[i] {
                return Err(format!("tier {} claimed_out {} recount {}", t.name, t.claimed_out, claimed_out[i]));
            }
            if t.used != used[i] || t.models != count[i] {
                return Err(format!(
                    "tier {} books {} bytes/{} models, recount {}/{}",
                    t.name, t.used, t.models, used[i], count[i]
                ));
            }
            if t.incoming != incoming[i] || t.incoming_running != incoming_running[i] {
                return Err(format!(
                    "tier {} incoming books {}/{} recount {}/{}",
                    t.name, t.incoming, t.incoming_running, incoming[i], incoming_running[i]
                ));
            }
        }
        Ok(())
    }
}
