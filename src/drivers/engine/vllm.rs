//! `vllm`: an engine tier made of vLLM instances in sleep mode, one model
//! each (`instances = [{ model = "...", url = "..." }]`; every instance runs
//! with `--enable-sleep-mode` and `VLLM_SERVER_DEV_MODE=1`). Wire types:
//! [`super::vllm_wire`].
//!
//! - An instance that is awake holds its model in the tier.
//! - Demotion to the RAM tier is `POST /sleep?level=1`: the weights stay in
//!   the vLLM process's CPU memory, so they count against the RAM tier's
//!   budget (the driver reports them, see [`Asleep::ram_bytes`] and
//!   [`super::EngineApi::copies_in_ram`]).
//! - Demotion to storage is `POST /sleep?level=2`: the weights are dropped.
//! - Promotion is `POST /wake_up` from level 1; from level 2 (or a sleep
//!   tierd did not order, whose level `/is_sleeping` does not tell) it is
//!   `wake_up?tags=weights`, `POST /collective_rpc {"method":
//!   "reload_weights"}`, then `wake_up?tags=kv_cache` — always correct,
//!   since reloading level-1 weights from storage only costs time.
//! - State: `GET /is_sleeping` every `poll_s`. The level always goes in the
//!   query string: vLLM ignores a JSON body.

use serde_json::{Map, Value};

use super::vllm_wire::{
    COLLECTIVE_RPC, CollectiveRpcRequest, DetailResponse, IS_SLEEPING, IsSleepingResponse, RELOAD_WEIGHTS, SleepLevel, WAKE_UP,
    WAKE_UP_KV_CACHE, WAKE_UP_WEIGHTS,
};

/// What tierd knows of a sleeping instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asleep {
    /// tierd put it to sleep at this level.
    Level(SleepLevel),
    /// Someone else did; `/is_sleeping` does not say at which level.
    Unknown,
}

impl Asleep {
    /// Whether the instance's CPU memory holds the weights (counted against
    /// the RAM tier's budget). An unknown sleep is assumed to be level 1,
    /// vLLM's default for `POST /sleep`, so the RAM budget errs on the safe
    /// side.
    pub fn ram_bytes(self) -> bool {
        !matches!(self, Asleep::Level(SleepLevel::Two))
    }
}

/// One HTTP step of a sleep or a wake.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// `POST` path, query included.
    pub path: &'static str,
    /// JSON body, if any.
    pub body: Option<Value>,
}

/// The sleep level of a demotion: to the tier right below (RAM) level 1,
/// further down level 2.
pub fn sleep_level(to_ram: bool) -> SleepLevel {
    if to_ram { SleepLevel::One } else { SleepLevel::Two }
}

/// The step that puts an instance to sleep.
pub fn sleep_step(level: SleepLevel) -> Step {
    Step {
        path: level.path(),
        body: None,
    }
}

/// The steps that wake an instance from `asleep`.
pub fn wake_steps(asleep: Asleep) -> Vec<Step> {
    match asleep {
        Asleep::Level(SleepLevel::One) => vec![Step { path: WAKE_UP, body: None }],
        Asleep::Level(SleepLevel::Two) | Asleep::Unknown => vec![
            Step {
                path: WAKE_UP_WEIGHTS,
                body: None,
            },
            Step {
                path: COLLECTIVE_RPC,
                body: serde_json::to_value(CollectiveRpcRequest {
                    method: RELOAD_WEIGHTS.into(),
                    ..Default::default()
                })
                .ok(),
            },
            Step {
                path: WAKE_UP_KV_CACHE,
                body: None,
            },
        ],
    }
}

/// The path of the state.
pub const STATE_PATH: &str = IS_SLEEPING;

/// The engine's own words for a failed answer: FastAPI's `{"detail": ...}`,
/// else the status and the start of the body.
pub fn engine_message(status: u16, body: &[u8]) -> String {
    if let Ok(d) = serde_json::from_slice::<DetailResponse>(body) {
        let detail = match d.detail {
            Value::String(s) => s,
            other => other.to_string(),
        };
        return format!("vllm: {detail} (HTTP {status})");
    }
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text.chars().take(200).collect();
    format!("vllm: HTTP {status}: {}", excerpt.trim())
}

