//! The cluster scenario's section of the report and its targets.

use std::fmt::Write as _;

use super::figures::{Figures, GapEcho, REACHABLE_CAP};
use crate::common::agents::GROUP_SIZE;
use crate::common::limits::{FDS_PER_AGENT, FDS_PER_MONITORED_AGENT, FDS_PER_MOVING_AGENT};
use crate::common::markdown::{
    compared, count, failures, first_line, group, ms_pair, num, pct, ratio, secs, targets_table, Previous, Target,
};
use crate::common::stats::{median, Both};

/// Issue 16's targets: fan-out across 3 servers within 1.3× of one
/// server's, failover within 3 heartbeat intervals, revocation on one
/// server cutting the key off on another within a second (the integration
/// test's bound), and the handshake rate with the keys from etcd ≥ 95% of
/// a single server's.
const FANOUT_RATIO: f64 = 1.3;
const FAILOVER_INTERVALS: f64 = 3.0;
const REVOCATION_TARGET_MS: f64 = 1000.0;
const HANDSHAKE_RATIO: f64 = 0.95;

/// Issue 16's four targets, with the previous run's.
pub fn targets(c: &Figures, previous: Previous<Figures>) -> Vec<Target> {
    compared(measured(c), previous.figures.map(measured))
}

fn measured(c: &Figures) -> Vec<Target> {
    let why_not = |part: &str| match &c.skipped {
        Some(why) => format!("not run: {why}"),
        None => c
            .failures
            .iter()
            .find(|f| f.starts_with(part))
            .map_or_else(|| "not run".into(), |f| format!("failed: {}", first_line(f))),
    };
    let fanout = match &c.fanout {
        Some(f) => {
            let ratio_p50 = f.p50_ms.ratio().filter(|r| r.is_finite());
            let lost = f.incomplete.pantry + f.incomplete.baseline + f.unreachable.len();
            let mut measured = format!(
                "{} ({} / {} ms; p99 {} / {} ms)",
                ratio(ratio_p50),
                num(f.p50_ms.pantry),
                num(f.p50_ms.baseline),
                num(f.p99_ms.pantry),
                num(f.p99_ms.baseline)
            );
            if lost > 0 {
                let _ = write!(
                    measured,
                    "; incomplete: {} of {} / {} of {}",
                    f.incomplete.pantry, f.attempted.pantry, f.incomplete.baseline, f.attempted.baseline
                );
                if !f.unreachable.is_empty() {
                    let _ = write!(measured, "; {} groups never all reachable (see `## Cluster`)", f.unreachable.len());
                }
                if let (Some(ms), Some(listed)) = (f.p50_listed_ms.pantry, f.fewest_listed.pantry) {
                    if listed < f.agents() {
                        let _ = write!(
                            measured,
                            "; the admin's server listed as few as {} of {}, whose answers took p50 {} ms",
                            count(listed),
                            count(f.agents()),
                            num(Some(ms))
                        );
                    }
                }
            }
            measured.push_str(&fewer_per_server(f.per_server, f.wanted_per_server));
            Target::new(
                format!(
                    "issue 16: fan-out echo to 3 × {} CURVE agents on 3 servers (admin on one) ≤ {} of {} on one \
                     server (p50, same run), every answer delivered",
                    count(f.per_server),
                    ratio(Some(FANOUT_RATIO)),
                    count(f.agents())
                ),
                measured,
                Some(lost == 0 && ratio_p50.is_some_and(|r| r <= FANOUT_RATIO)),
            )
        }
        None => Target::new(
            format!(
                "issue 16: fan-out echo to 3 × 1,000 agents on 3 servers ≤ {} of 3,000 on one server",
                ratio(Some(FANOUT_RATIO))
            ),
            why_not("fan-out"),
            None,
        ),
    };
    let failover = match &c.failover {
        Some(f) => {
            let total = f.agents();
            Target::new(
                format!(
                    "issue 16: SIGKILL of 1 of 3 servers with {} agents each: every agent of it answers through \
                     another within {FAILOVER_INTERVALS} heartbeat intervals ({} s), nothing lost (all answer; \
                     `status` on a survivor lists all {} online)",
                    count(f.per_server),
                    num(Some(FAILOVER_INTERVALS * f.heartbeat_s as f64)),
                    count(total)
                ),
                format!(
                    "{} s (median agent {} s); {} of {} answered; `status` on a: {} of {} online; echo to all: {} \
                     of {} answered{}",
                    f.all_answered_s.map_or("not all".into(), secs),
                    f.first_answer_p50_s.map_or("–".into(), secs),
                    count(f.answered),
                    count(f.per_server),
                    count(f.status_online),
                    count(total),
                    f.echo_all.as_ref().map_or("–".into(), |e| count(e.answers)),
                    count(total),
                    fewer_per_server(f.per_server, f.wanted_per_server)
                ),
                Some(f.met(FAILOVER_INTERVALS)),
            )
        }
        None => Target::new(
            format!(
                "issue 16: SIGKILL of 1 of 3 servers: its agents answer through another within {FAILOVER_INTERVALS} \
                 heartbeat intervals, nothing lost"
            ),
            why_not("failover"),
            None,
        ),
    };
    let revocation = match &c.revocation {
        Some(r) => Target::new(
            format!(
                "issue 16: revocation on server a cuts the agent off on server c < {} ms (p50 / max of {})",
                num(Some(REVOCATION_TARGET_MS)),
                r.tries
            ),
            format!(
                "p50 {} ms, max {} ms{}",
                num(r.p50_ms()),
                num(r.max_ms()),
                if r.not_cut > 0 {
                    format!("; {} of {} not cut off within 5 s", r.not_cut, r.tries)
                } else {
                    String::new()
                }
            ),
            (r.tries > 0).then(|| r.not_cut == 0 && r.max_ms().is_some_and(|ms| ms < REVOCATION_TARGET_MS)),
        ),
        None => Target::new(
            format!(
                "issue 16: revocation on server a cuts the agent off on server c < {} ms",
                num(Some(REVOCATION_TARGET_MS))
            ),
            why_not("revocation"),
            None,
        ),
    };
    let handshake = match &c.handshake {
        Some(h) => Target::new(
            format!(
                "issue 16: handshake rate with the etcd-backed key snapshot ≥ {} of a single server's ({} known keys)",
                pct(Some(HANDSHAKE_RATIO)),
                count(h.known_keys)
            ),
            format!("{} ({} / {} per s)", pct(h.rate.ratio()), num(h.rate.pantry), num(h.rate.baseline)),
            h.rate.ratio().map(|r| r >= HANDSHAKE_RATIO),
        ),
        None => Target::new(
            format!(
                "issue 16: handshake rate with the etcd-backed key snapshot ≥ {} of a single server's",
                pct(Some(HANDSHAKE_RATIO))
            ),
            why_not("handshake rate"),
            None,
        ),
    };
    vec![fanout, failover, revocation, handshake]
}

