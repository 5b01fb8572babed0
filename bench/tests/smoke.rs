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

    let md = std::fs::read_to_string(out.path().join(pantry_bench::report::MARKDOWN)).unwrap();
    for section in ["## Targets", "## Fan-out latency", "## Throughput", "## Handshake rate", "## Memory"] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    assert!(md.contains(&format!("libzmq {}", results.libzmq)));
    let svg = std::fs::read_to_string(out.path().join(pantry_bench::report::CHART)).unwrap();
    assert!(svg.contains("<svg") && svg.contains("Pantry p50"), "{svg}");
}
