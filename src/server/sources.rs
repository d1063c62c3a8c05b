//! The server's side of the model sources (`crate::sources`): the scan at
//! start, the rescans on change, and what a scan does to the engine.
//!
//! A scan runs on a blocking thread, never under the engine's lock; its
//! result is then applied under the lock ([`apply_scan`]):
//! - it becomes what `discover` answers;
//! - with `register = "auto"`, each model found and not registered is
//!   registered through `register_model` (its checks, the state file), in
//!   the last tier (its origin): discovery moves nothing, use does;
//!   a refusal is kept for `discover` and tried again at the next scan;
//! - a registered model of a source found under its name with other files
//!   (a newer `ollama pull`, a new snapshot of the ref) drops what tiers
//!   held of the old ones and is served from the new ones, in storage,
//!   with its usage;
//! - a registered model whose origin is inside a source's directory, and
//!   that the source no longer finds (neither by name nor by its files), is
//!   marked unavailable, never deleted; found again, it is available again.
//!
//! Rescans: inotify on the stores' index directories (Ollama's manifest
//! tree, the hub cache's repository, `refs/` and `snapshots/` folders, a
//! `dir` source and its subdirectories), a change being followed by a short
//! quiet period so a download's many events make one rescan; and every
//! `rescan_s` as a fallback (a full watch table, a network filesystem).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask, Watches};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::bytes_to_gb;
use crate::drivers::MachineKind;
use crate::requests::Command;
use crate::requests::register_model::RegisterModel;
use crate::sources::{Discovery, SourceRegister, Sources};
use crate::tiers::Engine;

use super::shared::SharedEngine;

/// How long the stores must be quiet after a change before the rescan.
const QUIET: Duration = Duration::from_millis(150);

/// What applying a scan did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Models registered now.
    pub registered: Vec<String>,
    /// Models newly marked gone from their source.
    pub missing: Vec<String>,
    /// Models found again after being gone.
    pub found_again: Vec<String>,
    /// Models whose files changed in their source (a newer pull), now
    /// served from the new files.
    pub replaced: Vec<String>,
}

/// Applies a scan to the engine (see the module docs). `previous` is the
/// last scan's registration refusals: a refusal that did not change is not
/// logged again.
pub fn apply_scan(engine: &mut Engine, now: f64, mut discovery: Discovery) -> Applied {
    let mut applied = Applied::default();
    let previous = engine.discovery().map(|d| d.register_errors.clone()).unwrap_or_default();
    let mut errors = BTreeMap::new();
    discovery.scanned_at = now;
    for scan in &discovery.sources {
        if scan.error.is_some() {
            continue;
        }
        for m in &scan.models {
            let registered = engine.state().model_id(&m.name).and_then(|id| engine.state().model(id));
            if let Some(reg) = registered {
                // Registered from this source, and its files are others now.
                let root = scan.path.canonicalize().ok();
                let replaced = engine.machine_kind() == MachineKind::Real
                    && reg
                        .path
                        .as_ref()
                        .is_some_and(|p| root.as_ref().is_some_and(|r| p.starts_with(r)) && *p != m.files.origin);
                if replaced {
                    match engine.source_replaced(now, &m.name, m.files.clone()) {
                        Ok(true) => {
                            info!(model = %m.name, source = scan.kind.as_str(), "a model's files changed in its source; now served from the new ones");
                            applied.replaced.push(m.name.clone());
                        }
                        Ok(false) => {}
                        Err(why) => {
                            if previous.get(&m.name) != Some(&why) {
                                warn!(model = %m.name, error = %why, "cannot take a model's new files");
                            }
                            errors.insert(m.name.clone(), why);
                        }
                    }
                    continue;
                }
                if engine.is_source_missing(&m.name) {
                    engine.source_found(now, &m.name);
                    applied.found_again.push(m.name.clone());
                }
                continue;
            }
            if scan.register != SourceRegister::Auto {
                continue;
            }
            let real = engine.machine_kind() == MachineKind::Real;
            let r = RegisterModel {
                model_name: m.name.clone(),
                size_gb: (!real).then(|| bytes_to_gb(m.files.bytes)),
                // Found models start where they are (their origin, the
                // last tier); use, not discovery, moves them up.
                preferred_tier: engine.state().tier_names().last().cloned(),
                path: Some(m.files.origin.clone()),
                files: real.then(|| m.files.clone()),
            };
            match r.apply(engine, now) {
                Ok(_) => {
                    info!(model = %m.name, source = scan.kind.as_str(), gb = bytes_to_gb(m.files.bytes), "registered a model its source found");
                    applied.registered.push(m.name.clone());
                }
                Err(e) => {
                    let why = e.to_string();
                    if previous.get(&m.name) != Some(&why) {
                        warn!(model = %m.name, source = scan.kind.as_str(), error = %why, "cannot register a model its source found");
                    }
                    errors.insert(m.name.clone(), why);
                }
            }
        }
        // Registered models of this source that it no longer finds.
        let Ok(root) = scan.path.canonicalize() else { continue };
        let found_origins: HashSet<&PathBuf> = scan.models.iter().map(|m| &m.files.origin).collect();
        let found_names: HashSet<&str> = scan.models.iter().map(|m| m.name.as_str()).collect();
        let gone: Vec<String> = engine
            .state()
            .iter_models()
            .filter(|(_, m)| m.path.as_ref().is_some_and(|p| p.starts_with(&root) && !found_origins.contains(p)))
            .filter(|(_, m)| !found_names.contains(&*m.name))
            .map(|(_, m)| m.name.to_string())
            .collect();
        for name in gone {
            if engine.is_source_missing(&name) {
                continue;
            }
            let reason = format!("no longer found by the {} source at {}", scan.kind.as_str(), scan.path.display());
            warn!(model = %name, %reason, "model gone from its source; unavailable");
            engine.source_missing(now, &name, reason);
            applied.missing.push(name);
        }
    }
    // A model found by a source (by its files) under another name is there.
    let names: Vec<String> = engine
        .state()
        .iter_models()
        .filter(|(_, m)| {
            engine.is_source_missing(&m.name)
                && m.path
                    .as_ref()
                    .is_some_and(|p| discovery.sources.iter().any(|s| s.models.iter().any(|f| &f.files.origin == p)))
        })
        .map(|(_, m)| m.name.to_string())
        .collect();
    for name in names {
        engine.source_found(now, &name);
        applied.found_again.push(name);
    }
    discovery.register_errors = errors;
    engine.set_discovery(discovery);
    applied
}