/// ` (only N per server: open-file limit)` when the scenario ran fewer
/// agents per server than asked.
fn fewer_per_server(per_server: usize, wanted: usize) -> String {
    if per_server < wanted {
        format!(" (only {} per server: open-file limit)", count(per_server))
    } else {
        String::new()
    }
}

/// The failover's echoes are shown by windows of this many seconds.
const ECHO_WINDOW_S: f64 = 0.5;

/// The failover's echoes sent in one window of time.
#[derive(Debug, Clone, Default, PartialEq)]
struct EchoWindow {
    from: f64,
    to: f64,
    echoes: usize,
    /// Sent to (not answered yet) by the first echo of the window.
    asked: usize,
    /// Agents that answered for the first time, named offline by the last
    /// echo, silent at most.
    answered: usize,
    offline: usize,
    silent: usize,
}

/// The echoes by windows of `width` seconds (after the kill); windows
/// without an echo are left out.
fn echo_windows(echoes: &[GapEcho], width: f64) -> Vec<EchoWindow> {
    let mut windows: Vec<(i64, EchoWindow)> = Vec::new();
    for e in echoes {
        let slot = (e.sent_s / width).floor() as i64;
        match windows.last_mut() {
            Some((s, w)) if *s == slot => {
                w.to = e.sent_s;
                w.echoes += 1;
                w.answered += e.first;
                w.offline = e.offline;
                w.silent = w.silent.max(e.silent);
            }
            _ => windows.push((
                slot,
                EchoWindow {
                    from: e.sent_s,
                    to: e.sent_s,
                    echoes: 1,
                    asked: e.asked,
                    answered: e.first,
                    offline: e.offline,
                    silent: e.silent,
                },
            )),
        }
    }
    windows.into_iter().map(|(_, w)| w).collect()
}

