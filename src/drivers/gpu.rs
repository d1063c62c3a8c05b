//! `gpu`: a GPU observed through NVML (nvml-wrapper, which loads
//! `libnvidia-ml.so` at run time, so tierd builds and runs on machines
//! without NVIDIA drivers).
//!
//! A GPU tier reports live memory, utilization, temperature and processes.
//! Placing weights into GPU memory is not supported by this driver: it
//! refuses moves, so no policy proposes one (the inference-engine drivers
//! are the tiers that load models onto a GPU). Without a driver every GPU
//! tier is unavailable, with the reason, and nothing else is affected.
//! Readings are cached for [`NVML_MAX_AGE`].

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use serde_json::{Map, Value, json};

use super::files::ModelFiles;
use super::machine::OpenContext;
use super::{Capacity, DriverEvent, JobKey, MoveOrder, TierDriver};
use crate::config::{TierConfig, bytes_to_gb};

/// Longest an NVML reading is used for before it is taken again.
pub const NVML_MAX_AGE: Duration = Duration::from_millis(500);

/// The message a move into a GPU tier is refused with.
pub const GPU_MOVES_UNSUPPORTED: &str =
    "placing model weights into GPU memory is not supported yet: GPU tiers are reported for observation only (tier_status)";

/// NVML, or why it could not be opened.
#[derive(Clone)]
pub enum GpuProbe {
    Ready(Arc<Nvml>),
    Missing(String),
}

impl std::fmt::Debug for GpuProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuProbe::Ready(_) => f.write_str("GpuProbe::Ready"),
            GpuProbe::Missing(r) => write!(f, "GpuProbe::Missing({r})"),
        }
    }
}

impl GpuProbe {
    /// Opens NVML from the system's library.
    pub fn open() -> GpuProbe {
        Self::from(Nvml::init())
    }

    /// Opens NVML from a given library file (tests force the no-driver path).
    pub fn open_from(lib: &OsStr) -> GpuProbe {
        Self::from(Nvml::builder().lib_path(lib).init())
    }

    fn from(r: Result<Nvml, nvml_wrapper::error::NvmlError>) -> GpuProbe {
        match r {
            Ok(n) => GpuProbe::Ready(Arc::new(n)),
            Err(e) => GpuProbe::Missing(format!("NVIDIA driver not available (NVML: {e})")),
        }
    }

    /// Free bytes of GPU `index`, or why it cannot be read.
    pub fn free_bytes(&self, index: u32) -> Result<u64, String> {
        match self {
            GpuProbe::Missing(r) => Err(r.clone()),
            GpuProbe::Ready(n) => n
                .device_by_index(index)
                .and_then(|d| d.memory_info())
                .map(|m| m.free)
                .map_err(|e| format!("GPU {index}: {e}")),
        }
    }

    /// GPU memory of GPU `index` used by the processes in `pids`, from
    /// NVML's per-process figures (compute and graphics); `Ok(None)` when
    /// NVML shows none of them with a figure (no such process on the GPU
    /// yet, or a container where NVML cannot tell).
    pub fn process_used_bytes(&self, index: u32, pids: &std::collections::HashSet<u32>) -> Result<Option<u64>, String> {
        let GpuProbe::Ready(n) = self else {
            return Err(match self {
                GpuProbe::Missing(r) => r.clone(),
                GpuProbe::Ready(_) => String::new(),
            });
        };
        let dev = n.device_by_index(index).map_err(|e| format!("GPU {index}: {e}"))?;
        let mut seen = false;
        let mut used = 0u64;
        let mut counted = std::collections::HashSet::new();
        for list in [dev.running_compute_processes(), dev.running_graphics_processes()] {
            for p in list.map_err(|e| format!("GPU {index}: {e}"))? {
                // A process on both lists is counted once.
                if pids.contains(&p.pid)
                    && counted.insert(p.pid)
                    && let UsedGpuMemory::Used(b) = p.used_gpu_memory
                {
                    seen = true;
                    used += b;
                }
            }
        }
        Ok(seen.then_some(used))
    }

    /// Live facts about GPU `index` for `tier_status`.
    pub fn details(&self, index: u32) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("driver".into(), json!("gpu"));
        m.insert("gpu_index".into(), json!(index));
        m.insert("accepts_models".into(), json!(false));
        let nvml = match self {
            GpuProbe::Missing(r) => {
                m.insert("unavailable_reason".into(), json!(r));
                return m;
            }
            GpuProbe::Ready(n) => n,
        };
        let dev = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                m.insert("unavailable_reason".into(), json!(format!("GPU {index}: {e}")));
                return m;
            }
        };
        if let Ok(name) = dev.name() {
            m.insert("gpu_name".into(), json!(name));
        }
        if let Ok(uuid) = dev.uuid() {
            m.insert("gpu_uuid".into(), json!(uuid));
        }
        match dev.memory_info() {
            Ok(mem) => {
                m.insert("memory_total_gb".into(), json!(bytes_to_gb(mem.total)));
                m.insert("memory_used_gb".into(), json!(bytes_to_gb(mem.used)));
                m.insert("memory_free_gb".into(), json!(bytes_to_gb(mem.free)));
            }
            Err(e) => {
                m.insert("memory_error".into(), json!(e.to_string()));
            }
        }
        if let Ok(u) = dev.utilization_rates() {
            m.insert("utilization_gpu_percent".into(), json!(u.gpu));
            m.insert("utilization_memory_percent".into(), json!(u.memory));
        }
        if let Ok(t) = dev.temperature(TemperatureSensor::Gpu) {
            m.insert("temperature_c".into(), json!(t));
        }
        let mut procs = Vec::new();
        for (kind, list) in [
            ("compute", dev.running_compute_processes()),
            ("graphics", dev.running_graphics_processes()),
        ] {
            for p in list.unwrap_or_default() {
                let used = match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(bytes_to_gb(b)),
                    UsedGpuMemory::Unavailable => None,
                };
                procs.push(json!({"pid": p.pid, "kind": kind, "used_gb": used}));
            }
        }
        m.insert("processes".into(), Value::Array(procs));
        m
    }
}