/// Scans every source on a blocking thread (with the directories to
/// watch), then applies the scan under the engine's lock.
pub async fn scan_and_apply(shared: &SharedEngine, sources: &Sources) -> (Applied, Vec<PathBuf>) {
    let s = sources.clone();
    let scanned = tokio::task::spawn_blocking(move || (s.scan(), s.watch_dirs())).await;
    let (discovery, dirs) = match scanned {
        Ok(x) => x,
        Err(e) => {
            warn!("model source scan failed: {e}");
            return (Applied::default(), Vec::new());
        }
    };
    for s in &discovery.sources {
        if let Some(e) = &s.error {
            warn!(source = s.kind.as_str(), path = %s.path.display(), "model source cannot be read: {e}");
        }
        for p in &s.problems {
            debug!(source = s.kind.as_str(), "model source entry skipped: {p}");
        }
    }
    let applied = shared.with(|engine, now| apply_scan(engine, now, discovery));
    shared.changed().notify_one();
    (applied, dirs)
}

/// The events that may change what a store holds.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// Watches every directory of `dirs` (re-adding one is harmless: a
/// directory deleted and made again gets its watch back); the first
/// refusal (a full watch table) is logged once.
fn add_watches(watches: &mut Watches, dirs: &[PathBuf], warned: &mut bool) {
    for d in dirs {
        if let Err(e) = watches.add(d, mask())
            && !*warned
        {
            warn!(dir = %d.display(), "cannot watch a model store directory ({e}); relying on the periodic rescan");
            *warned = true;
        }
    }
}

/// Rescans on change and every `rescan_s` until `token` is cancelled (the
/// first scan is the caller's: [`scan_and_apply`] at start). `dirs` are
/// the directories that scan listed.
///
/// A directory is watched only once a scan has listed it, so what was
/// written into it before its watch existed (a new model's folder and its
/// files, created in one go) would be missed: whenever a scan lists
/// directories the one before did not, the sources are scanned once more
/// right after their watches are added. So it goes at start too.
pub async fn watch_sources(shared: SharedEngine, sources: Sources, dirs: Vec<PathBuf>, token: CancellationToken) {
    let every = Duration::from_secs_f64(sources.rescan_s().unwrap_or(60.0).max(0.1));
    let mut warned = false;
    let mut stream = match Inotify::init().and_then(|i| i.into_event_stream(vec![0u8; 64 * 1024])) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(
                "inotify unavailable ({e}); model sources are rescanned every {} s",
                every.as_secs_f64()
            );
            None
        }
    };
    let mut listed: HashSet<PathBuf> = HashSet::new();
    let mut pending = Some(dirs);
    loop {
        // Watch what the last scan listed; scan again at once if it was new.
        let again = match (pending.take(), &stream) {
            (Some(dirs), Some(s)) => {
                add_watches(&mut s.watches(), &dirs, &mut warned);
                let fresh = dirs.iter().any(|d| !listed.contains(d));
                listed = dirs.into_iter().collect();
                fresh
            }
            _ => false,
        };
        if !again {
            let changed = async {
                match stream.as_mut() {
                    Some(s) => {
                        s.next().await;
                        // A quiet period: the rest of a download's events.
                        while let Ok(Some(_)) = tokio::time::timeout(QUIET, s.next()).await {}
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = token.cancelled() => return,
                _ = changed => debug!("model store changed; rescanning"),
                _ = tokio::time::sleep(every) => {}
            }
        } else if token.is_cancelled() {
            return;
        }
        let (applied, dirs) = scan_and_apply(&shared, &sources).await;
        if applied != Applied::default() {
            info!(
                registered = applied.registered.len(),
                gone = applied.missing.len(),
                back = applied.found_again.len(),
                replaced = applied.replaced.len(),
                "model sources rescanned"
            );
        }
        pending = Some(dirs);
    }
}
