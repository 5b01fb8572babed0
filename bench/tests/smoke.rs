//! Runs the whole benchmark harness at N = 2 with one iteration of every
//! scenario, against the debug `pantry-server` and `pantry-client` (built by
//! `make test` before the tests), so that the harness does not rot. It checks
//! that every figure was measured, not how good it is.

use std::path::{Path, PathBuf};

/// A workspace binary next to the test executable (`target/<profile>/`).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace` first", path.display());
    path
}

#[test]
fn the_harness_runs_at_two_agents() {
    let out = tempfile::tempdir().unwrap();
    let config = pantry_bench::Config::smoke(
        bin("pantry-server"),
        bin("pantry-client"),
        PathBuf::from(env!("CARGO_BIN_EXE_pantry-bench")),
        out.path().to_path_buf(),
    );
    assert_eq!(config.admin_bin, bin("pantry-admin"), "pantry-admin is found next to pantry-client");
    let results = pantry_bench::run(&config).expect("the harness runs");

    assert_eq!(results.modes.len(), 2, "CURVE and null");
    for mode in &results.modes {
        assert_eq!(mode.rows.len(), 1);
        let row = &mode.rows[0];
        assert_eq!(row.n, 2);
        for (what, v) in [
            ("Pantry fan-out", row.fanout_p50_ms.pantry),
            ("baseline fan-out", row.fanout_p50_ms.baseline),
            ("Pantry throughput", row.throughput.pantry),
            ("baseline throughput", row.throughput.baseline),
        ] {
            let v = v.unwrap_or_else(|| panic!("{} {what} not measured", mode.name()));
            assert!(v.is_finite() && v > 0.0, "{} {what}: {v}", mode.name());
        }
        assert!(mode.rss0_kib.pantry.is_some() && row.rss_kib.baseline.is_some());
        assert!(mode.idle_client_rss_kib.is_some_and(|k| k > 0));
    }
    assert_eq!(results.handshakes.len(), 2);
    for h in &results.handshakes {
        assert!(h.rate.pantry.is_some_and(|r| r > 0.0), "{h:?}");
        assert!(h.rate.baseline.is_some_and(|r| r > 0.0), "{h:?}");
    }

    let enrollment = results.enrollment.as_ref().expect("the enrollment scenario ran");
    let crowd = &enrollment.crowd;
    assert_eq!(crowd.agents, 20);
    assert_eq!(crowd.succeeded, 20, "every agent enrolled and registered: {crowd:?}");
    assert!(crowd.complete() && crowd.failures.is_empty(), "{crowd:?}");
    assert!(crowd.wall_s.is_some_and(|s| s > 0.0 && s.is_finite()), "{crowd:?}");
    assert!(crowd.token_ms.is_some_and(|ms| ms > 0.0), "{crowd:?}");
    assert!(crowd.enroll_p50_ms.is_some() && crowd.register_p50_ms.is_some(), "{crowd:?}");
    assert!(enrollment.failed_runs.is_empty(), "{:?}", enrollment.failed_runs);
    assert_eq!(enrollment.runs.len(), 1, "one client:token → echo run");
    let run = enrollment.runs[0];
    assert!(run.total_s > 0.0 && run.total_s >= run.token_s + run.enroll_s, "{run:?}");
    assert!(enrollment.median_total_s().is_some_and(|s| s > 0.0));

    let md = std::fs::read_to_string(out.path().join(pantry_bench::report::MARKDOWN)).unwrap();
    for section in
        ["## Targets", "## Fan-out latency", "## Throughput", "## Handshake rate", "## Memory", "## Enrollment"]
    {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    assert!(md.contains(&format!("libzmq {}", results.libzmq)));
    assert!(md.contains("agents enroll with one token") && md.contains("`client:token` → one agent"), "{md}");
    let svg = std::fs::read_to_string(out.path().join(pantry_bench::report::CHART)).unwrap();
    assert!(svg.contains("<svg") && svg.contains("Pantry p50"), "{svg}");
}
