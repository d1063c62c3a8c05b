//! A machine: the drivers of its tiers, fastest first. The simulated machine
//! comes from [`sim::simulated_machine`](super::sim::simulated_machine); a
//! real one is opened here from the configuration's `driver` names
//! ([`Machine::open`]) and, at start, brought into agreement with the state
//! file ([`Machine::reconcile`]).
//!
//! Safety rule: a model always has a complete copy. The origin is only ever
//! read; a `dir` copy counts only once verified and durably renamed; a copy
//! is released only once the placement that no longer needs it is durable.

use std::path::PathBuf;
use std::sync::Arc;

use super::files::ModelFiles;
use super::gpu::GpuProbe;
use super::watch::Watcher;
use super::{DRIVERS, Source, TierDriver};
use crate::config::Config;

/// What kind of hardware a machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineKind {
    /// Simulated tiers: models have sizes but no files, and a newly
    /// registered model can be placed in a fast tier at once.
    Simulated,
    /// Real tiers: models are files, and only a move puts them anywhere
    /// but their origin.
    Real,
}

impl MachineKind {
    /// The name `health` reports (`sim`, `real`).
    pub fn as_str(self) -> &'static str {
        match self {
            MachineKind::Simulated => "sim",
            MachineKind::Real => "real",
        }
    }
}

/// The drivers of a machine's tiers, fastest first.
pub struct Machine {
    pub kind: MachineKind,
    pub drivers: Vec<Box<dyn TierDriver>>,
    /// The look at every origin and copy while running (a real machine).
    pub watch: Option<Watcher>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self.drivers.iter().map(|d| d.kind()).collect();
        f.debug_struct("Machine")
            .field("kind", &self.kind)
            .field("drivers", &kinds)
            .finish()
    }
}

/// What drivers of one machine share while they are opened.
pub struct OpenContext {
    /// GPU tiers opened so far (a GPU tier without a number in its name
    /// takes the next index).
    pub gpu_tiers: u32,
    /// Free-space books of the filesystems under `dir` tiers, shared by
    /// the tiers on one filesystem.
    pub spaces: super::space::FsSpaces,
    probe: Option<Arc<GpuProbe>>,
    open_gpu: Option<Box<dyn FnOnce() -> GpuProbe>>,
}

impl OpenContext {
    /// NVML, opened once for all GPU tiers.
    pub fn gpu(&mut self) -> Arc<GpuProbe> {
        if let Some(p) = &self.probe {
            return p.clone();
        }
        let p = Arc::new(match self.open_gpu.take() {
            Some(open) => open(),
            None => GpuProbe::open(),
        });
        self.probe = Some(p.clone());
        p
    }
}

/// A model as the state file records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub files: ModelFiles,
    /// The tier holding its serving copy, by name.
    pub tier: String,
}

/// A model placed by start-up reconciliation.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub name: String,
    /// The tier that really holds it.
    pub tier: usize,
    pub files: ModelFiles,
    /// Why its files cannot be served, when they cannot.
    pub unavailable: Option<String>,
}

/// What start-up reconciliation found and did.
#[derive(Debug, Clone, Default)]
pub struct ReconcileReport {
    /// Partial copies of interrupted moves (and old copies whose background
    /// removal was interrupted) that were removed.
    pub removed_partials: Vec<PathBuf>,
    /// Complete copies no model's placement refers to, removed.
    pub removed_orphans: Vec<PathBuf>,
    /// Models whose files vanished, with the reason.
    pub unavailable: Vec<(String, String)>,
    /// Models whose copy was damaged (or whose tier is gone) and that fell
    /// back to storage.
    pub fell_back: Vec<(String, String)>,
    /// Models being put back in their tier (re-pinned in memory).
    pub restoring: Vec<String>,
    /// Entries in tier directories that tierd does not know (left alone).
    pub unknown_entries: Vec<PathBuf>,
}

impl Machine {
    pub fn new(kind: MachineKind, drivers: Vec<Box<dyn TierDriver>>) -> Machine {
        let watch = match kind {
            MachineKind::Real => Watcher::spawn(),
            MachineKind::Simulated => None,
        };
        Machine { kind, drivers, watch }
    }

    /// Opens the real drivers of `cfg`'s tiers (the `driver` of each
    /// `[[tiers]]` entry; by default `pagecache` for the first, `storage`
    /// for the last and `dir` between).
    pub fn open(cfg: &Config) -> Result<Machine, String> {
        Self::open_with_gpu(cfg, GpuProbe::open)
    }

    /// As [`Machine::open`], with NVML opened by `gpu` (tests force the
    /// no-driver path).
    pub fn open_with_gpu(cfg: &Config, gpu: impl FnOnce() -> GpuProbe + 'static) -> Result<Machine, String> {
        let n = cfg.tiers.len();
        let mut ctx = OpenContext {
            gpu_tiers: 0,
            spaces: Default::default(),
            probe: None,
            open_gpu: Some(Box::new(gpu)),
        };
        let mut drivers = Vec::with_capacity(n);
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (i, t) in cfg.tiers.iter().enumerate() {
            let last = i + 1 == n;
            let default = if last {
                "storage"
            } else if i == 0 {
                "pagecache"
            } else {
                "dir"
            };
            let name = t.driver.as_deref().unwrap_or(default);
            let Some((_, open)) = DRIVERS.iter().find(|(n, _)| *n == name) else {
                let known: Vec<&str> = DRIVERS.iter().map(|(n, _)| *n).collect();
                return Err(format!("tier {:?}: unknown driver {name:?} (known: {})", t.name, known.join(", ")));
            };
            if last != (name == "storage") {
                return Err(format!(
                    "tier {:?}: the last tier, and only it, must use the storage driver",
                    t.name
                ));
            }
            let driver = open(&mut ctx, t).map_err(|e| format!("tier {:?}: {e}", t.name))?;
            // A tier that serves copies of its own names their directory as
            // the source of the empty name: no two may overlap.
            if let Source::Copy(root) = driver.source_of("") {
                dirs.push(root);
            }
            drivers.push(driver);
        }
        for (i, a) in dirs.iter().enumerate() {
            if dirs.iter().skip(i + 1).any(|b| a.starts_with(b) || b.starts_with(a)) {
                return Err(format!("dir tier {} overlaps another dir tier", a.display()));
            }
        }
        Ok(Machine::new(MachineKind::Real, drivers))
    }

