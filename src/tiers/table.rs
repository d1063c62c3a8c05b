//! The engine's two hot containers, both keyed by the sequential job keys:
//! the job records ([`JobTable`]) and the queue of jobs ready to start
//! ([`ReadyQueue`]).
//!
//! Every move of a replay passes through both several times (submit, start,
//! end, history), so they are built for the common pattern: keys arrive in
//! increasing order and leave roughly in the order they came. A general map
//! or B-tree pays for hashing, probing, node splits and allocations the
//! pattern does not need.

use std::collections::{HashMap, VecDeque};

use super::job::{Job, JobKey, Priority};

/// Job keys are sequential numbers: hashing them with SipHash is wasted work,
/// so the overflow map hashes them by multiplication.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map from job keys, hashed by [`KeyHasher`].
pub(crate) type KeyMap<V> = HashMap<JobKey, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// Slack of the ring over twice its live jobs before old jobs are moved out.
const RING_SLACK: usize = 64;

/// Job records by key. Recent keys live in a ring indexed by `key - base`
/// (a lookup is an index, an insert is a push, no allocation per job); a
/// job that stays while many younger ones come and go (a long move, a long
/// wait) is moved to an overflow map, so the ring never holds more than
/// about twice the live jobs plus a constant, whatever the key spread.
/// Every key in the map is below `base`; every key from `base` on is in the ring.
#[derive(Default)]
pub(crate) struct JobTable {
    ring: VecDeque<Option<Job>>,
    /// The key of `ring[0]`.
    base: JobKey,
    /// Occupied slots of `ring` (not counting `reserved`).
    in_ring: usize,
    /// The empty slot last handed out by [`JobTable::slot_for`]: counted
    /// by the next change of the table if the caller filled it.
    reserved: Option<JobKey>,
    /// Slots of old keys (`None` only briefly, while a caller fills one).
    old: KeyMap<Option<Job>>,
}

impl JobTable {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.values().count()
    }

    /// The ring index of `key`, if the ring covers it (else: in the map, or absent).
    fn slot(&self, key: JobKey) -> Option<usize> {
        usize::try_from(key.checked_sub(self.base)?).ok()
    }

    pub fn get(&self, key: &JobKey) -> Option<&Job> {
        match self.slot(*key) {
            Some(i) => self.ring.get(i)?.as_ref(),
            None => self.old.get(key)?.as_ref(),
        }
    }

    pub fn get_mut(&mut self, key: &JobKey) -> Option<&mut Job> {
        match self.slot(*key) {
            Some(i) => self.ring.get_mut(i)?.as_mut(),
            None => self.old.get_mut(key)?.as_mut(),
        }
    }

    /// Stores `job` under `key`, replacing any job there.
    #[cfg(test)]
    pub fn insert(&mut self, key: JobKey, job: Job) {
        *self.slot_for(key) = Some(job);
        self.settle();
    }

    /// The slot of `key`, to be filled by the caller (a job record is a few
    /// hundred bytes: written where it is kept, not passed down by value).
    /// A slot left empty is no job.
    pub fn slot_for(&mut self, key: JobKey) -> &mut Option<Job> {
        self.settle();
        self.compact();
        let Some(mut i) = self.slot(key) else {
            let slot = self.old.entry(key).or_insert(None);
            if slot.is_none() {
                self.reserved = Some(key);
            }
            return slot;
        };
        // An empty ring starts at `key`; so does one that `key` is far past
        // (not the engine's pattern: its keys come one after another), its
        // jobs, all older, going to the map.
        if self.ring.is_empty() || i > self.ring.len() + 2 * self.in_ring + RING_SLACK {
            for (n, slot) in self.ring.drain(..).enumerate() {
                if slot.is_some() {
                    self.old.insert(self.base + n as JobKey, slot);
                }
            }
            self.in_ring = 0;
            self.base = key;
            i = 0;
        }
        if self.ring.len() <= i {
            self.ring.resize_with(i + 1, || None);
        }
        if self.ring[i].is_none() {
            self.reserved = Some(key);
        }
        &mut self.ring[i]
    }

    /// Counts the slot handed out last if it was filled; drops it if not.
    fn settle(&mut self) {
        let Some(key) = self.reserved.take() else { return };
        match self.slot(key) {
            Some(i) => {
                if self.ring.get(i).is_some_and(Option::is_some) {
                    self.in_ring += 1;
                } else {
                    self.trim();
                }
            }
            None => {
                if self.old.get(&key).is_some_and(Option::is_none) {
                    self.old.remove(&key);
                }
            }
        }
    }

    /// Drops the job under `key` where it lies and returns its wire id
    /// (cheaper than [`JobTable::remove`], which moves the record out).
    pub fn discard(&mut self, key: &JobKey) -> Option<String> {
        self.settle();
        match self.slot(*key) {
            Some(i) => {
                let slot = self.ring.get_mut(i)?;
                let id = std::mem::take(&mut slot.as_mut()?.id);
                *slot = None;
                self.in_ring -= 1;
                self.trim();
                self.compact();
                Some(id)
            }
            None => self.old.remove(key).flatten().map(|j| j.id),
        }
    }

    pub fn remove(&mut self, key: &JobKey) -> Option<Job> {
        self.settle();
        match self.slot(*key) {
            Some(i) => {
                let job = self.ring.get_mut(i)?.take()?;
                self.in_ring -= 1;
                self.trim();
                self.compact();
                Some(job)
            }
            None => self.old.remove(key).flatten(),
        }
    }

    /// Drops the empty slots at the front.
    fn trim(&mut self) {
        let empty = self.ring.iter().take_while(|s| s.is_none()).count();
        if empty > 0 {
            self.ring.drain(..empty);
            self.base += empty as JobKey;
        }
    }

    /// Moves the oldest jobs to the map while the ring is mostly empty slots.
    fn compact(&mut self) {
        while self.ring.len() > 2 * self.in_ring + RING_SLACK {
            let key = self.base;
            self.base += 1;
            if let Some(slot) = self.ring.pop_front()
                && slot.is_some()
            {
                self.in_ring -= 1;
                self.old.insert(key, slot);
            }
            self.trim();
        }
    }

    /// Every job, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Job> {
        self.ring.iter().flatten().chain(self.old.values().flatten())
    }

    /// Every job's key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = JobKey> + '_ {
        self.values().map(|j| j.key)
    }
}

