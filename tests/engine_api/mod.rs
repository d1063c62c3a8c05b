//! Test helpers: the engine's answers as the wire shows them, through the
//! request modules' own `apply` (no extra tick: the tests advance time
//! themselves), and engines on the simulated machine under a chosen policy.
#![allow(dead_code)]

use std::path::Path;

use serde_json::{Map, Value, json};
use tierd::config::Config;
use tierd::drivers::sim::{SimControl, simulated_machine};
use tierd::error::EngineError;
use tierd::requests::auto_optimize::AutoOptimize;
use tierd::requests::cancel_job::CancelJob;
use tierd::requests::list_jobs::ListJobs;
use tierd::requests::model_info::ModelInfo;
use tierd::requests::register_model::RegisterModel;
use tierd::requests::tier_job_status::TierJobStatus;
use tierd::requests::tier_status::TierStatus;
use tierd::requests::update_limits::UpdateLimits;
use tierd::requests::{Command, Outcome};
use tierd::tiers::{Engine, Policy};

fn reply(o: Result<Outcome, EngineError>) -> Result<Value, EngineError> {
    o.map(|o| match o {
        Outcome::Reply(v) => v,
        Outcome::WaitForJob(id) => json!({ "wait_for": id }),
    })
}

/// The wire answers of the requests the tests make, without ticking.
pub trait Wire {
    fn status_json(&mut self, now: f64) -> Value;
    fn job_json(&mut self, now: f64, id: &str) -> Result<Value, EngineError>;
    fn cancel_json(&mut self, now: f64, id: &str) -> Result<Value, EngineError>;
    fn model_json(&mut self, now: f64, name: &str) -> Result<Value, EngineError>;
    fn limits_json(&mut self, now: f64, changes: Value) -> Result<Value, EngineError>;
    fn limits_map(&self) -> Map<String, Value>;
    fn register_json(
        &mut self,
        now: f64,
        name: &str,
        size_gb: Option<f64>,
        preferred: Option<&str>,
        path: Option<&Path>,
    ) -> Result<Value, EngineError>;
    fn optimize_json(&mut self, now: f64, dry_run: bool) -> Value;
    fn jobs_json(&mut self, now: f64) -> Value;
}

impl Wire for Engine {
    fn status_json(&mut self, now: f64) -> Value {
        reply(TierStatus.apply(self, now)).expect("tier_status")
    }

    fn job_json(&mut self, now: f64, id: &str) -> Result<Value, EngineError> {
        reply(TierJobStatus { job_id: id.into() }.apply(self, now))
    }

    fn cancel_json(&mut self, now: f64, id: &str) -> Result<Value, EngineError> {
        reply(CancelJob { job_id: id.into() }.apply(self, now))
    }

    fn model_json(&mut self, now: f64, name: &str) -> Result<Value, EngineError> {
        reply(ModelInfo { model_name: name.into() }.apply(self, now))
    }

    fn limits_json(&mut self, now: f64, changes: Value) -> Result<Value, EngineError> {
        let entries = changes.as_object().cloned().unwrap_or_default();
        reply(UpdateLimits { entries }.apply(self, now))
    }

    fn limits_map(&self) -> Map<String, Value> {
        self.limits().to_map()
    }

    fn register_json(
        &mut self,
        now: f64,
        name: &str,
        size_gb: Option<f64>,
        preferred: Option<&str>,
        path: Option<&Path>,
    ) -> Result<Value, EngineError> {
        let r = RegisterModel {
            model_name: name.into(),
            size_gb,
            preferred_tier: preferred.map(str::to_string),
            path: path.map(Path::to_path_buf),
            files: None,
        };
        reply(r.apply(self, now))
    }

    fn optimize_json(&mut self, now: f64, dry_run: bool) -> Value {
        reply(AutoOptimize { dry_run }.apply(self, now)).expect("auto_optimize")
    }

    fn jobs_json(&mut self, now: f64) -> Value {
        reply(ListJobs.apply(self, now)).expect("list_jobs")
    }
}

/// An engine on the simulated machine of `cfg`, with `policy`.
pub fn sim_engine(cfg: Config, policy: Box<dyn Policy>, now: f64) -> (Engine, SimControl) {
    let (machine, control) = simulated_machine(&cfg, false);
    (Engine::new(cfg, machine, policy, now).expect("engine"), control)
}
