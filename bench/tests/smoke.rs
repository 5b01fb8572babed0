//! Runs the whole benchmark at N = 2 with one iteration of every
//! scenario (a few agents for enrollment, presence, the job store,
//! metrics, and the cluster: 3 × 3 agents, 2 revocations, when etcd is
//! installed; a rollout over 20 agents and a cancel on 10; `-F` over
//! 1,000 registry entries and facts reports from 20 agents; 50 signed
//! requests of each kind and a signed fan-out to 20 verifying agents; 30
//! agents in two child processes of the bench against the relay and a
//! server restart),
//! against the debug `pantry-server`, `pantry-client` and `pantry-admin`
//! (built by `make test` before the tests), so that the bench does not
//! rot. It checks that every figure was measured, not how good it is, and
//! that `latest.json` reads back as the next run's previous one.

use std::path::{Path, PathBuf};

use pantry_bench::common::env::Binaries;
use pantry_bench::report::{PreviousRun, CHART, JSON, MARKDOWN};
use pantry_bench::Config;

/// A workspace binary next to the test executable (`target/<profile>/`).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace` first", path.display());
    path
}

#[test]
fn the_bench_runs_at_two_agents() {
    let out = tempfile::tempdir().unwrap();
    let bins = Binaries {
        server: bin("pantry-server"),
        client: bin("pantry-client"),
        admin: bin("pantry-admin"),
        bench: PathBuf::from(env!("CARGO_BIN_EXE_pantry-bench")),
    };
    let results = pantry_bench::run(&Config::smoke(bins, out.path().to_path_buf())).expect("the bench runs");

    let relay = results.fanout_throughput.as_ref().expect("Pantry against the relay ran");
    assert_eq!(relay.modes.len(), 2, "CURVE and null");
    for mode in &relay.modes {
        assert_eq!(mode.rows.len(), 1);
        let row = &mode.rows[0];
        assert_eq!(row.n, 2);
        for (what, v) in [
            ("Pantry fan-out", row.fanout_p50_ms.pantry),
            ("baseline fan-out", row.fanout_p50_ms.baseline),
            ("Pantry throughput", row.throughput.pantry),
            ("baseline throughput", row.throughput.baseline),
            ("Pantry CPU per answer", row.cpu_us_per_answer.pantry),
            ("Pantry CPU per request", row.cpu_us_per_request.pantry),
            ("Pantry set-up", row.setup_s.pantry),
        ] {
            let v = v.unwrap_or_else(|| panic!("{} {what} not measured", mode.name()));
            assert!(v.is_finite() && v > 0.0, "{} {what}: {v}", mode.name());
        }
        assert!(mode.rss0_kib.pantry.is_some() && row.rss_kib.baseline.is_some());
        assert!(mode.peak_rss_kib.pantry.is_some() && mode.kib_per_largest().pantry.is_some());
        assert!(mode.idle_client_rss_kib.is_some_and(|k| k > 0));
    }
    let handshakes = &results.handshake.as_ref().expect("the handshake scenario ran").rows;
    assert_eq!(handshakes.len(), 2);
    for h in handshakes {
        assert!(h.rate.pantry.is_some_and(|r| r > 0.0), "{h:?}");
        assert!(h.rate.baseline.is_some_and(|r| r > 0.0), "{h:?}");
        assert!(h.cpu_us.pantry.is_some(), "{h:?}");
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

    let presence = results.presence.as_ref().expect("the presence scenario ran");
    assert!(presence.failures.is_empty(), "{:?}", presence.failures);
    let echo = presence.echo.as_ref().expect("the echo with killed agents ran");
    assert_eq!((echo.agents, echo.killed.len(), echo.runs.len()), (10, 2, 2), "{echo:?}");
    assert_eq!(echo.correct_runs(), 2, "every echo answered by the 8 and naming the 2 offline: {echo:?}");
    assert!(echo.median_ms().is_some_and(|ms| ms > 0.0 && ms < 10_000.0), "{echo:?}");
    let cli = echo.cli.as_ref().expect("pantry-admin echo ran");
    assert_eq!((cli.exit_code, cli.offline_lines), (Some(1), 2), "{cli:?}");
    assert_eq!(presence.kills.len(), 1, "one SIGKILL run");
    assert!(presence.median_kill_ms().is_some_and(|ms| ms > 0.0 && ms < 10_000.0));
    let restart = presence.restart.as_ref().expect("the restart ran");
    assert_eq!((restart.agents, restart.gap_listed), (20, 20), "status after the restart lists all: {restart:?}");
    assert!(restart.all_online_s.is_some() && restart.online_at_end == 20, "{restart:?}");
    assert_eq!(restart.echo_answers, Some(20), "every agent answers after the restart: {restart:?}");
    assert!(restart.kib_per_agent().is_some() && restart.idle_cpu_us_per_agent_s.is_some(), "{restart:?}");

    let jobs = results.jobs.as_ref().expect("the job-store scenario ran");
    assert!(jobs.failures.is_empty(), "{:?}", jobs.failures);
    assert_eq!(jobs.rows.len(), 1, "store on vs off at N = 2");
    let row = &jobs.rows[0];
    for (what, v) in [
        ("fan-out, store on", row.fanout_p50_ms.pantry),
        ("fan-out, store off", row.fanout_p50_ms.baseline),
        ("throughput, store on", row.throughput.pantry),
        ("throughput, store off", row.throughput.baseline),
    ] {
        let v = v.unwrap_or_else(|| panic!("{what} not measured"));
        assert!(v.is_finite() && v > 0.0, "{what}: {v}");
    }
    let fill = jobs.fill.as_ref().expect("the store was filled");
    assert_eq!((fill.jobs, fill.lost), (300, 0), "{fill:?}");
    assert!(fill.written_s.is_some(), "the last job was committed: {fill:?}");
    assert_eq!((fill.list_ms.len(), fill.listed), (5, 20), "{fill:?}");
    assert!(fill.median_list_ms().is_some_and(|ms| ms > 0.0) && fill.cli_ms.is_some(), "{fill:?}");
    let db = jobs.db.as_ref().expect("the database size was measured");
    assert_eq!((db.agents, db.echoes, db.complete), (10, 3, 3), "{db:?}");
    // A few small jobs may fit in the pages the file has already.
    assert!(db.per_job_bytes().is_some_and(|b| b >= 0.0) && db.after.0 > 0, "{db:?}");

    let metrics = results.metrics.as_ref().expect("the metrics scenario ran");
    assert!(metrics.failures.is_empty(), "{:?}", metrics.failures);
    assert_eq!(metrics.rows.len(), 1, "metrics on vs off at N = 2");
    let row = &metrics.rows[0];
    for (what, v) in [
        ("fan-out, metrics on", row.fanout_p50_ms.pantry),
        ("fan-out, metrics off", row.fanout_p50_ms.baseline),
        ("throughput, metrics on", row.throughput.pantry),
        ("throughput, metrics off", row.throughput.baseline),
    ] {
        let v = v.unwrap_or_else(|| panic!("{what} not measured"));
        assert!(v.is_finite() && v > 0.0, "{what}: {v}");
    }
    assert!(metrics.background_scrapes > 0 && metrics.background_failed == 0, "{metrics:?}");
    let scrape = metrics.scrape.as_ref().expect("/metrics was scraped");
    assert_eq!((scrape.agents, scrape.ms.len(), scrape.healthz), (10, 3, Some(200)), "{scrape:?}");
    assert_eq!(scrape.online, Some(10), "pantry_clients{{state=\"online\"}} shows every agent: {scrape:?}");
    assert!(scrape.online_wait_s.is_some() && scrape.p50_ms().is_some_and(|ms| ms > 0.0), "{scrape:?}");
    assert!(scrape.max_body_bytes().is_some_and(|b| b > 1000) && scrape.samples > 10, "{scrape:?}");

    let cluster = results.cluster.as_ref().expect("the cluster scenario ran (or said why not)");
    let etcd_installed = pantry_bench::common::etcd::binary().is_some();
    if etcd_installed {
        assert!(cluster.skipped.is_none() && cluster.failures.is_empty(), "{cluster:?}");
        let import = cluster.import.as_ref().expect("keys:import ran");
        assert!(import.keys > 9 && import.said.contains("imported"), "{import:?}");
        let h = cluster.handshake.as_ref().expect("handshakes against the cluster");
        assert!(h.rate.pantry.is_some_and(|r| r > 0.0) && h.rate.baseline.is_some_and(|r| r > 0.0), "{h:?}");
        // What the test checks is that everything was measured.
        let f = cluster.fanout.as_ref().expect("fan-out across servers");
        assert_eq!((f.per_server, f.agents()), (3, 9), "{f:?}");
        for (what, v) in [("3 servers, the listed agents", f.p50_listed_ms.pantry), ("1 server", f.p50_ms.baseline)] {
            let v = v.unwrap_or_else(|| panic!("fan-out on {what} not measured"));
            assert!(v.is_finite() && v > 0.0, "fan-out on {what}: {v}");
        }
        let r = cluster.revocation.as_ref().expect("revocations");
        assert_eq!((r.tries, r.cut_ms.len(), r.not_cut, r.answer_ms.len()), (2, 2, 0, 2), "{r:?}");
        assert!(r.max_ms().is_some_and(|ms| ms > 0.0 && ms < 5000.0), "{r:?}");
        let fo = cluster.failover.as_ref().expect("the failover ran");
        assert_eq!(fo.per_server, 3, "{fo:?}");
        assert!(fo.moves.get(1).is_some_and(|&m| m >= 3) && fo.failed_moves == 0, "b's agents moved: {fo:?}");
        assert!(fo.answered >= 1 && fo.first_answer_p50_s.is_some_and(|s| s > 0.0), "answers through c: {fo:?}");
        assert_eq!(fo.status_listed, 9, "status on a lists all 9: {fo:?}");
        assert!(fo.echo_all.as_ref().is_some_and(|e| e.answers >= 1), "{fo:?}");
        assert!(
            !fo.echoes.is_empty() && fo.echoes.iter().all(|e| e.answered + e.offline + e.silent == e.asked),
            "{fo:?}"
        );
    } else {
        assert!(cluster.skipped.as_deref().is_some_and(|why| why.contains("etcd")), "{cluster:?}");
    }

    let rollout = results.rollout.as_ref().expect("the rollout scenario ran");
    assert!(rollout.failures.is_empty(), "{:?}", rollout.failures);
    assert_eq!((rollout.agents, rollout.runs.len()), (20, 1), "{rollout:?}");
    let run = &rollout.runs[0];
    assert_eq!((run.failing.len(), run.budget, run.batches), (4, 1, 4), "{run:?}");
    assert!(run.stopped_right, "stopped after the batch that crossed the budget: {run:?}");
    assert!(rollout.gap_p50_ms().is_some_and(|ms| ms > 0.0), "a gap between two batches at least: {rollout:?}");
    let cancel = rollout.cancel.as_ref().expect("job cancel ran");
    assert_eq!((cancel.agents, cancel.held, cancel.cancelled, cancel.admin_cancelled), (10, 10, 10, 10), "{cancel:?}");
    assert_eq!(cancel.store_cancelled, 10, "job ID says cancelled for each: {cancel:?}");
    assert!(cancel.agent_max_ms.is_some() && cancel.admin_max_ms.is_some(), "{cancel:?}");

    let facts = results.facts.as_ref().expect("the facts scenario ran");
    assert!(facts.failures.is_empty(), "{:?}", facts.failures);
    let r = facts.resolution.as_ref().expect("-F over the registry");
    assert_eq!((r.entries, r.queries.len()), (1000, 4), "{r:?}");
    for q in &r.queries {
        assert!(q.all_exact() && q.ms.len() == 3, "every answer listed exactly the clients expected: {q:?}");
        assert!(q.p50_ms().is_some_and(|ms| ms > 0.0) && q.answer_frames >= q.listed + 2, "{q:?}");
    }
    let two = r.two().expect("the issue's two expressions");
    assert_eq!(two.expected, pantry_bench::common::facts::expected(1000));
    assert!(two.listed > 200 && two.listed < 400, "about 30% of 1,000: {two:?}");
    assert_eq!((r.unfiltered().map(|q| q.listed), r.few().map(|q| q.listed)), (Some(1000), Some(1)), "{r:?}");
    assert!(r.entry_bytes >= 1024 && r.rss_kib.is_some() && r.db_bytes > 1_000_000, "{r:?}");
    let (with, without) = (facts.with.as_ref().expect("with facts"), facts.without.as_ref().expect("without"));
    assert_eq!((with.agents, with.kept, with.refused, with.with_facts), (20, 20, 0, 20), "{with:?}");
    assert_eq!((without.agents, without.kept, without.with_facts), (20, 0, 0), "{without:?}");
    assert!(with.facts_bytes >= 4096 && with.kib_per_agent().is_some(), "{with:?}");
    assert!(facts.facts_kib_per_agent().is_some(), "{facts:?}");

    let signing = results.signing.as_ref().expect("the signing scenario ran");
    assert!(signing.failures.is_empty(), "{:?}", signing.failures);
    assert_eq!(signing.costs.len(), 2, "Exec and Echo");
    for c in &signing.costs {
        assert_eq!((c.accepted, c.refused), (200, 0), "2 rounds of 50, verified twice each: {c:?}");
        for (what, v) in [("sign", c.sign()), ("verify", c.verify()), ("decode + verify", c.decode_verify())] {
            assert!(v.is_some_and(|us| us.is_finite() && us > 0.0), "{} {what}: {c:?}", c.kind);
        }
        assert!(c.added_bytes() > 300, "{c:?}");
    }
    assert!(signing.exec().and_then(|c| c.full_seen_us).is_some_and(|us| us > 0.0), "{signing:?}");
    let f = signing.fanout.as_ref().expect("the signed fan-out ran");
    assert_eq!((f.agents, f.attempted.pantry, f.attempted.baseline), (20, 1, 1), "{f:?}");
    assert!(f.all_verified(), "every signed answer verified and a success, none verified unsigned: {f:?}");
    assert!(f.p50_ms.pantry.is_some_and(|ms| ms.is_finite() && ms > 0.0), "{f:?}");
    assert!(f.p50_ms.baseline.is_some_and(|ms| ms.is_finite() && ms > 0.0), "{f:?}");

    let scale = results.scale.as_ref().expect("the scale scenario ran");
    assert!(scale.failures.is_empty() && scale.skipped.is_empty(), "{:?}", scale.failures);
    assert_eq!((scale.rows.len(), scale.per_process), (1, 20), "{scale:?}");
    let row = &scale.rows[0];
    assert_eq!((row.n, row.processes, row.registered), (30, 2, Some(30)), "each agent registered itself: {row:?}");
    for i in 0..2 {
        assert!(*row.fanouts.at(i) == 2 && *row.missing.at(i) == 0 && *row.incomplete.at(i) == 0, "{row:?}");
        assert!(row.p50_ms.at(i).is_some_and(|ms| ms.is_finite() && ms > 0.0), "{row:?}");
        assert!(row.kib_per_agent().at(i).is_some() && row.cpu_us_per_answer.at(i).is_some(), "{row:?}");
        let fds = row.fds_per_agent().at(i).expect("descriptors counted");
        assert!((0.9..1.5).contains(&fds), "about one descriptor per agent on each server: {row:?}");
    }
    let restart = row.restart.as_ref().expect("the server restarted");
    assert!(restart.all_online_s.is_some() && restart.online_at_end == 30, "{restart:?}");
    assert!(restart.reconnects >= 30 && restart.registered_at_end == 30, "each came back by itself: {restart:?}");
    assert_eq!((restart.echo_answers, restart.status_unanswered), (Some(30), 0), "{restart:?}");
    assert!(restart.status_p50_ms().is_some() && scale.fd_bound.is_some_and(|b| b > 30), "{scale:?}");

    let md = std::fs::read_to_string(out.path().join(MARKDOWN)).unwrap();
    assert!(md.contains("## Scale") && md.contains("| [Scale](#scale) |"), "{md}");
    assert_eq!(md.matches("| issue 27: ").count(), 6, "{md}");
    assert!(md.contains("## Cluster"), "{md}");
    assert!(md.contains("## Rollout") && md.contains("| [Rollout](#rollout) |"), "{md}");
    assert_eq!(md.matches("| issue 24: ").count(), 3, "{md}");
    assert!(md.contains("## Facts") && md.contains("| [Facts](#facts) |"), "{md}");
    assert_eq!(md.matches("| issue 25: ").count(), 2, "{md}");
    assert!(md.contains("## Signing") && md.contains("| [Signing](#signing) |"), "{md}");
    assert_eq!(md.matches("| issue 26: ").count(), 2, "{md}");
    assert_eq!(md.matches("| issue 16: ").count(), 4, "{md}");
    if etcd_installed {
        assert!(md.contains("fan-out echo to 3 × 3 CURVE agents on 3 servers") && md.contains("**Failover.**"), "{md}");
    } else {
        assert!(md.contains("Not run: etcd is not installed"), "{md}");
    }
    for section in [
        "## Targets",
        "## Pantry against the relay",
        "### Fan-out latency",
        "### Throughput",
        "### Memory",
        "### Set-up",
        "### Server CPU per fan-out answer",
        "### Server memory and CPU per agent against the previous run",
        "## Handshake rate",
        "## Enrollment",
        "## Presence",
        "## Jobs",
        "## Metrics",
    ] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    assert!(md.contains(&format!("libzmq {}", results.machine.libzmq)));
    assert!(md.contains("agents enroll with one token") && md.contains("`client:token` → one agent"), "{md}");
    assert!(md.contains("SIGKILL of `pantry-client`") && md.contains("`jobs` (raw `ListJobs`"), "{md}");
    assert!(md.contains("per 10-agent echo job") && md.contains("RSS per registered agent"), "{md}");
    assert!(
        md.contains("metrics on: throughput and fan-out within 2%") && md.contains("`GET /metrics` with 10"),
        "{md}"
    );
    // No previous run in a fresh directory: the comparisons say so.
    assert_eq!(md.matches("| issue 15: ").count(), 6, "{md}");
    assert!(!md.contains("(previous run: "), "{md}");
    assert!(md.contains("no previous results (latest.json missing)"), "{md}");
    let svg = std::fs::read_to_string(out.path().join(CHART)).unwrap();
    assert!(svg.contains("<svg") && svg.contains("Pantry p50"), "{svg}");

    // latest.json reads back as the next run's previous one: every target
    // then shows this run's figure.
    assert!(out.path().join(JSON).exists());
    let previous = PreviousRun::load(out.path());
    assert!(previous.said.ends_with("latest.json before this run"), "{}", previous.said);
    let again = pantry_bench::report::markdown(&results, &previous);
    let status = ["| met |", "| **not met** |", "| not measured |"];
    let targets: Vec<&str> =
        again.lines().filter(|l| !l.starts_with("| section |") && status.iter().any(|s| l.ends_with(s))).collect();
    assert!(targets.len() >= 25, "{again}");
    for t in targets {
        let judged_against_it = t.starts_with("| server memory and CPU per agent within 10%");
        assert!(t.contains("(previous run: ") || judged_against_it, "{t}");
    }
}