/// The `## Cluster` section.
pub fn report(c: &Figures, previous: Previous<Figures>) -> String {
    let m = &c.measure;
    let mut out = String::new();
    let table = targets_table(&targets(c, previous), previous.said);
    if let Some(why) = &c.skipped {
        let _ = writeln!(
            out,
            "## Cluster\n\nNot run: {why}. The cluster scenario (three `pantry-server`s with `cluster:` on one etcd \
             against one server: fan-out across servers, SIGKILL of one, revocation, handshake rate) needs `etcd` \
             on the PATH or at /usr/bin/etcd.\n\n{table}"
        );
        return out;
    }
    let _ = writeln!(
        out,
        "## Cluster\n\nCURVE. Three `pantry-server`s (a, b, c) with `cluster:` on one etcd ({}, one member on \
         loopback, its data in a temporary directory on disk), `cluster.lease` {} s, against one `pantry-server` \
         without `cluster:`, in the same run on the same machine. {}Servers b and c started with a copy of a's \
         `server_keys.yml` (the cluster's key pair) and read the keys from etcd; the single server has the same \
         keys in its file.\n\n{table}",
        c.etcd_version.as_deref().unwrap_or("version unknown"),
        c.lease_s,
        match &c.import {
            Some(i) => format!(
                "Keys: server a started with every key of the scenario ({}: the agents', the admin's, the handshake \
                 slots', the revoked agents') in its `server_keys.yml`; `pantry-server -c server.yml keys:import` \
                 copied them into etcd in {} s (one transaction per key: `{}`), and a's watch brought them to a. ",
                count(i.keys),
                num(Some(i.seconds)),
                i.said
            ),
            None => String::new(),
        }
    );
    if let Some(f) = &c.fanout {
        let _ = writeln!(
            out,
            "**Fan-out across servers.** An admin (CURVE DEALER) connected to a sends `echo` to every agent: {} \
             agents connected to each of a, b and c (a publishes to its own and sends the request over its links to \
             b and c, which publish to theirs and route the answers back over the links), against {} agents on the \
             single server. {} echoes per round, time until the last answer; p50 and p99 per round, medians over {} \
             rounds alternating between the two{}. Server CPU: all servers' CPU time during the echoes per answer.{}\n",
            count(f.per_server),
            count(f.agents()),
            m.fanout_requests,
            m.rounds,
            if f.sequential {
                "; both sets of agents do not fit the open-file limit at once, so each round connects them anew"
            } else {
                ""
            },
            if f.per_server < f.wanted_per_server {
                format!(
                    " Not {} per server: the open-file limit ({}) allows {} agents of {} descriptors each in the bench.",
                    count(f.wanted_per_server),
                    group(c.open_files),
                    count(f.agents()),
                    FDS_PER_AGENT
                )
            } else {
                String::new()
            }
        );
        out.push_str("| | agents | p50 (ms) | p99 (ms) | incomplete | listed by the admin's server, fewest | p50 of the listed ones' answers (ms) | set-up (s) | server CPU µs per answer |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (i, name, agents) in
            [(0, "3 servers, admin on a", format!("3 × {}", count(f.per_server))), (1, "1 server", count(f.agents()))]
        {
            let pick = |b: &Both<Option<f64>>| if i == 0 { b.pantry } else { b.baseline };
            let (incomplete, attempted) = if i == 0 {
                (f.incomplete.pantry, f.attempted.pantry)
            } else {
                (f.incomplete.baseline, f.attempted.baseline)
            };
            let fewest = if i == 0 { f.fewest_listed.pantry } else { f.fewest_listed.baseline };
            let _ = writeln!(
                out,
                "| {name} | {agents} | {} | {} | {incomplete} of {attempted} | {} | {} | {} | {} |",
                num(pick(&f.p50_ms)),
                num(pick(&f.p99_ms)),
                fewest.map_or("–".into(), count),
                num(pick(&f.p50_listed_ms)),
                num(pick(&f.setup_s)),
                num(pick(&f.cpu_us_per_answer))
            );
        }
        let _ = writeln!(
            out,
            "| 3 servers / 1 server | | {} | {} | | | {} | | {} |\n",
            ratio(f.p50_ms.ratio()),
            ratio(f.p99_ms.ratio()),
            ratio(f.p50_listed_ms.ratio()),
            ratio(f.cpu_us_per_answer.ratio())
        );
        if !f.cpu_us_per_answer_by_server.is_empty() {
            let each: Vec<String> = f
                .cpu_us_per_answer_by_server
                .iter()
                .zip(["a", "b", "c"])
                .map(|(v, id)| format!("{id} {}", num(*v)))
                .collect();
            let _ =
                writeln!(out, "Server CPU µs per answer of the cluster's fan-outs, by server: {}.\n", each.join(", "));
        }
        if !f.unreachable.is_empty() {
            let _ = writeln!(
                out,
                "Not every agent answered before the echoes were timed (echoes to each group of {} until all \
                 answered, {} s at most); the echoes were timed anyway:\n",
                GROUP_SIZE,
                num(Some(m.reachable_timeout.min(REACHABLE_CAP).as_secs_f64()))
            );
            for why in &f.unreachable {
                let _ = writeln!(out, "- {why}");
            }
            let _ = writeln!(out);
        }
    }
    if let Some(f) = &c.failover {
        let total = f.agents();
        let _ = writeln!(
            out,
            "**Failover.** {} agents on each server, each sending a `RegisterClient` every heartbeat ({} s). Those \
             of the server to be killed behave like the real agent with the three servers as hosts: they also \
             register on every handshake, and once its DEALER has been disconnected for a heartbeat interval \
             (socket monitor; three while a TCP connection is up and its handshake pending) an agent closes its \
             DEALER and connects a new one to the next server in its own order (the others rotated by its \
             identity, as the real agent's, so one server's agents spread over the others), and registers there at \
             the handshake (the other servers' agents, which never lose their server here, go without that \
             machinery: it costs the bench process two descriptors per agent). Server {} SIGKILLed; \
             from the admin on a, an echo every {} ms to those of {}'s agents that had not answered one yet (by \
             identity patterns) until each had answered once, through {}; then `status` on a until all {} were \
             online, and an echo to all. Times in seconds after the SIGKILL.{}\n",
            count(f.per_server),
            f.heartbeat_s,
            f.killed,
            num(Some(f.echo_every_ms)),
            f.killed,
            f.moved_to,
            count(total),
            if f.per_server < f.wanted_per_server {
                format!(
                    " Not {} per server: the open-file limit ({}) allows {}: {} descriptors per failing-over agent (its \
                     DEALER and the DEALER's monitor: sockets and their libzmq mailboxes) plus {} while it moves, {} per \
                     agent of the other servers.",
                    count(f.wanted_per_server),
                    group(c.open_files),
                    count(f.per_server),
                    FDS_PER_MONITORED_AGENT,
                    FDS_PER_MOVING_AGENT,
                    FDS_PER_AGENT
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "| agents | moves by the agents of a / b / c (failed) | all of {}'s answered again (s) | median agent (s) | `status` on a afterwards: agents listed / online | echo to all afterwards: answers / listed online / agents named offline |\n\
             |---:|---:|---:|---:|---:|---:|",
            f.killed
        );
        let _ = writeln!(
            out,
            "| 3 × {} | {} ({}) | {} | {} | {} / {} | {} |",
            count(f.per_server),
            f.moves.iter().map(|&m| group(m)).collect::<Vec<_>>().join(" / "),
            f.failed_moves,
            f.all_answered_s.map_or_else(|| format!("not all ({} answered)", f.answered), secs),
            f.first_answer_p50_s.map_or("–".into(), secs),
            count(f.status_listed),
            count(f.status_online),
            f.echo_all.as_ref().map_or("–".into(), |e| format!(
                "{} / {} / {}",
                count(e.answers),
                count(e.listed),
                f.echo_offline_agents
            ))
        );
        if let Some(e) = &f.move_error {
            let _ = writeln!(
                out,
                "\n{} moves could not make their sockets (tried again a heartbeat interval later); the first said: {e}.",
                group(f.failed_moves)
            );
        }
        if f.status_others > 0 {
            let _ = writeln!(
                out,
                "\n`status` on a also listed {} other clients, offline (the revoked agents below, and the fan-out's \
                 agents the failover did not use), and the echo to all named them offline.",
                f.status_others
            );
        }
        let _ = writeln!(
            out,
            "\nWhat the echoes said about the moving agents they were sent to (those of the {} that had not \
             answered an earlier one), by windows of {} s: agents answering for the first time, the agents named \
             offline (`custom.offline`) by \
             the window's last echo, and the most agents one echo left silent (neither answered nor named offline: \
             an admin would wait for its `--timeout` for them). {} of {} echoes named some offline; {} left some \
             silent.\n",
            count(f.per_server),
            num(Some(ECHO_WINDOW_S)),
            f.named_offline_echoes(),
            f.echoes.len(),
            f.echoes.iter().filter(|e| e.silent > 0).count()
        );
        out.push_str("| sent (s after the kill) | echoes | not answered yet at the first | answered (first time) | named offline at the last | silent, most in one echo |\n\
             |---|---:|---:|---:|---:|---:|\n");
        for w in echo_windows(&f.echoes, ECHO_WINDOW_S) {
            let when = if w.echoes == 1 { secs(w.from) } else { format!("{} – {}", secs(w.from), secs(w.to)) };
            let _ = writeln!(
                out,
                "| {when} | {} | {} | {} | {} | {} |",
                w.echoes, w.asked, w.answered, w.offline, w.silent
            );
        }
        let _ = writeln!(out);
    }
    if let Some(r) = &c.revocation {
        let _ = writeln!(
            out,
            "**Revocation a → c.** {} agents with keys of their own (in etcd), registered on c (one DEALER each, \
             its requests on it, as the real agent); each revoked in turn by a raw `RevokeClient` from the admin on a. Time \
             from sending it to the disconnection of the agent's DEALER seen by its socket monitor (c \
             shuts the key's connections when its watch sees the key go), and to a's answer; c logged `cut off a \
             revoked key` {} times.\n",
            r.tries, r.log_lines
        );
        out.push_str("| revocations | cut off on c: p50 / max (ms) | not cut off within 5 s | a's answer: p50 / max (ms) |\n|---:|---:|---:|---:|\n");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |\n",
            r.tries,
            ms_pair(r.p50_ms(), r.max_ms()),
            r.not_cut,
            ms_pair(median(&r.answer_ms), r.answer_ms.iter().copied().reduce(f64::max))
        );
        let _ = writeln!(
            out,
            "Afterwards `status` on c lists {} of the {} revoked agents and `status` on a {}{}.\n",
            r.listed_after[1],
            r.tries,
            r.listed_after[0],
            if r.listed_after.iter().any(|&n| n > 0) {
                " (every server should list none: a revoked key's clients leave the registry of every server of the \
                 cluster, as they leave a single server's)"
            } else {
                ""
            }
        );
    }
    if let Some(h) = &c.handshake {
        let _ = writeln!(
            out,
            "**Handshake rate with the etcd-backed key snapshot.** The handshake scenario ({} connections at a time, \
             {:.1} s measured, {} rounds alternating, medians) against server a (its keys read from etcd and kept in \
             memory, fed by the watch) and the single server (the same {} keys from its file).\n",
            m.handshake.slots,
            m.handshake.duration.as_secs_f64(),
            m.rounds,
            count(h.known_keys)
        );
        let _ = writeln!(
            out,
            "| | handshakes per s | failed | server CPU µs per handshake |\n|---|---:|---:|---:|\n\
             | server a (cluster) | {} | {} | {} |\n| single server | {} | {} | {} |\n| a / single | {} | | {} |",
            num(h.rate.pantry),
            h.failed.pantry,
            num(h.cpu_us.pantry),
            num(h.rate.baseline),
            h.failed.baseline,
            num(h.cpu_us.baseline),
            pct(h.rate.ratio()),
            ratio(h.cpu_us.ratio())
        );
    }
    failures(&mut out, &c.failures);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_echoes_are_shown_by_windows() {
        let echo = |sent_s: f64, asked: usize, answered: usize, offline: usize| GapEcho {
            sent_s,
            asked,
            listed: answered,
            answered,
            offline,
            silent: asked - answered - offline,
            first: answered,
        };
        let echoes = [echo(0.1, 10, 0, 10), echo(0.2, 10, 0, 9), echo(1.1, 10, 4, 6), echo(1.2, 6, 6, 0)];
        let windows = echo_windows(&echoes, 0.5);
        assert_eq!(windows.len(), 2);
        assert_eq!((windows[0].echoes, windows[0].asked, windows[0].answered, windows[0].offline), (2, 10, 0, 9));
        assert_eq!((windows[0].silent, windows[0].from, windows[0].to), (1, 0.1, 0.2));
        assert_eq!((windows[1].echoes, windows[1].asked, windows[1].answered, windows[1].offline), (2, 10, 10, 0));
    }

    #[test]
    fn without_etcd_the_cluster_section_says_why() {
        let c = Figures {
            skipped: Some("etcd is not installed (Debian's etcd-server; `make deps` installs it)".into()),
            ..Default::default()
        };
        let section = report(&c, Previous { figures: None, said: "no previous results (latest.json missing)" });
        assert!(section.starts_with("## Cluster\n\nNot run: etcd is not installed"), "{section}");
        let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| issue 16: ")).collect();
        assert_eq!(rows.len(), 4, "{section}");
        assert!(rows.iter().all(|l| l.contains("| not run: etcd is not installed") && l.ends_with("| not measured |")));
    }
}
