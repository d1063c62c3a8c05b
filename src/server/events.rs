//! Fan-out of the engine's events to the connections that watch
//! (`{"watch": ...}`). The engine collects typed events while it ticks and
//! applies requests; [`super::shared::SharedEngine::with`] takes them out
//! and, once the engine's lock is released, [`Hub::publish`]es them: each
//! watcher gets its own bounded queue, so a watcher that does not read
//! never blocks the engine or another client: its queue drops the oldest
//! progress event first (then the oldest event), and the next event it is
//! sent carries the count in `dropped`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::requests::watch::Watch;
use crate::tiers::{Category, Event};

/// Every watcher of the server.
#[derive(Debug, Default)]
pub struct Hub {
    watchers: Mutex<Vec<Arc<Watcher>>>,
}

/// One watching connection's subscription and queue.
#[derive(Debug)]
pub struct Watcher {
    /// The groups it subscribed to, by [`Category`] index.
    wants: [bool; 5],
    /// Wall time between two rounds of progress events.
    progress_every: Duration,
    /// Most events waiting.
    cap: usize,
    queue: Mutex<Queue>,
    /// Woken on each push (one stored permit: no wake-up is lost).
    ready: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Arc<Event>>,
    /// Events dropped since the last one sent.
    dropped: u64,
    dropped_total: u64,
    delivered: u64,
    /// When the last progress round was queued.
    last_progress: Option<Instant>,
}

fn slot(c: Category) -> usize {
    Category::ALL.iter().position(|x| *x == c).unwrap_or(0)
}

impl Hub {
    /// Registers a watcher for `spec`.
    pub fn add(&self, spec: &Watch) -> Arc<Watcher> {
        let mut wants = [false; 5];
        for c in &spec.events {
            wants[slot(*c)] = true;
        }
        let w = Arc::new(Watcher {
            wants,
            progress_every: Duration::from_secs_f64(spec.progress_interval_s),
            cap: spec.buffer.max(1),
            queue: Mutex::new(Queue::default()),
            ready: tokio::sync::Notify::new(),
        });
        self.lock().push(Arc::clone(&w));
        w
    }

    /// Unregisters `w`.
    pub fn remove(&self, w: &Arc<Watcher>) {
        self.lock().retain(|x| !Arc::ptr_eq(x, w));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Watcher>>> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Whether some watcher of job events is due a round of progress.
    pub fn progress_due(&self) -> bool {
        let now = Instant::now();
        self.lock().iter().any(|w| w.wants[slot(Category::Jobs)] && w.progress_due(now))
    }

    /// Queues `events` (engine events, oldest first) and `progress` (a
    /// round of progress events, for the watchers it is due to) for every
    /// watcher that subscribed to them.
    pub fn publish(&self, events: Vec<Event>, progress: Vec<Event>) {
        if events.is_empty() && progress.is_empty() {
            return;
        }
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        let progress: Vec<Arc<Event>> = progress.into_iter().map(Arc::new).collect();
        let now = Instant::now();
        for w in self.lock().iter() {
            let mut pushed = false;
            let mut q = w.queue.lock().unwrap_or_else(PoisonError::into_inner);
            for e in &events {
                if w.wants[slot(e.kind.category())] {
                    w.push(&mut q, Arc::clone(e));
                    pushed = true;
                }
            }
            // (`q` is held: the due check reads it directly.)
            let due = q.last_progress.is_none_or(|t| now.duration_since(t) >= w.progress_every);
            if !progress.is_empty() && w.wants[slot(Category::Jobs)] && due {
                q.last_progress = Some(now);
                for e in &progress {
                    w.push(&mut q, Arc::clone(e));
                    pushed = true;
                }
            }
            drop(q);
            if pushed {
                w.ready.notify_one();
            }
        }
    }
}

impl Watcher {
    fn progress_due(&self, now: Instant) -> bool {
        let q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.last_progress.is_none_or(|t| now.duration_since(t) >= self.progress_every)
    }

    /// Appends `e`, making room first: the oldest progress event goes, or,
    /// with none waiting, the oldest event.
    fn push(&self, q: &mut Queue, e: Arc<Event>) {
        if q.events.len() >= self.cap {
            let victim = q.events.iter().position(|e| e.kind.is_progress()).unwrap_or(0);
            q.events.remove(victim);
            q.dropped += 1;
            q.dropped_total += 1;
        }
        q.events.push_back(e);
    }

    /// Waits until an event may be waiting.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Takes up to `max` waiting events as wire lines into `out`; the
    /// first one carries `dropped` when events were lost before it.
    pub fn drain_into(&self, out: &mut Vec<u8>, max: usize) -> usize {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n = 0;
        while n < max {
            let Some(e) = q.events.pop_front() else { break };
            let mut v = serde_json::to_value(&*e).unwrap_or(Value::Null);
            if q.dropped > 0
                && let Value::Object(m) = &mut v
            {
                m.insert("dropped".into(), q.dropped.into());
                q.dropped = 0;
            }
            crate::requests::wire::write_value(out, &v);
            n += 1;
        }
        q.delivered += n as u64;
        n
    }

    /// (events delivered, events dropped) so far.
    pub fn counts(&self) -> (u64, u64) {
        let q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        (q.delivered, q.dropped_total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiers::EventKind;

    fn ev(progress: bool, i: usize) -> Event {
        Event {
            at: i as f64,
            kind: if progress {
                EventKind::JobProgress {
                    job_id: format!("j{i}"),
                    model_name: "m".into(),
                    target_tier: "ram".into(),
                    progress: 0.5,
                }
            } else {
                EventKind::TierAvailable { tier: format!("t{i}") }
            },
        }
    }

    #[test]
    fn a_full_queue_drops_progress_first_and_says_so() {
        let hub = Hub::default();
        let w = hub.add(&Watch {
            buffer: 3,
            ..Watch::default()
        });
        hub.publish(vec![ev(false, 0)], vec![ev(true, 1)]);
        hub.publish(vec![ev(false, 2), ev(false, 3)], vec![]);
        let mut out = Vec::new();
        assert_eq!(w.drain_into(&mut out, 10), 3);
        let lines: Vec<Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        // The progress event went; the first event sent says one was dropped.
        assert_eq!(lines[0]["tier"], "t0");
        assert_eq!(lines[0]["dropped"], 1);
        assert_eq!(lines[1]["tier"], "t2");
        assert!(lines[1].get("dropped").is_none());
        assert_eq!(w.counts(), (3, 1));
        hub.remove(&w);
        assert!(hub.is_empty());
    }

    #[test]
    fn watchers_get_only_their_groups() {
        let hub = Hub::default();
        let w = hub.add(&Watch {
            events: [Category::Pressure].into_iter().collect(),
            ..Watch::default()
        });
        hub.publish(vec![ev(false, 0)], vec![ev(true, 1)]);
        let mut out = Vec::new();
        assert_eq!(w.drain_into(&mut out, 10), 0);
    }
}
