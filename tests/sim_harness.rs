//! The simulation harness: the lower bound holds, runs are deterministic,
//! CSV errors name file and line, and the ServeGen and Azure converters work
//! on the real data when it is present.

mod skip;

use std::path::Path;

use proptest::prelude::*;
use tierd::config::Config;
use tierd::optimizer::SIM_POLICY_NAMES;
use tierd::sim::bound::{Pfoo, lower_bound_s};
use tierd::sim::servegen::{DEFAULT_INPUT, ServegenSpec, convert};
use tierd::sim::synth::{Family, GenSpec, generate};
use tierd::sim::{Catalog, DEFAULT_SIM_CONFIG, MoveMode, Trace, compare};

const SMALL: &str = r#"
max_single_model_gb = 64.0
[[tiers]]
name = "ram"
max_gb = 8.0
access_s_per_gb = 0.1
[[tiers]]
name = "swap"
max_gb = 12.0
access_s_per_gb = 0.5
[[tiers]]
name = "storage"
access_s_per_gb = 2.0
[moves]
promote_s_per_gb = 0.3
demote_s_per_gb = 0.2
max_concurrent = 2
"#;

fn all() -> Vec<String> {
    SIM_POLICY_NAMES.iter().map(|s| s.to_string()).collect()
}

#[test]
fn pfoo_takes_shortest_intervals_first_and_the_last_fractionally() {
    // A(2) B(4) A B A: intervals A:2 (2 GB x 2), B:2 (4 GB x 2), A:2.
    let catalog = Catalog {
        names: vec!["A".into(), "B".into()],
        sizes_gb: vec![2.0, 4.0],
    };
    let trace = Trace {
        times: vec![0.0, 1.0, 2.0, 3.0, 4.0],
        models: vec![0, 1, 0, 1, 0],
    };
    let p = Pfoo::new(&catalog, &trace);
    assert_eq!(p.total_gb(), 14.0);
    assert_eq!(p.missed_gb(0.0), 14.0);
    // Budget 1 GB x 5 = 5: one A interval (4) and 1/2 GB of the next (cost 2 per GB).
    assert!((p.missed_gb(1.0) - (14.0 - 2.0 - 0.5)).abs() < 1e-12);
    // Enough for everything: only the first accesses miss.
    assert!((p.missed_gb(100.0) - 6.0).abs() < 1e-12);
}

#[test]
fn lower_bound_combines_tiers() {
    let cfg = Config::from_toml(SMALL).unwrap();
    let catalog = Catalog {
        names: vec!["A".into()],
        sizes_gb: vec![2.0],
    };
    let trace = Trace {
        times: vec![0.0, 1.0],
        models: vec![0, 0],
    };
    // B = 4 GB; LB(8) = LB(20) = 2 GB (the first access).
    let lb = lower_bound_s(&cfg, &catalog, &trace);
    assert!((lb - (0.1 * 4.0 + 0.4 * 2.0 + 1.5 * 2.0)).abs() < 1e-12, "{lb}");
}