/// The queued jobs that may start, in start order: priority, then key (FIFO
/// within a priority). One sorted deque per priority: a new job is pushed
/// at the back of its priority's deque, the scheduler takes from the front;
/// a job that becomes ready late (dependencies, retry delay) is put in place
/// by binary search.
#[derive(Debug, Default)]
pub(crate) struct ReadyQueue {
    by_priority: [VecDeque<JobKey>; 4],
}

const PRIORITIES: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Normal, Priority::Low];

impl ReadyQueue {
    /// Adds a job; false if it was there already.
    pub fn insert(&mut self, (priority, key): (Priority, JobKey)) -> bool {
        let q = &mut self.by_priority[priority as usize];
        if q.back().is_none_or(|&last| last < key) {
            q.push_back(key);
            return true;
        }
        match q.binary_search(&key) {
            Ok(_) => false,
            Err(i) => {
                q.insert(i, key);
                true
            }
        }
    }

    /// Removes a job; false if it was not there.
    pub fn remove(&mut self, (priority, key): &(Priority, JobKey)) -> bool {
        let q = &mut self.by_priority[*priority as usize];
        if q.front() == Some(key) {
            q.pop_front();
            return true;
        }
        match q.binary_search(key) {
            Ok(i) => {
                q.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains(&self, (priority, key): &(Priority, JobKey)) -> bool {
        self.by_priority[*priority as usize].binary_search(key).is_ok()
    }

    /// The first job in start order.
    pub fn first(&self) -> Option<(Priority, JobKey)> {
        self.first_at_or_after(0)
    }

    /// The first job after `cursor` in start order (`cursor` need not be queued).
    pub fn after(&self, (priority, key): (Priority, JobKey)) -> Option<(Priority, JobKey)> {
        let q = &self.by_priority[priority as usize];
        let i = q.partition_point(|&k| k <= key);
        match q.get(i) {
            Some(&k) => Some((priority, k)),
            None => self.first_at_or_after(priority as usize + 1),
        }
    }

    fn first_at_or_after(&self, p: usize) -> Option<(Priority, JobKey)> {
        (p..PRIORITIES.len()).find_map(|i| self.by_priority[i].front().map(|&k| (PRIORITIES[i], k)))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_priority.iter().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::tiers::job::{JobStatus, Operation, Origin};

    fn job(key: JobKey) -> Job {
        Job {
            key,
            id: format!("j{key}"),
            model: 0,
            model_name: "m".into(),
            bytes: 1,
            from: 1,
            to: 0,
            operation: Operation::Promote,
            priority: Priority::Normal,
            origin: Origin::User,
            depends_on: Default::default(),
            claimed_releases: Default::default(),
            unclaimed_bytes: 1,
            unclaimed_models: 1,
            max_retries: 0,
            attempt: 0,
            status: JobStatus::Queued,
            created_at: 0.0,
            started_at: None,
            ended_at: None,
            not_before: 0.0,
            progress: 0.0,
            estimated_s: 0.0,
            error: None,
            attempts: Default::default(),
            cancel_requested: false,
            moving_out: None,
            cancel_at_shutdown: false,
            bandwidth_mb_s: None,
            reason: None,
            unmet_deps: 0,
            dependents: Default::default(),
            exchange: false,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Insert a key past the last one: the next (the engine's pattern)
        /// or a little further; `skip` 200 jumps far past the ring.
        Insert {
            skip: u8,
        },
        /// Take a slot and leave it empty.
        Reserve,
        Remove(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                3 => prop_oneof![9 => 0u8..3, 1 => Just(200u8)].prop_map(|skip| Op::Insert { skip }),
                3 => any::<usize>().prop_map(Op::Remove),
                1 => Just(Op::Reserve),
            ],
            0..600,
        )
    }

    proptest! {
        /// The table answers like a map whatever the order of removals:
        /// the ring, its trimming and the overflow map lose nothing.
        #[test]
        fn job_table_behaves_like_a_map(ops in ops()) {
            let mut table = JobTable::default();
            let mut model: BTreeMap<JobKey, ()> = BTreeMap::new();
            let mut next: JobKey = 1;
            for op in ops {
                match op {
                    Op::Insert { skip } => {
                        next += u64::from(skip);
                        table.insert(next, job(next));
                        model.insert(next, ());
                        next += 1;
                    }
                    Op::Reserve => {
                        prop_assert!(table.slot_for(next).is_none());
                        next += 1;
                    }
                    Op::Remove(i) => {
                        let keys: Vec<JobKey> = model.keys().copied().collect();
                        if keys.is_empty() {
                            prop_assert!(table.remove(&next).is_none());
                            continue;
                        }
                        let k = keys[i % keys.len()];
                        if i % 2 == 0 {
                            prop_assert_eq!(table.remove(&k).map(|j| j.key), Some(k));
                        } else {
                            prop_assert_eq!(table.discard(&k), Some(format!("j{k}")));
                        }
                        model.remove(&k);
                        prop_assert!(table.get(&k).is_none());
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert!(table.ring.len() <= 2 * table.in_ring + RING_SLACK + 1);
            }
            for k in 0..next + 2 {
                prop_assert_eq!(table.get(&k).map(|j| j.key), model.contains_key(&k).then_some(k));
            }
            let mut keys: Vec<JobKey> = table.keys().collect();
            keys.sort_unstable();
            prop_assert_eq!(keys, model.keys().copied().collect::<Vec<_>>());
        }

        /// The ready queue iterates exactly like the B-tree set of
        /// (priority, key) it replaces.
        #[test]
        fn ready_queue_orders_like_a_btree_set(ops in prop::collection::vec((0usize..4, 0u64..200, any::<bool>()), 0..400)) {
            let mut q = ReadyQueue::default();
            let mut model: BTreeSet<(Priority, JobKey)> = BTreeSet::new();
            for (p, k, add) in ops {
                let e = (PRIORITIES[p], k);
                if add {
                    prop_assert_eq!(q.insert(e), model.insert(e));
                } else {
                    prop_assert_eq!(q.remove(&e), model.remove(&e));
                }
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.first(), model.first().copied());
                for c in [(PRIORITIES[p], k), (PRIORITIES[3 - p], k / 2)] {
                    let want = model.range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded)).next().copied();
                    prop_assert_eq!(q.after(c), want);
                    prop_assert_eq!(q.contains(&c), model.contains(&c));
                }
            }
        }
    }
}
