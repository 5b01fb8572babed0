//! Part 4 of the cluster scenario, the last (it kills B): N agents per
//! server checking in every heartbeat; B's fail over like the real agent
//! with the three servers as hosts. B is SIGKILLed; from A, an echo to B's
//! agents every 100 ms until each has answered once (through A or C), and
//! what each echo said about them; then `status` on A and an echo to all.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pantry_shared::commands::status::ONLINE;
use pantry_shared::commands::{echo, recipients};
use pantry_shared::filter::{ClientFilter, Identities};

use super::figures::{agent_number, is_agent, Failover, GapEcho, Settings, KILLED, SERVERS, SERVER_IDS};
use crate::common::admin::{counts, Admin};
use crate::common::agents::{identity, AgentOptions, Kind, Pool};
use crate::common::env::Env;
use crate::common::procs::{Endpoints, PantryServer};
use crate::common::ring::{KeyRing, ADMIN_NAME};
use crate::common::stats::percentile;

/// How long an echo of the failover is waited for after the last one.
const ECHO_GRACE: Duration = Duration::from_secs(1);

/// The runs of consecutive agent numbers in `agents`.
fn runs(agents: &BTreeSet<usize>) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for &i in agents {
        match runs.last_mut() {
            Some(run) if run.end == i => run.end += 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

/// Glob patterns (`?` for a digit) that match exactly the identities of
/// agents `range`: `agent-01???` for 1000..2000.
pub fn identity_patterns(range: Range<usize>) -> Vec<String> {
    let mut patterns = Vec::new();
    let mut i = range.start;
    while i < range.end {
        let mut digits = 0;
        while digits < 5 && i % 10usize.pow(digits + 1) == 0 && i + 10usize.pow(digits + 1) <= range.end {
            digits += 1;
        }
        let mut pattern = identity(i);
        pattern.truncate(pattern.len() - digits as usize);
        pattern.extend(std::iter::repeat('?').take(digits as usize));
        patterns.push(pattern);
        i += 10usize.pow(digits);
    }
    patterns
}

/// One echo of the failover, as it is answered.
struct Track {
    uuid: String,
    sent_s: f64,
    asked: usize,
    listed: usize,
    offline: usize,
    answered: HashSet<String>,
    first: usize,
}

/// Asks `status` every 100 ms until `n` of the pools' agents are online or
/// `deadline` passed (a slow answer counts as none); how many were online
/// at the last answer.
fn agents_online(admin: &Admin, n: usize, deadline: Instant) -> usize {
    let mut online = 0;
    loop {
        let asked = Instant::now();
        if let Ok(list) = admin.status(&ClientFilter::default(), Duration::from_secs(5)) {
            online = list.iter().filter(|c| is_agent(&c.identity, n) && c.state == ONLINE).count();
        }
        if online >= n || Instant::now() >= deadline {
            return online;
        }
        std::thread::sleep(Duration::from_millis(100).saturating_sub(asked.elapsed()));
    }
}

/// Part 4.
pub fn failover(env: &Env, s: &Settings, per: usize, servers: &mut [PantryServer], ring: &KeyRing) -> Result<Failover> {
    let total = SERVERS * per;
    let heartbeat = Duration::from_secs(s.heartbeat.as_secs().max(1));
    let endpoints: Vec<Endpoints> = servers.iter().map(|s| s.endpoints.clone()).collect();
    // Only the killed server's agents move: they fail over like the real
    // agent; the others check in every heartbeat without the machinery
    // (a DEALER monitor each), which leaves room for 1,000 per server
    // within the bench process's open-file limit.
    let staying = AgentOptions { heartbeat: Some(heartbeat), linger_zero: true, ..AgentOptions::default() };
    let started = Instant::now();
    let pools: Vec<Pool> = (0..SERVERS)
        .map(|k| {
            let options = if k == KILLED { AgentOptions::failing_over(heartbeat) } else { staying.clone() };
            Pool::start_on(Kind::Pantry, &endpoints, k, &ring.agents, k * per..(k + 1) * per, options)
        })
        .collect::<Result<_>>()?;
    env.reach(&servers[0].endpoints, ring, total).context("failing over")?;
    let admin = Admin::connect(&servers[0], &ring.admin, ADMIN_NAME)?;
    let online = agents_online(&admin, total, Instant::now() + Duration::from_secs(30));
    if online < total {
        bail!("only {online} of {total} agents online in a's status before the kill");
    }
    env.say(format!(
        "cluster: {total} agents (heartbeat {} s, the three servers as hosts) online in {:.1} s; SIGKILL of server {}",
        heartbeat.as_secs(),
        started.elapsed().as_secs_f64(),
        SERVER_IDS[KILLED]
    ));
    let moving = KILLED * per..(KILLED + 1) * per;
    let targets: HashSet<String> = moving.clone().map(identity).collect();
    // Each echo goes to those that have not answered yet: an echo to
    // agents on another server carries the list of their identities, in
    // the request to each and in each answer (see the report), so echoing
    // all of them every time would load the servers with that alone.
    let mut remaining: BTreeSet<usize> = moving.collect();
    servers[KILLED].process.kill();
    let killed = Instant::now();
    let since = |at: Instant| at.duration_since(killed).as_secs_f64();
    let mut result = Failover {
        wanted_per_server: s.failover_agents_per_server,
        per_server: per,
        heartbeat_s: heartbeat.as_secs(),
        lease_s: s.lease.as_secs().max(2),
        killed: SERVER_IDS[KILLED].into(),
        moved_to: (1..SERVERS).map(|k| SERVER_IDS[(KILLED + k) % SERVERS]).collect::<Vec<_>>().join(" and "),
        echo_every_ms: s.echo_every.as_secs_f64() * 1000.0,
        ..Default::default()
    };
    let mut first: HashMap<String, f64> = HashMap::new();
    let mut tracks: Vec<Track> = Vec::new();
    let mut next_send = killed + s.echo_every;
    let deadline = killed + s.failover_timeout;
    // Sending stops once all answered or at the deadline; answers are
    // awaited a little longer.
    let mut stop_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if stop_at.is_some_and(|at| now >= at) {
            break;
        }
        if stop_at.is_none() && now >= next_send && !remaining.is_empty() {
            let patterns: Vec<String> = runs(&remaining).into_iter().flat_map(identity_patterns).collect();
            let mut request = echo::request("pantry-bench");
            Identities::attach(&mut request, &patterns);
            let uuid = admin.send(request)?;
            let asked = remaining.len();
            tracks.push(Track {
                uuid,
                sent_s: since(now),
                asked,
                listed: 0,
                offline: 0,
                answered: HashSet::new(),
                first: 0,
            });
            next_send += s.echo_every;
        }
        if stop_at.is_none() && (remaining.is_empty() || now >= deadline) {
            stop_at = Some(now + ECHO_GRACE);
        }
        let uuids: Vec<String> = tracks.iter().map(|t| t.uuid.clone()).collect();
        let wait_until = stop_at.unwrap_or(next_send).min(Instant::now() + Duration::from_millis(50));
        let Some(m) = admin.recv_any(&uuids, wait_until) else { continue };
        let arrived = since(Instant::now());
        let Some(track) = tracks.iter_mut().find(|t| t.uuid == m.uuid()) else { continue };
        if m.is_client_response_list() {
            track.listed = recipients::online(&m).iter().filter(|id| targets.contains(*id)).count();
            track.offline = recipients::offline(&m).iter().filter(|o| targets.contains(&o.identity)).count();
        } else if m.error().is_none() && targets.contains(&m.metadata.from) {
            track.answered.insert(m.metadata.from.clone());
            if !first.contains_key(&m.metadata.from) {
                first.insert(m.metadata.from.clone(), arrived);
                track.first += 1;
            }
            if let Some(i) = agent_number(&m.metadata.from) {
                remaining.remove(&i);
            }
        }
    }
    result.answered = first.len();
    let times: Vec<f64> = first.values().copied().collect();
    result.first_answer_p50_s = percentile(&times, 50.0);
    result.all_answered_s = (first.len() >= per).then(|| times.iter().copied().fold(0.0, f64::max));
    result.echoes = tracks
        .iter()
        .map(|t| GapEcho {
            sent_s: t.sent_s,
            asked: t.asked,
            listed: t.listed,
            answered: t.answered.len(),
            offline: t.offline,
            silent: t.asked.saturating_sub(t.answered.len() + t.offline),
            first: t.first,
        })
        .collect();
    result.moves = pools.iter().map(Pool::moves).collect();
    result.failed_moves = pools.iter().map(Pool::failed_moves).sum();
    result.move_error = pools.iter().find_map(Pool::move_error);
    env.say(format!(
        "cluster: {} of {per} agents of {} answered through {} by {} s after the kill (median agent {} s); {} echoes, \
         moves by the agents of a, b, c: {:?} ({} failed)",
        result.answered,
        result.killed,
        result.moved_to,
        result.all_answered_s.map_or("-".into(), |v| format!("{v:.2}")),
        result.first_answer_p50_s.map_or("-".into(), |v| format!("{v:.2}")),
        result.echoes.len(),
        result.moves,
        result.failed_moves
    ));
    // A moment for C's records to reach A, if they have not yet.
    agents_online(&admin, total, Instant::now() + Duration::from_secs(10));
    let list = admin.status(&ClientFilter::default(), Duration::from_secs(10))?;
    let (agents, others): (Vec<_>, Vec<_>) = list.into_iter().partition(|c| is_agent(&c.identity, total));
    (result.status_listed, result.status_online) = counts(&agents);
    result.status_others = others.len();
    let run = admin.echo_all(Duration::from_secs(10))?;
    result.echo_offline_agents = run.offline.iter().filter(|id| is_agent(id, total)).count();
    env.say(format!(
        "cluster: status on a: {} agents listed, {} online ({} other clients listed); echo to all: {} answers, \
         {} listed, {} named offline ({} of them agents)",
        result.status_listed,
        result.status_online,
        result.status_others,
        run.answers,
        run.listed,
        run.offline.len(),
        result.echo_offline_agents
    ));
    result.echo_all = Some(run);
    drop(pools);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_patterns_cover_a_range_exactly() {
        assert_eq!(identity_patterns(1000..2000), ["agent-01???"]);
        assert_eq!(identity_patterns(3..6), ["agent-00003", "agent-00004", "agent-00005"]);
        assert_eq!(
            identity_patterns(995..1012),
            [
                "agent-00995",
                "agent-00996",
                "agent-00997",
                "agent-00998",
                "agent-00999",
                "agent-0100?",
                "agent-01010",
                "agent-01011"
            ]
        );
        assert_eq!(
            identity_patterns(0..250),
            ["agent-000??", "agent-001??", "agent-0020?", "agent-0021?", "agent-0022?", "agent-0023?", "agent-0024?"]
        );
        assert!(identity_patterns(5..5).is_empty());
    }

    #[test]
    fn runs_of_agent_numbers() {
        let set: BTreeSet<usize> = [3, 4, 5, 9, 11, 12].into_iter().collect();
        assert_eq!(runs(&set), [3..6, 9..10, 11..13]);
        assert_eq!(agent_number(&identity(1234)), Some(1234));
        assert_eq!(agent_number("revoked-001"), None);
    }
}
