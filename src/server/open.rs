//! How `tierd serve` builds what it serves: the configuration with the
//! command line's overrides, the machine (simulated, or real with its state
//! file reconciled and restored), the policy and the engine.

use tracing::{info, warn};

use crate::config::Config;
use crate::drivers::Machine;
use crate::drivers::machine::ReconcileReport;
use crate::drivers::sim::simulated_machine;
use crate::optimizer::{POLICY_NAMES, policy_by_name};
use crate::store::StateStore;
use crate::tiers::{Engine, MoveOptions, Origin, Registration};

use super::serve::{BackendKind, ServeError, ServeOptions};
use super::shared::{Clock, SharedEngine};

/// Loads the configuration and applies the command-line overrides.
pub fn load_config(opts: &ServeOptions) -> Result<Config, ServeError> {
    let mut cfg = match &opts.config {
        Some(path) => Config::load(path)?,
        None => Config::seed_default(),
    };
    if let Some(p) = opts.fault_probability {
        if !(0.0..=1.0).contains(&p) {
            return Err(ServeError::Option(format!("--fault-probability must be between 0 and 1, got {p}")));
        }
        cfg.sim.fault_probability = p;
    }
    Ok(cfg)
}

/// The backend that serves: `--backend` when given, else the config's
/// `backend` key, else the simulator.
pub fn resolve_backend(opts: &ServeOptions, cfg: &Config) -> BackendKind {
    opts.backend.unwrap_or(match cfg.backend.as_deref() {
        Some("real") => BackendKind::Real,
        _ => BackendKind::Sim,
    })
}

/// The simulator ignores the keys only the real backend reads; serving a
/// real configuration on it by mistake would move no bytes while looking
/// fine, so such keys are an error that says how to serve it for real.
fn check_sim_config(cfg: &Config) -> Result<(), ServeError> {
    let keys = cfg.real_only_keys();
    if keys.is_empty() {
        return Ok(());
    }
    Err(ServeError::Option(format!(
        "{} {} read only by the real backend, but the simulated backend would serve this config; serve it with `tierd serve --backend real` (or set backend = \"real\" in the config), or remove {}",
        keys.join(", "),
        if keys.len() == 1 { "is" } else { "are" },
        if keys.len() == 1 { "it" } else { "them" },
    )))
}

/// Everything the real backend will need from the disk, checked before it
/// creates anything (tier directories, the state directory, the socket's),
/// so a rejected configuration leaves no trace: each tier's driver known and
/// the storage driver last, a `dir` tier's path an existing directory (or
/// `create = true` with an existing parent), the state directory's parent
/// present, every catalog model's path present.
pub fn check_real_config(cfg: &Config) -> Result<(), String> {
    let state_dir = cfg.state_dir.as_ref().ok_or("state_dir is required with the real backend")?;
    if !state_dir.is_dir() {
        let parent = state_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            return Err(format!(
                "state_dir {}: its parent directory {} does not exist",
                state_dir.display(),
                parent.display()
            ));
        }
    }
    let n = cfg.tiers.len();
    for (i, t) in cfg.tiers.iter().enumerate() {
        let name = t.driver.as_deref().unwrap_or_else(|| crate::drivers::machine::default_driver(i, n));
        if !crate::drivers::DRIVERS.iter().any(|(d, _)| *d == name) {
            let known: Vec<&str> = crate::drivers::DRIVERS.iter().map(|(n, _)| *n).collect();
            return Err(format!("tier {:?}: unknown driver {name:?} (known: {})", t.name, known.join(", ")));
        }
        if (i + 1 == n) != (name == "storage") {
            return Err(format!(
                "tier {:?}: the last tier, and only it, must use the storage driver",
                t.name
            ));
        }
        if name == "dir" {
            let path = t
                .path
                .as_ref()
                .ok_or_else(|| format!("tier {:?} (driver dir) needs a path", t.name))?;
            crate::drivers::dir::check_path(path, t.create).map_err(|e| format!("tier {:?}: {e}", t.name))?;
        }
    }
    for m in &cfg.models {
        if let Some(p) = &m.path
            && std::fs::symlink_metadata(p).is_err()
        {
            return Err(format!("model {:?}: path {} does not exist", m.name, p.display()));
        }
    }
    Ok(())
}

