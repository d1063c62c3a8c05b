//! Usage across a restart of the real backend: counts, last access, the
//! decayed frequency, the gap statistics and the hour and day profiles are
//! saved in the state file and come back; the decay goes on over the
//! downtime.

mod real_support;

use real_support::*;
use serde_json::Value;
use tierd::drivers::ModelFiles;
use tierd::server::open::open_real;
use tierd::tiers::Registration;

fn register(e: &mut tierd::tiers::Engine, t: f64, name: &str, path: &std::path::Path) {
    let files = ModelFiles::walk(path, 100).expect("walk");
    e.register(
        t,
        Registration {
            name: name.into(),
            path: Some(path.to_path_buf()),
            files: Some(files),
            ..Registration::default()
        },
    )
    .expect("register");
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[test]
fn usage_survives_a_restart_and_decays_over_the_downtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let weights = root.join("models/m.gguf");
    make_file(&weights, MB, 7);
    let cfg = config(root);
    let t0 = now();
    // Accesses at uneven gaps, so that the gap statistics are not trivial.
    let times = [t0, t0 + 10.0, t0 + 40.0, t0 + 45.0];
    let saved_at = t0 + 50.0;
    let down = 1800.0;
    let later = saved_at + down;
    let before_later = {
        let (mut e, store, _) = engine(&cfg);
        register(&mut e, t0, "m", &weights);
        for &t in &times {
            e.access(t, "m").expect("access");
        }
        let snap = e.snapshot(saved_at);
        store.save(&snap, saved_at).expect("save");
        e.model_json(later, "m").expect("info")["model"].clone()
    };
    // The restart, `down` seconds later.
    let machine = tierd::drivers::Machine::open(&cfg).expect("machine");
    let (mut e, _store, _) = open_real(cfg.clone(), machine, Box::new(tierd::optimizer::UsagePolicy), later).expect("reopen");
    let after = e.model_json(later, "m").expect("info")["model"].clone();
    for k in [
        "usage",
        "last_access",
        "first_access",
        "frequency",
        "temperature",
        "interarrival_mean_s",
        "interarrival_stddev_s",
        "by_hour",
        "by_weekday",
        "registered_at",
    ] {
        // Times go through the JSON state file: equal to the microsecond.
        let same = match (after[k].as_f64(), before_later[k].as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-3,
            _ => after[k] == before_later[k],
        };
        assert!(same, "{k}: before {before_later}\nafter {after}");
    }
    assert_eq!(after["usage"], 4);
    // The frequency is the one at the last access, decayed by the time
    // since, downtime included (half-life 3600 s).
    let mut freq_at_last = 0.0f64;
    let mut last = times[0];
    for &t in &times {
        freq_at_last = freq_at_last * 0.5f64.powf((t - last) / 3600.0) + 1.0;
        last = t;
    }
    let expected = freq_at_last * 0.5f64.powf((later - times[3]) / 3600.0);
    assert!((f(&after, "frequency") - expected).abs() < 1e-3, "{after} vs {expected}");
    assert!(f(&after, "frequency") < 4.0 * 0.75, "decayed over half an hour: {after}");
    let hours: u64 = after["by_hour"].as_array().expect("by_hour").iter().filter_map(Value::as_u64).sum();
    assert_eq!(hours, 4, "{after}");
    // The next access goes on from the restored record.
    e.access(later + 1.0, "m").expect("access");
    let next = e.model_json(later + 1.0, "m").expect("info")["model"].clone();
    assert_eq!(next["usage"], 5);
    assert!(
        (f(&next, "frequency") - (expected * 0.5f64.powf(1.0 / 3600.0) + 1.0)).abs() < 1e-3,
        "{next}"
    );
}

#[test]
fn an_older_state_file_without_the_usage_record_still_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let weights = root.join("models/m.gguf");
    make_file(&weights, MB, 8);
    let cfg = config(root);
    let size = MB;
    std::fs::create_dir_all(root.join("state")).expect("mkdir");
    // What a tierd before the full usage record wrote.
    let old = format!(
        r#"{{"version":1,"models":{{"m":{{"origin":{origin:?},"single":true,"files":[{{"rel":"m.gguf","size":{size}}}],"bytes":{size},"tier":"storage"}}}},
           "engine":{{"limits":{{}},"models":{{"m":{{"usage":3,"last_access":{la},"pinned":true}}}},"jobs":[],"saved_at":{la}}}}}"#,
        origin = weights.display().to_string(),
        la = now() - 60.0
    );
    std::fs::write(root.join("state/tierd-state.json"), old).expect("write");
    let (mut e, _s, _) = engine(&cfg);
    let m = model(&mut e, "m");
    assert_eq!(m["usage"], 3, "{m}");
    assert_eq!(m["pinned"], true, "{m}");
    assert!(m["last_access"].is_number(), "{m}");
}