fn arb_workload() -> impl Strategy<Value = (Vec<f64>, Vec<(f64, usize)>)> {
    (2usize..6).prop_flat_map(|n| {
        (
            proptest::collection::vec(prop_oneof![Just(1.0), Just(2.5), Just(4.0), Just(7.0), Just(12.0)], n),
            proptest::collection::vec((0.0f64..20.0, 0..n), 1..40),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn lower_bound_is_below_every_policy((sizes, steps) in arb_workload()) {
        let cfg = Config::from_toml(SMALL).unwrap();
        let catalog = Catalog {
            names: (0..sizes.len()).map(|i| format!("m{i}")).collect(),
            sizes_gb: sizes,
        };
        let mut t = 0.0;
        let mut trace = Trace::default();
        for (gap, m) in steps {
            t += gap;
            trace.times.push(t);
            trace.models.push(m as u32);
        }
        for moves in [MoveMode::Timed, MoveMode::Instant] {
            let report = compare(&cfg, &catalog, &trace, &all(), moves).unwrap();
            for r in &report.runs {
                prop_assert!(
                    report.lower_bound_s <= r.total_load_s + 1e-9,
                    "{} {:?}: {} < bound {}", r.policy, moves, r.total_load_s, report.lower_bound_s
                );
            }
        }
    }
}

#[test]
fn two_runs_give_identical_json() {
    let cfg = Config::from_toml(DEFAULT_SIM_CONFIG).unwrap();
    let spec = GenSpec {
        family: Family::Diurnal,
        models: 60,
        accesses: 6000,
        days: 3.0,
        ..GenSpec::default()
    };
    let (catalog, trace) = generate(&spec).unwrap();
    let a = compare(&cfg, &catalog, &trace, &all(), MoveMode::Timed).unwrap().to_json();
    let (catalog2, trace2) = generate(&spec).unwrap();
    let b = compare(&cfg, &catalog2, &trace2, &all(), MoveMode::Timed).unwrap().to_json();
    assert_eq!(a, b);
    let v: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(v["accesses"], trace.len());
    assert_eq!(v["policies"].as_array().unwrap().len(), 5);
    assert_eq!(v["policies"][0]["policy"], "lru");
    assert_eq!(v["policies"][0]["moves"], "timed");
    let hits = v["policies"][0]["hits_by_tier"].as_object().unwrap();
    assert_eq!(hits.values().map(|h| h.as_u64().unwrap()).sum::<u64>(), trace.len() as u64);
    // The plot is an SVG with one line per policy.
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("plot.svg");
    compare(&cfg, &catalog, &trace, &all(), MoveMode::Instant)
        .unwrap()
        .plot(&svg, "harness")
        .unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(80)]);
    for p in SIM_POLICY_NAMES {
        assert!(text.contains(&format!("{p} (instant)")), "legend lacks {p}");
    }
    // The round trip through CSV gives the same workload.
    let c2 = Catalog::parse(Path::new("c.csv"), &catalog.to_csv()).unwrap();
    let t2 = Trace::parse(Path::new("t.csv"), &trace.to_csv(&catalog), &c2).unwrap();
    assert_eq!((c2, t2), (catalog, trace));
}

#[test]
fn csv_errors_name_the_file_and_line() {
    let p = Path::new("cat.csv");
    let err = |text: &str| Catalog::parse(p, text).unwrap_err().to_string();
    assert_eq!(
        err("name,size\n"),
        "cat.csv:1: expected the header `model_name,size_gb`, found `name,size`"
    );
    assert_eq!(err("model_name,size_gb\na,1\nb,x\n"), "cat.csv:3: size_gb `x` is not a number");
    assert_eq!(
        err("model_name,size_gb\na,1\na,2\n"),
        "cat.csv:3: model \"a\" is listed twice (first on line 2)"
    );
    assert_eq!(
        err("model_name,size_gb\na,-1\n"),
        "cat.csv:2: size_gb must be a non-negative number, got -1"
    );
    assert_eq!(
        err("model_name,size_gb\na,1,2\n"),
        "cat.csv:2: expected 2 fields `model_name,size_gb`, found `a,1,2`"
    );
    assert!(err("").contains("empty file"));
    let catalog = Catalog::parse(p, "model_name,size_gb\na,1\n").unwrap();
    let t = Path::new("trace.csv");
    let terr = |text: &str| Trace::parse(t, text, &catalog).unwrap_err().to_string();
    assert_eq!(
        terr("timestamp_s,model_name\n1,a\n0.5,a\n"),
        "trace.csv:3: timestamps must be ascending: 0.5 comes after 1"
    );
    assert_eq!(
        terr("timestamp_s,model_name\n1,b\n"),
        "trace.csv:2: model \"b\" is not in the catalog"
    );
    assert_eq!(
        terr("timestamp_s,model_name\nnow,a\n"),
        "trace.csv:2: timestamp_s `now` is not a number"
    );
    assert_eq!(
        terr("timestamp_s,model_name\nNaN,a\n"),
        "trace.csv:2: timestamp_s must be finite, got NaN"
    );
    let missing = Catalog::load(Path::new("/nonexistent/catalog.csv")).unwrap_err().to_string();
    assert!(missing.starts_with("/nonexistent/catalog.csv: "), "{missing}");
}

#[test]
fn servegen_conversion_of_one_day() {
    let input = Path::new(DEFAULT_INPUT);
    if !input.exists() {
        skip::skip(
            "servegen_conversion_of_one_day",
            &format!("ServeGen data not found at {DEFAULT_INPUT}"),
        );
        return;
    }
    let spec = ServegenSpec {
        input: input.to_path_buf(),
        days: (1, 1),
        accesses: 20_000.0,
        seed: 1,
    };
    let (catalog, trace) = convert(&spec).unwrap();
    assert!(catalog.names.len() > 100, "{} clients", catalog.names.len());
    assert!(catalog.names.iter().any(|n| n.starts_with("m-large-")));
    assert!(catalog.sizes_gb.iter().all(|s| (0.5..=40.0).contains(s)));
    let n = trace.len() as f64;
    assert!((n - 20_000.0).abs() < 2_000.0, "{n} accesses");
    assert!(trace.times.windows(2).all(|w| w[0] <= w[1]));
    assert!(trace.times.iter().all(|t| (0.0..86_400.0).contains(t)));
    let again = convert(&spec).unwrap();
    assert_eq!(again, (catalog, trace));
}

#[test]
fn azure_conversion_keeps_every_real_arrival() {
    use tierd::sim::azure::{AzureSpec, default_inputs};
    let inputs = default_inputs();
    if let Some(missing) = inputs.iter().find(|p| !p.exists()) {
        skip::skip(
            "azure_conversion_keeps_every_real_arrival",
            &format!("Azure trace not found at {}", missing.display()),
        );
        return;
    }
    let spec = AzureSpec {
        inputs,
        models: 20,
        zipf_s: 1.0,
        hours: 2,
        seed: 1,
    };
    let (catalog, trace) = tierd::sim::azure::convert(&spec).unwrap();
    assert_eq!(catalog.names.len(), 40);
    assert!(catalog.names[0].starts_with("code-") && catalog.names[39].starts_with("conv-"));
    // 8,819 + 19,366 requests in the trace's hour, replayed twice.
    assert_eq!(trace.len(), 2 * (8_819 + 19_366));
    assert!(trace.times.windows(2).all(|w| w[0] <= w[1]));
    let span = trace.times.last().copied().unwrap_or(0.0);
    assert!((7_000.0..7_400.0).contains(&span), "two hours, not {span} s");
    let again = tierd::sim::azure::convert(&spec).unwrap();
    assert_eq!(again, (catalog.clone(), trace.clone()));
    // The replay runs on it, and the bound holds.
    let cfg = Config::from_toml(DEFAULT_SIM_CONFIG).unwrap();
    let report = compare(&cfg, &catalog, &trace, &["lru".into(), "tierd".into()], MoveMode::Timed).unwrap();
    for r in &report.runs {
        assert!(r.total_load_s >= report.lower_bound_s, "{} below the bound", r.policy);
    }
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    sim: tierd::sim::cli::SimArgs,
}

#[test]
fn the_command_line_parses() {
    use clap::{CommandFactory, Parser};
    use tierd::sim::cli::{ConvertSource, ReportFormat, SimCommand};
    Cli::command().debug_assert();
    let c = Cli::try_parse_from([
        "tierd-sim",
        "--catalog",
        "c.csv",
        "--trace",
        "t.csv",
        "--policy",
        "all",
        "--moves",
        "instant",
        "--report",
        "json",
        "--plot",
        "p.svg",
    ])
    .unwrap();
    assert!(c.sim.command.is_none());
    assert_eq!(c.sim.run.moves, MoveMode::Instant);
    assert_eq!(c.sim.run.report, ReportFormat::Json);
    let c = Cli::try_parse_from(["tierd-sim", "gen", "--family", "diurnal", "--out", "/tmp/x"]).unwrap();
    assert!(matches!(c.sim.command, Some(SimCommand::Gen(ref g)) if g.family == Family::Diurnal));
    let c = Cli::try_parse_from(["tierd-sim", "convert", "servegen", "--days", "2-4", "--out", "/tmp/x"]).unwrap();
    assert!(matches!(
        c.sim.command,
        Some(SimCommand::Convert { source: ConvertSource::Servegen(ref s) }) if s.days == (2, 4)
    ));
    assert!(Cli::try_parse_from(["tierd-sim", "convert", "servegen", "--days", "4-2", "--out", "x"]).is_err());
    let c = Cli::try_parse_from([
        "tierd-sim",
        "convert",
        "azure",
        "--input",
        "a.csv,b.csv",
        "--hours",
        "3",
        "--out",
        "x",
    ])
    .unwrap();
    assert!(matches!(
        c.sim.command,
        Some(SimCommand::Convert { source: ConvertSource::Azure(ref a) }) if a.input.len() == 2 && a.hours == 3 && a.models == 100
    ));
    assert!(tierd::sim::cli::policy_list("lru,nope").is_err());
    assert_eq!(tierd::sim::cli::policy_list("all").unwrap().len(), 5);
}