/// Checks the answer to a step.
pub fn check_step(step: &Step, status: u16, body: &[u8]) -> Result<(), String> {
    if (200..300).contains(&status) {
        // collective_rpc answers JSON or nothing; the others nothing.
        if step.path == COLLECTIVE_RPC && !body.is_empty() && serde_json::from_slice::<Value>(body).is_err() {
            return Err(format!("vllm answered garbage to {}", step.path));
        }
        return Ok(());
    }
    Err(format!("{} failed: {}", step.path, engine_message(status, body)))
}

/// Parses `/is_sleeping`.
pub fn parse_is_sleeping(status: u16, body: &[u8]) -> Result<bool, String> {
    if !(200..300).contains(&status) {
        return Err(engine_message(status, body));
    }
    serde_json::from_slice::<IsSleepingResponse>(body)
        .map(|s| s.is_sleeping)
        .map_err(|e| format!("vllm /is_sleeping answered garbage: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn demotions_pick_the_level_in_the_query_string() {
        assert_eq!(sleep_step(sleep_level(true)).path, "/sleep?level=1");
        assert_eq!(sleep_step(sleep_level(false)).path, "/sleep?level=2");
        assert_eq!(sleep_step(SleepLevel::Two).body, None, "no body: vLLM ignores it");
    }

    #[test]
    fn level_two_and_unknown_sleeps_wake_in_three_steps() {
        assert_eq!(
            wake_steps(Asleep::Level(SleepLevel::One))
                .iter()
                .map(|s| s.path)
                .collect::<Vec<_>>(),
            vec!["/wake_up"]
        );
        for asleep in [Asleep::Level(SleepLevel::Two), Asleep::Unknown] {
            let steps = wake_steps(asleep);
            assert_eq!(
                steps.iter().map(|s| s.path).collect::<Vec<_>>(),
                vec!["/wake_up?tags=weights", "/collective_rpc", "/wake_up?tags=kv_cache"]
            );
            assert_eq!(steps[1].body, Some(json!({"method": "reload_weights"})));
        }
        assert!(Asleep::Unknown.ram_bytes() && Asleep::Level(SleepLevel::One).ram_bytes());
        assert!(!Asleep::Level(SleepLevel::Two).ram_bytes());
    }

    #[test]
    fn answers_carry_the_engines_message() {
        assert_eq!(parse_is_sleeping(200, br#"{"is_sleeping": true}"#), Ok(true));
        assert!(parse_is_sleeping(200, b"nope").unwrap_err().contains("garbage"));
        let step = &wake_steps(Asleep::Unknown)[1];
        let e = check_step(step, 400, br#"{"detail": "Missing 'method' in request body"}"#).unwrap_err();
        assert!(e.contains("Missing 'method'") && e.contains("400"), "{e}");
        assert!(
            check_step(step, 500, b"Internal Server Error")
                .unwrap_err()
                .contains("HTTP 500: Internal Server Error")
        );
        assert!(check_step(step, 200, b"").is_ok());
    }
}

// ------------------------------------------------------------- operations

pub use super::ollama::Exchange;

fn left(deadline: std::time::Instant) -> Option<std::time::Duration> {
    deadline.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero())
}

/// Runs one step before `deadline`.
pub fn run_step(http: &dyn Exchange, step: &Step, deadline: std::time::Instant) -> Result<(), String> {
    let wait = left(deadline).ok_or_else(|| format!("vllm: {} timed out", step.path))?;
    let (status, body) = http.exchange("POST", step.path, step.body.as_ref(), wait).map_err(|e| {
        if left(deadline).is_none() {
            format!("vllm: {} timed out ({e})", step.path)
        } else {
            format!("vllm: {}: {e}", step.path)
        }
    })?;
    check_step(step, status, &body)
}

/// Reads `/is_sleeping`.
pub fn is_sleeping(http: &dyn Exchange, timeout: std::time::Duration) -> Result<bool, String> {
    let (status, body) = http.exchange("GET", STATE_PATH, None, timeout)?;
    parse_is_sleeping(status, &body)
}

/// Wakes an instance from `asleep`, then checks `/is_sleeping` says awake.
/// On an error the steps already done are reported (`Err((message,
/// done))`) so that the caller can put the instance back to sleep.
pub fn wake(http: &dyn Exchange, asleep: Asleep, deadline: std::time::Instant) -> Result<(), (String, usize)> {
    let steps = wake_steps(asleep);
    for (i, step) in steps.iter().enumerate() {
        run_step(http, step, deadline).map_err(|e| (e, i))?;
    }
    let wait = left(deadline).ok_or_else(|| ("vllm: wake timed out".to_string(), steps.len()))?;
    match is_sleeping(http, wait) {
        Ok(false) => Ok(()),
        Ok(true) => Err(("vllm: /is_sleeping still says true after the wake".into(), steps.len())),
        Err(e) => Err((e, steps.len())),
    }
}

/// Puts an instance to sleep at `level` and checks that it sleeps.
pub fn sleep(http: &dyn Exchange, level: SleepLevel, deadline: std::time::Instant) -> Result<(), String> {
    run_step(http, &sleep_step(level), deadline)?;
    let wait = left(deadline).ok_or_else(|| "vllm: sleep timed out".to_string())?;
    if is_sleeping(http, wait)? {
        Ok(())
    } else {
        Err("vllm: /is_sleeping says false after the sleep".into())
    }
}

/// Puts a half-woken instance back to sleep at `level` (the rollback of a
/// failed promotion). While any tag still sleeps, vLLM ignores `/sleep`, so
/// a wake that stopped half-way is finished first (reload the weights, wake
/// the KV cache), then the instance sleeps.
pub fn back_to_sleep(http: &dyn Exchange, level: SleepLevel, deadline: std::time::Instant) -> Result<(), String> {
    let wait = left(deadline).ok_or_else(|| "vllm: rollback timed out".to_string())?;
    if is_sleeping(http, wait)? {
        for step in wake_steps(Asleep::Unknown) {
            run_step(http, &step, deadline)?;
        }
    }
    sleep(http, level, deadline)
}

// ---------------------------------------------------------- the engine api

/// One vLLM instance of a `vllm` tier.
pub struct Instance {
    /// tierd's name of the model the instance serves.
    pub model: String,
    pub url: String,
    pub http: Box<dyn Exchange + Send + Sync>,
}

/// What tierd knows of one instance between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Awake,
    Asleep(Asleep),
    /// Not read yet, or not answering.
    Unknown,
}

/// The instances of a `vllm` tier.
pub struct Vllm {
    pub instances: Vec<Instance>,
    request_timeout: std::time::Duration,
    /// Per instance: what tierd knows, and a count bumped by each sleep and
    /// wake, so that a look that started before one does not overwrite
    /// what it set.
    known: std::sync::Mutex<Vec<(Known, u64)>>,
    /// One sleep or wake at a time per instance: a wake ordered while the
    /// sleep before it still settles waits for it (and so knows its level).
    ops: Vec<std::sync::Mutex<()>>,
}

impl Vllm {
    pub fn new(instances: Vec<Instance>, request_timeout: std::time::Duration) -> Vllm {
        let known = vec![(Known::Unknown, 0); instances.len()];
        let ops = instances.iter().map(|_| std::sync::Mutex::new(())).collect();
        Vllm {
            instances,
            request_timeout,
            known: std::sync::Mutex::new(known),
            ops,
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Vec<(Known, u64)>> {
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The instance serving tierd model `model`.
    pub fn resolve(&self, model: &str) -> Result<usize, String> {
        self.instances
            .iter()
            .position(|i| i.model == model)
            .ok_or_else(|| format!("vllm: no instance serves model \"{model}\" (add it to the tier's instances)"))
    }

    /// What tierd knows of instance `i`.
    pub fn state_of(&self, i: usize) -> Known {
        self.known().get(i).map_or(Known::Unknown, |k| k.0)
    }

    fn generation(&self, i: usize) -> u64 {
        self.known().get(i).map_or(0, |k| k.1)
    }

    /// Wakes instance `i` within `timeout`. On failure, a half-woken instance
    /// is put back to sleep at the level it had.
    pub fn wake(&self, i: usize, timeout: std::time::Duration) -> Result<(), String> {
        let inst = self.instances.get(i).ok_or("vllm: no such instance")?;
        let _one_at_a_time = self.ops[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // What tierd remembers may be older than the instance's state: ask.
        if !is_sleeping(&*inst.http, self.request_timeout.min(timeout))? {
            self.set(i, Known::Awake);
            return Ok(());
        }
        let asleep = match self.state_of(i) {
            Known::Asleep(a) => a,
            Known::Awake | Known::Unknown => Asleep::Unknown,
        };
        match wake(&*inst.http, asleep, std::time::Instant::now() + timeout) {
            Ok(()) => {
                self.set(i, Known::Awake);
                Ok(())
            }
            Err((e, done)) => {
                if done > 0 {
                    // Back to the level it had; an unknown one to level 2, so
                    // that no weights stay in memory the books do not count.
                    let level = match asleep {
                        Asleep::Level(l) => l,
                        Asleep::Unknown => SleepLevel::Two,
                    };
                    match back_to_sleep(&*inst.http, level, std::time::Instant::now() + self.request_timeout.max(timeout)) {
                        Ok(()) => self.set(i, Known::Asleep(Asleep::Level(level))),
                        Err(r) => {
                            tracing::warn!(instance = %inst.url, error = %r, "vllm: cannot put the half-woken instance back to sleep");
                            self.set(i, Known::Unknown);
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Puts instance `i` to sleep: level 1 when the model goes to RAM, else 2.
    pub fn sleep(&self, i: usize, to_ram: bool) -> Result<(), String> {
        let inst = self.instances.get(i).ok_or("vllm: no such instance")?;
        let _one_at_a_time = self.ops[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let level = sleep_level(to_ram);
        // vLLM ignores a sleep while asleep: the level stays what it was.
        if is_sleeping(&*inst.http, self.request_timeout)? {
            if !matches!(self.state_of(i), Known::Asleep(_)) {
                self.set(i, Known::Asleep(Asleep::Unknown));
            }
            return Ok(());
        }
        sleep(&*inst.http, level, std::time::Instant::now() + self.request_timeout)?;
        self.set(i, Known::Asleep(Asleep::Level(level)));
        Ok(())
    }

    fn set(&self, i: usize, k: Known) {
        if let Some(slot) = self.known().get_mut(i) {
            *slot = (k, slot.1 + 1);
        }
    }

    /// Reads `/is_sleeping` of every instance: per instance, awake or not,
    /// or why it did not answer. A sleep tierd did not order becomes
    /// [`Asleep::Unknown`].
    pub fn observe(&self) -> Vec<Result<bool, String>> {
        self.instances
            .iter()
            .enumerate()
            .map(|(i, inst)| {
                let generation = self.generation(i);
                let r = is_sleeping(&*inst.http, self.request_timeout).map_err(|e| format!("{}: {e}", inst.url));
                let mut known = self.known();
                if let Some(slot) = known.get_mut(i)
                    && slot.1 == generation
                {
                    slot.0 = match (&r, slot.0) {
                        (Ok(false), _) => Known::Awake,
                        (Ok(true), Known::Asleep(a)) => Known::Asleep(a),
                        (Ok(true), _) => Known::Asleep(Asleep::Unknown),
                        (Err(_), _) => Known::Unknown,
                    };
                }
                r.map(|sleeping| !sleeping)
            })
            .collect()
    }
}

// ------------------------------------------------------------- the driver

/// Timeout of one look at an instance and of a sleep.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl super::EngineApi for Vllm {
    fn kind(&self) -> &'static str {
        "vllm"
    }

    /// The instance serving `id` (its API server and workers).
    fn serving_pids(&self, id: &str) -> std::collections::HashSet<u32> {
        let url = self.resolve(id).ok().and_then(|i| self.instances.get(i)).map(|i| i.url.clone());
        match url.map(|u| super::http::Endpoint::parse(&u, true)) {
            Some(Ok(ep)) => super::procs::serving_pids(&ep),
            _ => std::collections::HashSet::new(),
        }
    }

    /// The awake instances, by the model they serve (its tierd name is the
    /// engine's id).
    fn loaded(&self) -> Result<Vec<super::Loaded>, super::EngineError> {
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        for (i, r) in self.observe().into_iter().enumerate() {
            match r {
                Ok(true) => loaded.push(super::Loaded {
                    id: self.instances[i].model.clone(),
                    path: None,
                    bytes: None,
                    activity: None,
                }),
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(loaded)
        } else {
            Err(super::EngineError {
                message: errors.join("; "),
                down: true,
            })
        }
    }

    fn resolve(&self, model: &super::ModelRef) -> Result<String, super::EngineError> {
        self.resolve(&model.name)
            .map(|i| self.instances[i].model.clone())
            .map_err(super::EngineError::refused)
    }

    fn load(&self, id: &str, _model: &super::ModelRef, ctl: &super::LoadControl) -> Result<(), super::EngineError> {
        let i = self.resolve(id).map_err(super::EngineError::refused)?;
        self.wake(i, ctl.remaining()).map_err(super::EngineError::refused)
    }

    /// Sleeps at level 1 into RAM (the weights stay in the instance's CPU
    /// memory), level 2 further down.
    fn unload(&self, id: &str, to: super::UnloadTo, _ctl: &super::LoadControl) -> Result<(), super::EngineError> {
        let i = self.resolve(id).map_err(super::EngineError::refused)?;
        self.sleep(i, to == super::UnloadTo::Ram).map_err(super::EngineError::refused)
    }

    /// From level 1 to level 2: vLLM ignores a sleep while asleep, so the
    /// instance is woken, then put to sleep at level 2. A sleep at a level
    /// tierd did not see is left alone (counted as level 1 all the same):
    /// waking it may cost a reload from storage.
    fn drop_copy(&self, id: &str, ctl: &super::LoadControl) -> Result<(), super::EngineError> {
        let i = self.resolve(id).map_err(super::EngineError::refused)?;
        if self.state_of(i) != Known::Asleep(Asleep::Level(SleepLevel::One)) {
            return Ok(());
        }
        self.wake(i, ctl.remaining()).map_err(super::EngineError::refused)?;
        self.sleep(i, false).map_err(super::EngineError::refused)
    }

    fn copies_in_ram(&self) -> Vec<String> {
        let known = self.known();
        self.instances
            .iter()
            .zip(known.iter())
            .filter(|(_, (k, _))| matches!(k, Known::Asleep(a) if a.ram_bytes()))
            .map(|(i, _)| i.model.clone())
            .collect()
    }

    fn details(&self) -> Map<String, Value> {
        let mut d = Map::new();
        let instances: Vec<Value> = self
            .instances
            .iter()
            .enumerate()
            .map(|(i, inst)| {
                let state = match self.state_of(i) {
                    Known::Awake => "awake".to_string(),
                    Known::Asleep(Asleep::Level(l)) => format!("asleep (level {})", l as u8),
                    Known::Asleep(Asleep::Unknown) => "asleep (level unknown)".to_string(),
                    Known::Unknown => "unknown".to_string(),
                };
                serde_json::json!({"model": inst.model, "url": inst.url, "state": state})
            })
            .collect();
        d.insert("instances".into(), Value::Array(instances));
        d
    }
}

/// Opens a `vllm` tier: `instances = [{ model, url }]` (required),
/// `poll_s`, `load_timeout_s`, `max_gb`.
pub fn open(
    ctx: &mut crate::drivers::machine::OpenContext,
    tier: &crate::config::TierConfig,
) -> Result<Box<dyn crate::drivers::TierDriver>, String> {
    let list = tier
        .instances
        .as_ref()
        .filter(|l| !l.is_empty())
        .ok_or("a vllm tier needs instances = [{ model = \"...\", url = \"http://127.0.0.1:8000\" }]")?;
    let mut instances = Vec::with_capacity(list.len());
    for (n, inst) in list.iter().enumerate() {
        if list[..n].iter().any(|o| o.model == inst.model) {
            return Err(format!("vllm: model {:?} is served by two instances", inst.model));
        }
        let client = super::http::HttpClient::new(&inst.url, tier.allow_remote_engines)?;
        instances.push(Instance {
            model: inst.model.clone(),
            url: inst.url.clone(),
            http: Box::new(client),
        });
    }
    let gpu = super::ollama::engine_gpu(ctx, tier);
    let settings = super::EngineSettings::from_config(tier, gpu);
    Ok(Box::new(super::EngineTier::open(Vllm::new(instances, REQUEST_TIMEOUT), settings)?))
}