    /// Start-up: brings the recorded placement and the files into
    /// agreement. Removes partial copies; for each model, keeps its tier if
    /// that tier's copy is complete (else it falls back to storage), removes
    /// copies of it elsewhere, marks it unavailable where its origin is
    /// needed and damaged, and puts it back in its tier (re-pins).
    pub fn reconcile(
        &mut self,
        tier_names: &[String],
        records: &std::collections::BTreeMap<String, Record>,
    ) -> Result<(Vec<Placed>, ReconcileReport), String> {
        let mut report = ReconcileReport::default();
        let known = |name: &str| records.contains_key(name);
        for d in &mut self.drivers {
            let r = d.startup(&known)?;
            report.removed_partials.extend(r.removed_partials);
            report.unknown_entries.extend(r.unknown_entries);
        }
        let last = self.drivers.len().saturating_sub(1);
        let mut placed = Vec::with_capacity(records.len());
        for (name, rec) in records {
            let mut serving = match tier_names.iter().position(|t| *t == rec.tier) {
                Some(t) => t,
                None => {
                    tracing::warn!(model = %name, tier = %rec.tier, "tier no longer configured; model back in storage");
                    report
                        .fell_back
                        .push((name.clone(), format!("tier {} is no longer configured", rec.tier)));
                    last
                }
            };
            // A damaged copy is dropped, unless the origin is damaged too:
            // then it may hold the last bytes there are, and is kept (the
            // model unavailable).
            let mut kept_damaged = None;
            if serving != last
                && let Err(problem) = self.drivers[serving].check_copy(name, &rec.files)
            {
                match rec.files.origin_problem() {
                    Some(origin) => kept_damaged = Some(format!("{problem}, and {origin}; the copy is kept")),
                    None => {
                        report.fell_back.push((name.clone(), problem));
                        serving = last;
                    }
                }
            }
            // Copies in tiers other than the serving one are leftovers of a
            // move interrupted after its rename (or a damaged copy): remove them.
            for (i, d) in self.drivers.iter_mut().enumerate() {
                if i != serving
                    && let Some(p) = d.remove_leftover(name)?
                {
                    report.removed_orphans.push(p);
                }
            }
            let origin_problem = rec.files.origin_problem();
            let unavailable = match (kept_damaged, &origin_problem, self.drivers[serving].source_of(name)) {
                (Some(why), _, _) => Some(why),
                (None, Some(p), Source::Origin) => Some(p.clone()),
                _ => None,
            };
            if let Some(p) = &unavailable {
                report.unavailable.push((name.clone(), p.clone()));
            } else {
                self.drivers[serving].restore(name, &rec.files);
                if self.drivers[serving].kind() == "pagecache" {
                    report.restoring.push(name.clone());
                }
            }
            if tier_names.get(serving) != Some(&rec.tier) {
                tracing::warn!(model = %name, from = %rec.tier, to = ?tier_names.get(serving), "placement corrected at start");
            }
            let mut files = rec.files.clone();
            files.fill_missing_ids();
            placed.push(Placed {
                name: name.clone(),
                tier: serving,
                files,
                unavailable,
            });
        }
        Ok((placed, report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_example_config_parses_and_names_known_drivers() {
        let cfg = Config::from_toml(include_str!("../../fixtures/real.toml")).expect("fixtures/real.toml parses");
        assert_eq!(cfg.state_dir.as_deref(), Some(Path::new("/var/lib/tierd")));
        let drivers: Vec<_> = cfg.tiers.iter().map(|t| t.driver.clone().unwrap_or_default()).collect();
        assert_eq!(drivers, ["gpu", "pagecache", "dir", "storage"]);
        for d in &drivers {
            assert!(DRIVERS.iter().any(|(n, _)| n == d), "{d} is a known driver");
        }
    }

    #[test]
    fn bad_driver_layouts_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let bad = [
            "[[tiers]]\nname='ram'\ndriver='floppy'\nmax_gb=1.0\n[[tiers]]\nname='storage'\ndriver='storage'\n",
            "[[tiers]]\nname='swap'\ndriver='dir'\nmax_gb=1.0\n[[tiers]]\nname='storage'\ndriver='storage'\n",
            "[[tiers]]\nname='ram'\ndriver='pagecache'\nmax_gb=1.0\n[[tiers]]\nname='last'\ndriver='pagecache'\n",
        ];
        for text in bad {
            let cfg = Config::from_toml(text).expect("parses");
            assert!(Machine::open(&cfg).is_err(), "{text}");
        }
        let a = root.path().join("a");
        let overlap = format!(
            "[[tiers]]\nname='x'\ndriver='dir'\npath={a:?}\nmax_gb=1.0\n[[tiers]]\nname='y'\ndriver='dir'\npath={:?}\nmax_gb=1.0\n[[tiers]]\nname='storage'\n",
            a.join("b")
        );
        let cfg = Config::from_toml(&overlap).expect("parses");
        let err = Machine::open(&cfg).expect_err("overlapping dir tiers");
        assert!(err.contains("overlaps"), "{err}");
    }
}