/// One NVML reading of a GPU: free bytes (or why unknown) and the details.
type Reading = (Result<u64, String>, Map<String, Value>);

/// A GPU tier. See the module docs.
pub struct GpuDriver {
    index: u32,
    probe: Arc<GpuProbe>,
    /// The last reading and when it was taken.
    cache: Mutex<Option<(Instant, Reading)>>,
}

impl std::fmt::Debug for GpuDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDriver").field("index", &self.index).finish()
    }
}

/// Opens a GPU tier: its index comes from the tier's name (`gpu1` is GPU
/// 1), else from its place among the GPU tiers.
pub fn open(ctx: &mut OpenContext, tier: &TierConfig) -> Result<Box<dyn TierDriver>, String> {
    let fallback = ctx.gpu_tiers;
    ctx.gpu_tiers += 1;
    Ok(Box::new(GpuDriver::new(gpu_index(&tier.name, fallback), ctx.gpu())))
}

impl GpuDriver {
    pub fn new(index: u32, probe: Arc<GpuProbe>) -> GpuDriver {
        GpuDriver {
            index,
            probe,
            cache: Mutex::new(None),
        }
    }

    fn readings(&self) -> Reading {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, reading)) = &*cache
            && at.elapsed() < NVML_MAX_AGE
        {
            return reading.clone();
        }
        let reading = (self.probe.free_bytes(self.index), self.probe.details(self.index));
        *cache = Some((Instant::now(), reading.clone()));
        reading
    }
}

impl TierDriver for GpuDriver {
    fn kind(&self) -> &'static str {
        "gpu"
    }

    fn accepts_moves(&self) -> Result<(), String> {
        Err(GPU_MOVES_UNSUPPORTED.to_string())
    }

    fn capacity(&self) -> Capacity {
        match self.readings().0 {
            Ok(free) => Capacity::Free(free),
            Err(e) => Capacity::Unavailable(e),
        }
    }

    fn start_move(&mut self, _now: f64, _order: &MoveOrder<'_>) -> Result<(), String> {
        Err(GPU_MOVES_UNSUPPORTED.to_string())
    }

    fn cancel_move(&mut self, _now: f64, _job: JobKey) {}

    fn progress(&self, _now: f64, _job: JobKey) -> f64 {
        0.0
    }

    fn poll(&mut self, _now: f64, _events: &mut Vec<DriverEvent>) {}

    fn next_event_time(&self) -> Option<f64> {
        None
    }

    fn details(&self) -> Map<String, Value> {
        self.readings().1
    }

    fn check_copy(&self, _model: &str, _files: &ModelFiles) -> Result<(), String> {
        Err("a GPU tier holds no copies of its own".into())
    }
}

/// The GPU index of tier `name` (`gpu0` → 0), or `fallback` when the name
/// carries no number.
pub fn gpu_index(name: &str, fallback: u32) -> u32 {
    let digits: String = name
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_driver_is_reported_unavailable_with_the_reason() {
        let probe = GpuProbe::open_from(OsStr::new("/nonexistent/libnvidia-ml.so.1"));
        let GpuProbe::Missing(reason) = &probe else {
            panic!("a missing library must not open");
        };
        assert!(reason.contains("NVIDIA driver not available"), "{reason}");
        assert!(probe.free_bytes(0).is_err());
        let d = probe.details(0);
        assert_eq!(d["accepts_models"], json!(false));
        assert!(d["unavailable_reason"].as_str().is_some_and(|r| r.contains("NVML")), "{d:?}");
    }

    #[test]
    fn tier_names_give_gpu_indices() {
        assert_eq!(gpu_index("gpu0", 9), 0);
        assert_eq!(gpu_index("gpu12", 9), 12);
        assert_eq!(gpu_index("fastgpu", 3), 3);
    }

    /// Prints real NVML readings: `cargo test -- --ignored nvml_real_readings --nocapture`.
    #[test]
    #[ignore = "needs an NVIDIA GPU and driver"]
    fn nvml_real_readings() {
        let probe = GpuProbe::open();
        let GpuProbe::Ready(nvml) = &probe else {
            panic!("NVML did not open: {probe:?}");
        };
        let count = nvml.device_count().expect("device count");
        assert!(count > 0, "no GPU found");
        for i in 0..count {
            let d = probe.details(i);
            println!("gpu{i}: {}", serde_json::to_string_pretty(&d).unwrap_or_default());
            assert!(d.contains_key("memory_total_gb"), "{d:?}");
            assert!(probe.free_bytes(i).is_ok());
        }
    }
}
