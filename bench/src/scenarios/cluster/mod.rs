//! Several servers, one fleet (issue 16): three real `pantry-server`s
//! with `cluster:` on one real etcd against a single server in the same
//! run. Server A starts with every key and `keys:import` copies them into
//! etcd; B and C start with a copy of A's key pair. Parts: handshake rate
//! against A (keys from etcd) and the single server; fan-out from an
//! admin on A to agents on all three against the same number on one;
//! revocation on A cutting an agent off on C; failover of B's agents when
//! B is SIGKILLed (`failover`). Every wait is bounded; a part that fails
//! is recorded and the others run. The section (`report`) says how each
//! is timed; `figures` holds what the parts and the report share.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pantry_shared::commands::status::ONLINE;
use pantry_shared::commands::{client_revoke, echo, recipients, register_client};
use pantry_shared::filter::ClientFilter;
use pantry_shared::keys::{KnownKey, Role};
use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::Message;

use crate::common::admin::{counts, Admin};
use crate::common::agents::{client_security, group_streams, identity, Kind, Pool, ENVIRONMENT, GROUP_SIZE, ROLE};
use crate::common::compare::{fanouts, Fanouts};
use crate::common::env::{Env, Parts};
use crate::common::etcd::{self, Etcd};
use crate::common::handshake::{self, HandshakeRow};
use crate::common::keys::{self, Pair};
use crate::common::markdown::{first_line, num};
use crate::common::procs::{cpu_ns, cpu_us_per, run_bounded, Endpoints, PantryServer};
use crate::common::requesters::{wait_until_reachable, Requester};
use crate::common::ring::{KeyRing, ADMIN_NAME};
use crate::common::stats::{median, order, percentile};

mod failover;
mod figures;
mod report;

pub use failover::identity_patterns;
pub use figures::{Failover, FanoutCompare, Figures, GapEcho, Import, Revocation, Settings, SERVERS};
use figures::{REACHABLE_CAP, SERVER_IDS};
pub use report::{report, targets};

/// The application of the agents that are revoked.
const REVOKED_APP: &str = "revoked";

/// The identity of revoked agent `k` is this and `k`.
const REVOKED_PREFIX: &str = "revoked-";

/// Longest wait for one revocation to cut its agent off.
const CUT_TIMEOUT: Duration = Duration::from_secs(5);

/// The identity of revoked agent `k`.
fn revoked_identity(k: usize) -> String {
    format!("{REVOKED_PREFIX}{k:03}")
}

/// `cluster:` for server `id` on `etcd`.
fn cluster_yaml(etcd: &Etcd, id: &str, lease: Duration) -> String {
    format!(
        "cluster:\n  etcd: [{}]\n  server_id: {id}\n  advertise: 127.0.0.1\n  lease: {}s\n",
        etcd.endpoint(),
        lease.as_secs().max(2)
    )
}

