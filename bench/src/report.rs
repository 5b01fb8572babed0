//! The report of a whole run: `latest.json` (every scenario's figures, read
//! back by the next run as its previous one), `latest.md` (the machine, a
//! summary of the targets, each scenario's section) and `fanout.svg`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::common::limits::{FdLimits, FDS_PER_AGENT};
use crate::common::markdown::{count, Previous, Target};
use crate::common::procs::run_bounded;
use crate::scenarios::{
    cluster, enrollment, facts, fanout_throughput, handshake, jobs, metrics, presence, rollout, scale, signing,
};

pub const MARKDOWN: &str = "latest.md";
pub const JSON: &str = "latest.json";
pub const CHART: &str = "fanout.svg";

/// Where the run ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub libzmq: String,
    pub limits: FdLimits,
}

/// Everything a run measured. A scenario's figures are `None` in a
/// `latest.json` that has none of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    /// The whole run, seconds.
    pub elapsed_s: f64,
    pub fanout_throughput: Option<fanout_throughput::Figures>,
    pub handshake: Option<handshake::Figures>,
    pub enrollment: Option<enrollment::Figures>,
    pub presence: Option<presence::Figures>,
    pub jobs: Option<jobs::Figures>,
    pub metrics: Option<metrics::Figures>,
    pub cluster: Option<cluster::Figures>,
    pub rollout: Option<rollout::Figures>,
    pub facts: Option<facts::Figures>,
    #[serde(default)]
    pub signing: Option<signing::Figures>,
    #[serde(default)]
    pub scale: Option<scale::Figures>,
}

/// The run before this one, as its `latest.json` says: the one committed
/// in the output directory (`git show HEAD:./latest.json` there), or else
/// the one on disk before this run overwrites it.
pub struct PreviousRun {
    results: Option<Results>,
    /// Where it came from, or why there is none.
    pub said: String,
    /// What a section says when the previous run has none of its figures.
    absent: String,
}

impl PreviousRun {
    pub fn load(out_dir: &Path) -> PreviousRun {
        let path = out_dir.join(JSON);
        let mut git = Command::new("git");
        git.arg("-C").arg(out_dir).args(["show", &format!("HEAD:./{JSON}")]);
        let (text, source) = match run_bounded(&mut git, Duration::from_secs(10)) {
            Ok(out) if out.success() && !out.stdout.trim().is_empty() => {
                (out.stdout, format!("{} as committed (HEAD)", path.display()))
            }
            _ => match std::fs::read_to_string(&path) {
                Ok(text) => (text, format!("{} before this run", path.display())),
                Err(_) => return PreviousRun::none(format!("no previous results ({JSON} missing)")),
            },
        };
        match serde_json::from_str(&text) {
            Ok(results) => PreviousRun {
                results: Some(results),
                absent: format!("no previous results for this section in {source}"),
                said: source,
            },
            Err(e) => PreviousRun::none(format!("no previous results ({source} unreadable: {e})")),
        }
    }

    fn none(said: String) -> PreviousRun {
        PreviousRun { results: None, absent: said.clone(), said }
    }

    /// One scenario's figures in the previous run.
    pub fn of<T>(&self, pick: impl Fn(&Results) -> Option<&T>) -> Previous<'_, T> {
        match self.results.as_ref().and_then(pick) {
            Some(figures) => Previous { figures: Some(figures), said: &self.said },
            None => Previous { figures: None, said: &self.absent },
        }
    }
}

/// A scenario's section and its targets, for the summary.
struct Section {
    title: &'static str,
    targets: Vec<Target>,
    text: String,
}

fn sections(results: &Results, previous: &PreviousRun) -> Vec<Section> {
    let mut sections = Vec::new();
    macro_rules! section {
        ($title:literal, $scenario:ident) => {
            if let Some(figures) = &results.$scenario {
                let before = previous.of(|r| r.$scenario.as_ref());
                sections.push(Section {
                    title: $title,
                    targets: $scenario::targets(figures, before),
                    text: $scenario::report(figures, before),
                });
            }
        };
    }
    section!("Pantry against the relay", fanout_throughput);
    section!("Scale", scale);
    section!("Handshake rate", handshake);
    section!("Enrollment", enrollment);
    section!("Presence", presence);
    section!("Jobs", jobs);
    section!("Metrics", metrics);
    section!("Cluster", cluster);
    section!("Rollout", rollout);
    section!("Facts", facts);
    section!("Signing", signing);
    sections
}

pub fn markdown(results: &Results, previous: &PreviousRun) -> String {
    let m = &results.machine;
    let mut out = format!(
        "# Pantry benchmark: latest run\n\n`make bench` (`pantry-bench`), {:.0} s in all. Machine: **{} cores**, \
         **libzmq {}**. Open files: soft limit {} (was {}), hard {}, so up to {} simulated agents per pool ({} \
         descriptors each: one connection per agent) and both pools at once up to N = {} (the scale \
         scenario's agents run in child processes). Every figure is also in `{JSON}`; the previous \
         run's, which the targets show: {}.\n\n## Targets\n\n| section | met | not met | not measured |\n\
         |---|---:|---:|---:|\n",
        results.elapsed_s,
        m.cores,
        m.libzmq,
        m.limits.soft,
        m.limits.soft_before,
        m.limits.hard,
        count(m.limits.max_agents()),
        FDS_PER_AGENT,
        count(m.limits.max_agents() / 2),
        previous.said
    );
    let sections = sections(results, previous);
    for s in &sections {
        let with = |met: Option<bool>| s.targets.iter().filter(|t| t.met == met).count();
        let anchor = s.title.to_lowercase().replace(' ', "-");
        let _ = writeln!(
            out,
            "| [{}](#{anchor}) | {} | {} | {} |",
            s.title,
            with(Some(true)),
            with(Some(false)),
            with(None)
        );
    }
    for s in &sections {
        let _ = write!(out, "\n{}", s.text.trim_end());
        out.push('\n');
    }
    if results.fanout_throughput.is_some() {
        let _ = writeln!(out, "\n![fan-out latency against N]({CHART})");
    }
    out
}

/// Writes `latest.json`, `latest.md` and `fanout.svg` into `dir`.
pub fn write(results: &Results, previous: &PreviousRun, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(results)?;
    for (name, text) in [(JSON, json), (MARKDOWN, markdown(results, previous))] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(f) = &results.fanout_throughput {
        fanout_throughput::chart(f, &dir.join(CHART))?;
    }
    Ok(())
}