/// Builds the engine and its clock from the options.
pub fn build_shared(opts: &ServeOptions) -> Result<SharedEngine, ServeError> {
    if !(opts.time_scale.is_finite() && opts.time_scale > 0.0) {
        return Err(ServeError::Option(format!(
            "--time-scale must be a positive number, got {}",
            opts.time_scale
        )));
    }
    let cfg = load_config(opts)?;
    let policy = policy_by_name(&cfg.policy, &cfg)
        .ok_or_else(|| ServeError::Option(format!("unknown policy {:?}; known: {}", cfg.policy, POLICY_NAMES.join(", "))))?;
    let clock = Clock::new(opts.time_scale);
    match resolve_backend(opts, &cfg) {
        BackendKind::Sim => {
            check_sim_config(&cfg)?;
            let (machine, _) = simulated_machine(&cfg, false);
            let engine = Engine::new(cfg, machine, policy, clock.now())?;
            Ok(SharedEngine::new(engine, clock))
        }
        BackendKind::Real => {
            check_real_config(&cfg).map_err(|e| ServeError::Option(format!("real backend: {e}")))?;
            let machine = Machine::open(&cfg).map_err(|e| ServeError::Option(format!("real backend: {e}")))?;
            let (engine, store, _) =
                open_real(cfg, machine, policy, clock.now()).map_err(|e| ServeError::Option(format!("real backend: {e}")))?;
            Ok(SharedEngine::with_store(engine, clock, store))
        }
    }
}

/// A real machine's engine: its state file opened (and locked), its
/// placement reconciled with the files and restored, the configuration's
/// catalog registered and the tiers it asks for reached by moves. Returns
/// the engine, its state store and what reconciliation did.
pub fn open_real(
    mut cfg: Config,
    mut machine: Machine,
    policy: Box<dyn crate::tiers::Policy>,
    now: f64,
) -> Result<(Engine, StateStore, ReconcileReport), String> {
    let state_dir = cfg
        .state_dir
        .clone()
        .ok_or_else(|| "state_dir is required with the real backend".to_string())?;
    let (store, file) = StateStore::open(&state_dir).map_err(|e| e.to_string())?;
    let tier_names: Vec<String> = cfg.tiers.iter().map(|t| t.name.clone()).collect();
    let (placed, report) = machine.reconcile(&tier_names, &file.records())?;
    info!(
        removed_partials = report.removed_partials.len(),
        removed_orphans = report.removed_orphans.len(),
        fell_back = report.fell_back.len(),
        unavailable = report.unavailable.len(),
        repinning = report.restoring.len(),
        "real backend reconciled its state"
    );
    for (model, reason) in &report.unavailable {
        warn!(model, reason, "model unavailable");
    }
    for (model, reason) in &report.fell_back {
        warn!(model, reason, "model fell back to storage");
    }
    // The serve directory (by default inside the state directory, which is
    // created above with its private mode).
    if let Some(dir) = cfg.serve_dir() {
        // Inside a tier, start-up cleaning would take the links for strays.
        // Checked as configured (before anything is created there), then
        // as it resolves.
        let inside = |machine: &crate::drivers::Machine, p: &std::path::Path| {
            machine.drivers.iter().position(|d| d.owns_path(p)).map(|t| {
                format!(
                    "serve_dir {} is inside the directory of tier {:?}; give it a directory of its own",
                    p.display(),
                    cfg.tiers[t].name
                )
            })
        };
        if let Some(e) = inside(&machine, &dir) {
            return Err(e);
        }
        let serve = crate::drivers::serve::ServeLinks::open(&dir)?;
        if let Some(e) = inside(&machine, serve.dir()) {
            return Err(e);
        }
        machine.serve = Some(serve);
    }
    let catalog = std::mem::take(&mut cfg.models);
    let max_files = cfg.max_files_per_model;
    let mut engine = Engine::new(cfg, machine, policy, now).map_err(|e| e.to_string())?;
    engine.restore(now, file.restored(placed)).map_err(|e| e.to_string())?;
    // The configuration's catalog: models not yet known are registered in
    // storage; a tier they ask for is reached by a move.
    for mc in catalog {
        let Some(path) = &mc.path else {
            return Err(format!("model {:?} needs a path with the real backend", mc.name));
        };
        if engine.state().model_id(&mc.name).is_none() {
            let files = crate::drivers::ModelFiles::walk(path, max_files)?;
            let reg = Registration {
                name: mc.name.clone(),
                path: Some(path.clone()),
                files: Some(files),
                ..Registration::default()
            };
            engine.register(now, reg).map_err(|e| e.to_string())?;
        }
        let (Some(want), Some(id)) = (&mc.tier, engine.state().model_id(&mc.name)) else {
            continue;
        };
        let here = engine.state().model(id).map(|m| m.tier);
        let wanted = engine.state().tier_index(want);
        if let (Some(here), Some(wanted)) = (here, wanted)
            && wanted < here
        {
            let opts = MoveOptions {
                origin: Origin::Register,
                reason: Some("catalog placement".into()),
                ..MoveOptions::default()
            };
            if let Err(e) = engine.move_model(now, &mc.name, want, &opts) {
                warn!(model = %mc.name, tier = %want, "catalog placement not started: {e}");
            }
        }
    }
    if let Some(r) = engine.reconcile_serve_paths() {
        info!(
            linked = r.linked,
            removed = r.removed.len(),
            unknown = r.unknown.len(),
            "serve paths checked"
        );
        for (model, reason) in &r.failed {
            warn!(model, reason, "serve path not made");
        }
    }
    Ok((engine, store, report))
}