/// Runs the four parts (fewer agents when the open-file limit says so);
/// without etcd, says so and runs nothing.
pub fn run(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Figures> {
    let mut result = Figures {
        measure: env.measure,
        lease_s: s.lease.as_secs().max(2),
        open_files: env.limits.soft,
        ..Default::default()
    };
    let Some(binary) = etcd::binary() else {
        let why = "etcd is not installed (Debian's etcd-server; `make deps` installs it)";
        env.say(format!("cluster: skipped: {why}"));
        result.skipped = Some(why.into());
        return Ok(result);
    };
    result.etcd_version = etcd::version(&binary);
    let etcd = match Etcd::start(&binary) {
        Ok(etcd) => etcd,
        Err(e) => {
            env.say(format!("cluster: skipped: etcd did not start: {e:#}"));
            result.skipped = Some(format!("etcd did not start: {}", first_line(&format!("{e:#}"))));
            return Ok(result);
        }
    };
    let fan_per = fit(env, s.agents_per_server, ring.agents.len(), env.limits.max_agents(), "fan-out");
    let fail_max = SERVERS * env.limits.max_failover_agents_per_server(SERVERS);
    let fail_per = fit(env, s.failover_agents_per_server, ring.agents.len(), fail_max, "failover");
    let revoked = keys::generate(s.revocations)?;
    let known = known_keys(ring, SERVERS * fan_per.max(fail_per), &revoked);
    env.say(format!(
        "cluster: etcd pid {} at {} ({}); {} keys",
        etcd.process.pid,
        etcd.endpoint(),
        result.etcd_version.as_deref().unwrap_or("version unknown"),
        known.len()
    ));
    let extra = |id: &str| cluster_yaml(&etcd, id, s.lease);
    let a = env.server(Some((&ring.server, &known)), &extra("a"))?;
    let imported = import(env, &a, known.len())?;
    env.say(format!("cluster: keys:import of {} keys in {:.2} s: {}", known.len(), imported.seconds, imported.said));
    result.import = Some(imported);
    let mut servers = vec![a];
    for id in &SERVER_IDS[1..] {
        let server = PantryServer::start_like(&env.bins.server, &servers[0], &env.log_level, &extra(id))?;
        servers.push(server);
    }
    let single = env.server(Some((&ring.server, &known)), "")?;
    env.say(format!(
        "cluster: servers a, b, c: pids {}; single server pid {}",
        servers.iter().map(|s| s.process.pid.to_string()).collect::<Vec<_>>().join(", "),
        single.process.pid
    ));
    // Every server knows the admin (its key came from etcd).
    for (server, id) in servers.iter().zip(SERVER_IDS) {
        admin_ready(server, ring).with_context(|| format!("server {id}"))?;
    }

    let mut parts = Parts::new(env, "cluster");
    result.handshake = parts.part("handshake rate", handshakes(env, &servers[0], &single, ring, known.len()));
    if fan_per > 0 {
        let compared = fanout_compare(env, ring, s.agents_per_server, fan_per, &servers, &single);
        result.fanout = parts.part("fan-out", compared);
    }
    drop(single);
    if s.revocations > 0 {
        result.revocation = parts.part("revocation", revocations(env, &servers, ring, &revoked));
    }
    if fail_per > 0 {
        result.failover = parts.part("failover", failover::failover(env, s, fail_per, &mut servers, ring));
    }
    result.failures = parts.failures;
    drop(servers);
    drop(etcd);
    Ok(result)
}

/// Agents per server within the keys and the open-file limit (`max`
/// agents in the bench process at once).
fn fit(env: &Env, wanted: usize, keys: usize, max: usize, part: &str) -> usize {
    let per = wanted.min(keys / SERVERS).min(max / SERVERS);
    if per < wanted {
        env.say(format!(
            "cluster: {part} with {per} agents per server, not {wanted} (keys or the open-file limit: {max} agents)"
        ));
    }
    per
}

/// The agents' keys (the first `agents`), the admin's, the handshake
/// slots' and the revoked agents'.
fn known_keys(ring: &KeyRing, agents: usize, revoked: &[Pair]) -> Vec<KnownKey> {
    let mut known: Vec<KnownKey> = ring.agents[..agents.min(ring.agents.len())]
        .iter()
        .enumerate()
        .map(|(i, p)| keys::known(p.public_z85(), identity(i), Role::Client))
        .collect();
    known.push(keys::known(ring.admin.public_z85(), ADMIN_NAME.into(), Role::Admin));
    known.extend(ring.handshake_keys());
    known.extend(
        revoked.iter().enumerate().map(|(k, p)| keys::known(p.public_z85(), revoked_identity(k), Role::Client)),
    );
    known
}

/// `pantry-server -c server.yml keys:import` for `server`.
fn import(env: &Env, server: &PantryServer, keys: usize) -> Result<Import> {
    let started = Instant::now();
    let mut command = Command::new(&env.bins.server);
    command.arg("-c").arg(server.config_path()).arg("keys:import");
    let out = run_bounded(&mut command, Duration::from_secs(600))?;
    let seconds = started.elapsed().as_secs_f64();
    let said = out.stderr.lines().chain(out.stdout.lines()).find(|l| l.contains("imported")).unwrap_or("").trim();
    if !out.success() {
        bail!("keys:import failed ({:?}):\n{}{}", out.status, out.stdout, out.stderr);
    }
    Ok(Import { keys, seconds, said: said.to_owned() })
}

/// Waits until `server` answers the admin's `status` (its key is known).
fn admin_ready(server: &PantryServer, ring: &KeyRing) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < end {
        let admin = Admin::connect(server, &ring.admin, ADMIN_NAME)?;
        match admin.status(&ClientFilter::default(), Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the admin's `status` not answered within 20 s ({last})")
}

/// Part 1: server a (its keys from etcd) against the single server.
fn handshakes(
    env: &Env,
    clustered: &PantryServer,
    single: &PantryServer,
    ring: &KeyRing,
    known_keys: usize,
) -> Result<HandshakeRow> {
    let servers = [(&clustered.endpoints, clustered.process.pid), (&single.endpoints, single.process.pid)];
    let m = &env.measure;
    let row = handshake::compare(servers, &ring.handshake, m.handshake, m.rounds, known_keys)?;
    env.say(format!(
        "cluster: handshakes with {known_keys} known keys: {} / {} per s (server a, keys from etcd / single server)",
        num(row.rate.pantry),
        num(row.rate.baseline)
    ));
    Ok(row)
}

fn cpu_sum(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&p| cpu_ns(p)).sum()
}

/// Part 2: `pantry` is the cluster (admin on A), `baseline` the single
/// server.
fn fanout_compare(
    env: &Env,
    ring: &KeyRing,
    wanted: usize,
    per: usize,
    cluster: &[PantryServer],
    single: &PantryServer,
) -> Result<FanoutCompare> {
    let m = &env.measure;
    let total = SERVERS * per;
    let mut result = FanoutCompare {
        wanted_per_server: wanted,
        per_server: per,
        sequential: !env.limits.both_pools_fit(total),
        ..Default::default()
    };
    let names = ["3 servers", "1 server"];
    let mut admins = [
        Requester::connect(Kind::Pantry, &cluster[0].endpoints, Some(&ring.admin), ADMIN_NAME)?,
        Requester::connect(Kind::Pantry, &single.endpoints, Some(&ring.admin), ADMIN_NAME)?,
    ];
    let pids: [Vec<u32>; 2] = [cluster.iter().map(|s| s.process.pid).collect(), vec![single.process.pid]];
    let mut pools: [Vec<Pool>; 2] = Default::default();
    let mut p50: [Vec<f64>; 2] = Default::default();
    let mut p99: [Vec<f64>; 2] = Default::default();
    let mut p50_listed: [Vec<f64>; 2] = Default::default();
    let mut cpu: [Vec<f64>; 2] = Default::default();
    let mut by_server: Vec<Vec<f64>> = vec![Vec::new(); SERVERS];
    for round in 0..m.rounds {
        for i in order(round) {
            if pools[i].is_empty() {
                let started = Instant::now();
                let unreachable_before = result.unreachable.len();
                pools[i] = if i == 0 {
                    (0..SERVERS)
                        .map(|k| {
                            let range = k * per..(k + 1) * per;
                            Pool::start_with(
                                Kind::Pantry,
                                &cluster[k].endpoints,
                                &ring.agents,
                                range,
                                Default::default(),
                            )
                        })
                        .collect::<Result<_>>()?
                } else {
                    vec![Pool::start(Kind::Pantry, &single.endpoints, &ring.agents, total)?]
                };
                // A client whose record reached the other servers as offline
                // stays so until its state changes: waiting longer helps none.
                let end = Instant::now() + m.reachable_timeout.min(REACHABLE_CAP);
                for (g, group) in group_streams(total).into_iter().enumerate() {
                    let left = end.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
                    if let Err(e) = wait_until_reachable(&mut admins[i], std::slice::from_ref(&group), left) {
                        let on = if i == 0 { (g * GROUP_SIZE / per).min(SERVERS - 1) } else { 0 };
                        let seen =
                            diagnose(if i == 0 { cluster } else { std::slice::from_ref(single) }, on, ring, &group.0);
                        let why = format!("{} on {}: {}; {seen}", group.0, names[i], first_line(&format!("{e:#}")));
                        env.say(format!("cluster: not reachable: {why}"));
                        result.unreachable.push(why);
                    }
                }
                let setup = started.elapsed().as_secs_f64();
                result.setup_s.at_mut(i).get_or_insert(setup);
                let unreachable = result.unreachable.len() - unreachable_before;
                env.say(match unreachable {
                    0 => format!("cluster: {total} agents on {} reachable in {setup:.1} s", names[i]),
                    n => format!(
                        "cluster: {total} agents on {} connected in {setup:.1} s, {n} groups not all reachable",
                        names[i]
                    ),
                });
            }
            let before = cpu_sum(&pids[i]);
            let each: Vec<Option<u64>> = pids[i].iter().map(|&p| cpu_ns(p)).collect();
            let Fanouts { times_ms: times, incomplete, answers, listed_ms, fewest_listed, .. } =
                fanouts(&mut admins[i], total, m)?;
            let fewest = result.fewest_listed.at_mut(i);
            *fewest = fewest.iter().copied().chain(fewest_listed).min();
            if let (Some(before), Some(after)) = (before, cpu_sum(&pids[i])) {
                if answers > 0 {
                    cpu[i].push(after.saturating_sub(before) as f64 / 1000.0 / answers as f64);
                }
            }
            if i == 0 {
                for (k, (&pid, before)) in pids[0].iter().zip(each).enumerate() {
                    by_server[k].extend(cpu_us_per(pid, before, answers));
                }
            }
            *result.incomplete.at_mut(i) += incomplete;
            *result.attempted.at_mut(i) += times.len();
            p50[i].extend(percentile(&times, 50.0));
            p50_listed[i].extend(percentile(&listed_ms, 50.0));
            p99[i].extend(percentile(&times, 99.0));
            env.say(format!(
                "cluster: fan-out to {total} on {}: p50 {} ms, p99 {} ms ({incomplete} incomplete), server CPU {} µs \
                 per answer",
                names[i],
                num(percentile(&times, 50.0)),
                num(percentile(&times, 99.0)),
                num(cpu[i].last().copied())
            ));
            if result.sequential {
                pools[i].clear();
            }
        }
    }
    for i in 0..2 {
        *result.p50_ms.at_mut(i) = median(&p50[i]);
        *result.p99_ms.at_mut(i) = median(&p99[i]);
        *result.p50_listed_ms.at_mut(i) = median(&p50_listed[i]);
        *result.cpu_us_per_answer.at_mut(i) = median(&cpu[i]);
    }
    result.cpu_us_per_answer_by_server = by_server.iter().map(|v| median(v)).collect();
    Ok(result)
}

/// What the servers say about a group an admin on the first of `servers`
/// could not reach: the first one's `status` and the group's own server's
/// (`on`), and an echo to the group from an admin on its own server.
fn diagnose(servers: &[PantryServer], on: usize, ring: &KeyRing, group: &str) -> String {
    let filter = ClientFilter { application: Some(group.to_owned()), ..Default::default() };
    let id = |k: usize| if servers.len() == 1 { "the server" } else { SERVER_IDS[k] };
    let mut said = Vec::new();
    let mut online_on: Vec<Option<BTreeSet<String>>> = Vec::new();
    for k in [0, on].into_iter().collect::<BTreeSet<_>>() {
        let seen = Admin::connect(&servers[k], &ring.admin, ADMIN_NAME)
            .and_then(|admin| admin.status(&filter, Duration::from_secs(5)));
        match seen {
            Ok(list) => {
                let (listed, online) = counts(&list);
                said.push(format!("`status` on {} lists {online} online of {listed}", id(k)));
                online_on.push(Some(list.into_iter().filter(|c| c.state == ONLINE).map(|c| c.identity).collect()));
            }
            Err(e) => {
                said.push(format!("`status` on {}: {}", id(k), first_line(&format!("{e:#}"))));
                online_on.push(None);
            }
        }
    }
    if let [Some(first), Some(own)] = online_on.as_slice() {
        let missing: Vec<&String> = own.difference(first).take(5).collect();
        if !missing.is_empty() {
            said.push(format!(
                "online on {} but not on {}: {}",
                id(on),
                id(0),
                missing.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let echo = Admin::connect(&servers[on], &ring.admin, ADMIN_NAME)
        .and_then(|admin| echo_stream(&admin, group, Duration::from_secs(3)));
    match echo {
        Ok((listed, answers)) => {
            said.push(format!("an echo from an admin on {}: {answers} answers of {listed} listed", id(on)))
        }
        Err(e) => said.push(format!("an echo from an admin on {}: {}", id(on), first_line(&format!("{e:#}")))),
    }
    said.join("; ")
}

/// An echo to `stream`: how many the server listed, how many answered
/// within `timeout`.
fn echo_stream(admin: &Admin, stream: &str, timeout: Duration) -> Result<(usize, usize)> {
    let mut request = echo::request("pantry-bench");
    request.stream = stream.to_owned();
    request.metadata.to = stream.to_owned();
    let uuid = admin.send(request)?;
    let end = Instant::now() + timeout;
    let (mut listed, mut answers) = (None, 0);
    while listed.map_or(true, |l| answers < l) {
        let Some(m) = admin.recv(&uuid, end) else { break };
        if m.is_client_response_list() {
            listed = Some(recipients::online(&m).len());
        } else if m.error().is_none() {
            answers += 1;
        }
    }
    Ok((listed.unwrap_or(0), answers))
}

/// An agent whose key is revoked: its one connection, a DEALER on C, with
/// a monitor that reports the disconnection.
struct Watched {
    identity: String,
    _dealer: zmq::Socket,
    monitor: zmq::Socket,
}

/// Registers as the real agent does, asking for its requests on the
/// DEALER and for an answer; returns once the answer says it is accepted.
fn watched(ctx: &zmq::Context, endpoints: &Endpoints, pair: &Pair, k: usize, end: Instant) -> Result<Watched> {
    let identity = revoked_identity(k);
    let me = ClientFilter {
        identity: Some(identity.clone()),
        application: Some(REVOKED_APP.into()),
        environment: Some(ENVIRONMENT.into()),
        roles: vec![ROLE.into()],
    };
    let security = client_security(endpoints, Some(pair))?;
    let dealer = security.socket(ctx, zmq::DEALER)?;
    dealer.set_linger(0)?;
    let monitor = monitor::monitor(ctx, &dealer, &[zmq::SocketEvent::DISCONNECTED])?;
    dealer.connect(&endpoints.receive)?;
    let mut request = register_client::request(&me);
    register_client::ask_requests_on_dealer(&mut request);
    request.metadata.requires_response = true;
    dealer.send_multipart(request.to_frames(), zmq::DONTWAIT)?;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{identity}: no answer to its registration on C");
        }
        if dealer.poll(zmq::POLLIN, left.as_millis().max(1) as i64)? == 0 {
            continue;
        }
        let answer = Message::from_frames(&dealer.recv_multipart(0)?)?;
        if let Some(error) = answer.error() {
            bail!("{identity}: registration refused: {error}");
        }
        if !register_client::sends_requests_on_dealer(&answer) {
            bail!("{identity}: registration accepted without `requests_on_dealer`");
        }
        break;
    }
    Ok(Watched { identity, _dealer: dealer, monitor })
}

/// Part 3: the revoked agents on C, each revoked in turn on A.
fn revocations(env: &Env, servers: &[PantryServer], ring: &KeyRing, revoked: &[Pair]) -> Result<Revocation> {
    let (a, c) = (&servers[0], &servers[SERVERS - 1]);
    let ctx = zmq::Context::new();
    let end = Instant::now() + Duration::from_secs(30);
    let agents: Vec<Watched> =
        revoked.iter().enumerate().map(|(k, pair)| watched(&ctx, &c.endpoints, pair, k, end)).collect::<Result<_>>()?;
    let admin = Admin::connect(a, &ring.admin, ADMIN_NAME)?;
    let on_c = Admin::connect(c, &ring.admin, ADMIN_NAME)?;
    // Online on C (A's view may lag, or keep a record written out of
    // order: see the report).
    let filter = ClientFilter { application: Some(REVOKED_APP.into()), ..Default::default() };
    loop {
        let (_, online) = counts(&on_c.status(&filter, Duration::from_secs(5))?);
        if online >= agents.len() {
            break;
        }
        if Instant::now() >= end {
            bail!("{online} of {} revoked agents online in c's status", agents.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, online_on_a) = counts(&admin.status(&filter, Duration::from_secs(5))?);
    env.say(format!(
        "cluster: {} agents on c, online in c's status ({online_on_a} in a's); revoking each on a",
        agents.len()
    ));
    let log_before = c.process.log().matches("cut off a revoked key").count();
    let mut result = Revocation { tries: agents.len(), ..Default::default() };
    for agent in &agents {
        let (cut, answered) = revoke(&admin, agent)?;
        match cut {
            Some(ms) => result.cut_ms.push(ms),
            None => result.not_cut += 1,
        }
        result.answer_ms.extend(answered);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    result.log_lines = c.process.log().matches("cut off a revoked key").count() - log_before;
    for (k, admin) in [&admin, &on_c].into_iter().enumerate() {
        let list = admin.status(&ClientFilter::default(), Duration::from_secs(10))?;
        result.listed_after[k] = list.iter().filter(|c| c.identity.starts_with(REVOKED_PREFIX)).count();
    }
    env.say(format!(
        "cluster: revoked on a, cut off on c: p50 {} ms, max {} ms ({} not cut off; answer from a p50 {} ms; {} log \
         lines); status afterwards lists {} of them on a, {} on c",
        num(result.p50_ms()),
        num(result.max_ms()),
        result.not_cut,
        num(median(&result.answer_ms)),
        result.log_lines,
        result.listed_after[0],
        result.listed_after[1]
    ));
    Ok(result)
}

/// One revocation: when the agent's connection closed and when A answered
/// (ms after sending), each if it happened within [`CUT_TIMEOUT`].
fn revoke(admin: &Admin, agent: &Watched) -> Result<(Option<f64>, Option<f64>)> {
    while monitor::read(&agent.monitor).is_some() {}
    let start = Instant::now();
    let uuid = admin.send(client_revoke::request(&agent.identity))?;
    let end = start + CUT_TIMEOUT;
    let (mut cut, mut answered) = (None, None);
    while cut.is_none() || answered.is_none() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut items = [agent.monitor.as_poll_item(zmq::POLLIN), admin.socket().as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, left.as_millis().max(1) as i64)?;
        let admin_ready = items[1].is_readable();
        let at = start.elapsed().as_secs_f64() * 1000.0;
        while let Some(event) = monitor::read(&agent.monitor) {
            if event.event == SocketEvent::Disconnected {
                cut.get_or_insert(at);
            }
        }
        if admin_ready && answered.is_none() {
            if let Some(answer) = admin.recv(&uuid, Instant::now() + Duration::from_millis(1)) {
                if let Some(error) = answer.error() {
                    bail!("RevokeClient {} refused: {error}", agent.identity);
                }
                answered = Some(at);
            }
        }
    }
    Ok((cut, answered))
}
