//! Several servers, one fleet, on a real etcd (Debian's `etcd-server`,
//! started here on loopback with a temporary data directory): keys made on
//! one server work on the others, a revocation anywhere cuts the key off
//! everywhere within a second, trust on first use admits exactly one admin
//! in the whole cluster, `status` on any server lists the whole fleet, and
//! the servers keep serving while etcd is away.

use std::path::Path;
use std::time::{Duration, Instant};

use pantry_integration::curve::{
    admin, bootstrap_admin, copy_key_store, create_named_client, curve_dealer, curve_socket, field, line_with,
    recv_for, send, server_key_only, wait_for_line, write_key_file, yaml, KEYS,
};
use pantry_integration::etcd::Etcd;
use pantry_integration::{wait_until, Agent, AgentSpec, Ports, Server};
use pantry_shared::commands::{client_revoke, create_client, status};
use pantry_shared::filter::ClientFilter;
use pantry_shared::keys::{KeyPair, Role};

const WAIT: Duration = Duration::from_secs(10);

fn cluster_yaml(etcd: &Etcd, id: &str) -> String {
    cluster_yaml_at(etcd, id, "127.0.0.1")
}

fn cluster_yaml_at(etcd: &Etcd, id: &str, host: &str) -> String {
    format!("cluster:\n  etcd: [{}]\n  server_id: {id}\n  advertise: {host}\n  lease: 2s\n", etcd.endpoint())
}

/// The first server of a cluster: its own key pair becomes the cluster's.
fn first(etcd: &Etcd, id: &str) -> Server {
    Server::start_on_with("127.0.0.1", Ports::free(), true, &cluster_yaml(etcd, id), |_| {})
}

/// Another server, with the first one's key pair (the operator copies
/// `server_keys.yml`).
fn another(etcd: &Etcd, id: &str, like: &Server) -> Server {
    Server::start_on_with("127.0.0.1", Ports::free(), true, &cluster_yaml(etcd, id), |root| copy_key_store(like, root))
}

fn agent_on(server: &Server, credentials: String, identity: &str) -> Agent {
    let mut spec = AgentSpec::new(identity, "shop", "prod", &[]);
    spec.client_keys_yaml = Some(credentials);
    Agent::start(server, spec)
}

/// `status --json` on `server` lists `identity` online, on `on`.
fn listed_on(server: &Server, cwd: &Path, identity: &str, on: &str) -> bool {
    let run = admin(server, cwd, 5, &["status", "--json"]);
    let Ok(list) = serde_json::from_str::<serde_json::Value>(&run.stdout) else { return false };
    list.as_array().is_some_and(|clients| {
        clients.iter().any(|c| c["identity"] == identity && c["state"] == "online" && c["server"] == on)
    })
}

#[test]
fn keys_registry_and_revocations_span_the_cluster() {
    let etcd = Etcd::start();
    let a = first(&etcd, "a");
    let (cwd, _) = bootstrap_admin(&a);
    let b = another(&etcd, "b", &a);
    let c = another(&etcd, "c", &a);
    // The admin trusted on A is known on B and C.
    for server in [&b, &c] {
        let run = admin(server, cwd.path(), 5, &["status"]);
        assert!(run.success(), "{run:?}\n{}", server.log());
    }
    // A key made on A works on C (and one made on B on B): status on every
    // server lists the whole fleet, each client with its server.
    let web = agent_on(&c, create_named_client(&a, cwd.path(), "web-1"), "web-1");
    let db = agent_on(&b, create_named_client(&b, cwd.path(), "db-1"), "db-1");
    for server in [&a, &b, &c] {
        let all = wait_until(WAIT, || {
            listed_on(server, cwd.path(), "web-1", "c") && listed_on(server, cwd.path(), "db-1", "b")
        });
        assert!(
            all,
            "status on {} does not list the fleet:\n{}",
            server.host,
            admin(server, cwd.path(), 5, &["status"]).stdout
        );
    }
    let echo = admin(&c, cwd.path(), 5, &["-i", "web-1", "echo", "hi"]);
    assert!(echo.success() && echo.stdout.contains("web-1: hi"), "{echo:?}\n{}", web.log());
    // From an admin on A, commands reach the agents on B and C (over the
    // links between the servers) and every answer comes back.
    let everyone = admin(&a, cwd.path(), 5, &["echo", "hello"]);
    assert!(everyone.success(), "{everyone:?}\n{}\n{}", a.log(), b.log());
    assert!(everyone.stdout.contains("web-1: hello") && everyone.stdout.contains("db-1: hello"), "{everyone:?}");
    let exec = admin(&a, cwd.path(), 10, &["-a", "shop", "exec", "--", "echo", "ran"]);
    assert!(exec.success(), "{exec:?}");
    assert_eq!(exec.stdout.matches("ran").count(), 2, "{exec:?}");
    // An upload from A: the agent on C fetches the file from A's file
    // service.
    let files = tempfile::tempdir().unwrap();
    let source = files.path().join("source.txt");
    std::fs::write(&source, "cluster upload\n").unwrap();
    let target = files.path().join("copied.txt");
    let upload =
        admin(&a, cwd.path(), 10, &["-i", "web-1", "upload", source.to_str().unwrap(), target.to_str().unwrap()]);
    assert!(upload.success(), "{upload:?}\n{}", web.log());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "cluster upload\n");

    // Revoked on A, cut off on C within a second.
    let offset = c.log().len();
    let started = Instant::now();
    let revoke = admin(&a, cwd.path(), 5, &["client:revoke", "web-1"]);
    assert!(revoke.success(), "{revoke:?}");
    let cut = wait_for_line(
        || c.log().get(offset..).unwrap_or_default().to_owned(),
        &["cut off a revoked key", "connections"],
        Duration::from_secs(1),
    );
    assert!(cut.is_some(), "not cut off on C within 1 s ({:?}):\n{}", started.elapsed(), c.log());
    let refused = admin(&c, cwd.path(), 5, &["-i", "web-1", "echo", "hi"]);
    assert!(!refused.success(), "{refused:?}");
    // And it leaves the fleet: no server lists it any more (a single server
    // forgets a revoked key's clients; so does every server of a cluster).
    for server in [&a, &b, &c] {
        let gone = wait_until(WAIT, || {
            let run = admin(server, cwd.path(), 5, &["status", "--json"]);
            run.success() && !run.stdout.contains("\"web-1\"")
        });
        assert!(
            gone,
            "status on {} still lists web-1:\n{}",
            server.host,
            admin(server, cwd.path(), 5, &["status"]).stdout
        );
    }
    drop(db);
}

/// The key pair the servers share is known to each as `pantry-server`, role
/// `server`: it may pass on commands to clients, nothing else, and reads
/// nothing on PUB. Whoever copies a server's `server_keys.yml` gets no
/// admin.
#[test]
fn the_servers_shared_key_only_passes_on_commands_to_clients() {
    let etcd = Etcd::start();
    let a = first(&etcd, "a");
    let (cwd, _) = bootstrap_admin(&a);
    let _web = agent_on(&a, create_named_client(&a, cwd.path(), "web-1"), "web-1");
    assert!(wait_until(WAIT, || listed_on(&a, cwd.path(), "web-1", "a")));
    let stored = yaml(&std::fs::read_to_string(a.root_dir().join("security/curve/server_keys.yml")).unwrap());
    let pair = KeyPair { public_key: field(&stored, "public_key"), private_key: field(&stored, "private_key") };
    let ctx = zmq::Context::new();
    let dealer = curve_dealer(&ctx, &a, &pair);
    for request in [
        status::request(&ClientFilter::default()),
        create_client::request(Some("mine"), Role::Admin),
        client_revoke::request("web-1"),
    ] {
        let mut request = request;
        request.metadata.requires_response = true;
        send(&dealer, &request);
        let answer = recv_for(&dealer, request.uuid(), WAIT);
        assert!(
            answer.as_ref().and_then(|m| m.error()).is_some_and(|e| e.contains("not authorized")),
            "{}: {answer:?}",
            request.message_type()
        );
    }
    let sub = curve_socket(&ctx, &a, &pair, zmq::SUB, a.ports.pub_sub);
    sub.set_subscribe(b"").unwrap();
    let refused = wait_until(WAIT, || line_with(&a.log(), &["a server's key subscribes to nothing"]).is_some());
    assert!(refused, "{}", a.log());
    // Nothing changed: web-1 is still there and answers the admin.
    let echo = admin(&a, cwd.path(), 5, &["-i", "web-1", "echo", "still"]);
    assert!(echo.success() && echo.stdout.contains("web-1: still"), "{echo:?}");
}

/// A client that reconnects to another server while its old server still
/// runs is listed where it is now: the old server, seeing it go quiet, does
/// not overwrite the new server's record with its own "offline".
#[test]
fn a_client_that_moves_while_its_old_server_lives_is_listed_where_it_is() {
    let etcd = Etcd::start();
    let a = first(&etcd, "a");
    let (cwd, _) = bootstrap_admin(&a);
    let b = another(&etcd, "b", &a);
    let c = another(&etcd, "c", &a);
    let credentials = create_named_client(&a, cwd.path(), "web-1");
    let old = agent_on(&b, credentials.clone(), "web-1");
    assert!(wait_until(WAIT, || listed_on(&a, cwd.path(), "web-1", "b")), "{}", old.log());
    // Frozen on B: its connection stays up, its heartbeats stop; the same
    // client comes up on C.
    let pid = old.process.pid().expect("the agent runs") as i32;
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let new = agent_on(&c, credentials, "web-1");
    assert!(wait_until(WAIT, || listed_on(&a, cwd.path(), "web-1", "c")), "{}", new.log());
    let quiet = b.process.wait_for_log("client offline", WAIT);
    // Killed while still frozen: woken, it would check in with B again
    // (and be, rightly, B's client once more).
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    drop(old);
    assert!(quiet, "B did not notice the frozen agent:\n{}", b.log());
    // B's "offline" has had time to reach etcd and the watches.
    std::thread::sleep(Duration::from_secs(1));
    for server in [&a, &b, &c] {
        assert!(
            listed_on(server, cwd.path(), "web-1", "c"),
            "status on {} does not list web-1 online on c:\n{}",
            server.host,
            admin(server, cwd.path(), 5, &["status"]).stdout
        );
    }
    let echo = admin(&a, cwd.path(), 5, &["-i", "web-1", "echo", "here"]);
    assert!(echo.success() && echo.stdout.contains("web-1: here"), "{echo:?}\n{}", new.log());
    // When it goes away from C, C says so (its own record), rather than
    // what B said of it before it moved.
    drop(new);
    let offline_on_c = wait_until(WAIT, || {
        let run = admin(&c, cwd.path(), 5, &["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&run.stdout).is_ok_and(|list| {
            list.as_array().is_some_and(|clients| {
                clients.iter().any(|x| x["identity"] == "web-1" && x["state"] == "offline" && x["server"] == "c")
            })
        })
    });
    assert!(offline_on_c, "{}", admin(&c, cwd.path(), 5, &["status"]).stdout);
}

#[test]
fn first_admins_racing_on_two_servers_exactly_one_is_trusted() {
    let etcd = Etcd::start();
    let a = first(&etcd, "a");
    let b = another(&etcd, "b", &a);
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        write_key_file(dir.path(), KEYS, &server_key_only(&a.public_key()));
    }
    let runs = std::thread::scope(|scope| {
        let racers: Vec<_> = [&a, &b]
            .into_iter()
            .zip(&dirs)
            .map(|(server, dir)| scope.spawn(move || admin(server, dir.path(), 5, &["status"])))
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect::<Vec<_>>()
    });
    let trusted = runs.iter().filter(|r| r.success()).count();
    assert_eq!(trusted, 1, "exactly one first admin: {runs:#?}\n{}\n{}", a.log(), b.log());
    // The loser stays unknown on both servers.
    let loser = dirs.iter().zip(&runs).find(|(_, r)| !r.success()).map(|(d, _)| d).unwrap();
    for server in [&a, &b] {
        assert!(!admin(server, loser.path(), 3, &["status"]).success());
    }
}

#[test]
fn a_server_with_another_key_pair_refuses_to_start() {
    let etcd = Etcd::start();
    let _a = first(&etcd, "a");
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let config = format!(
        "root_dir: {}\n{}{}",
        dir.path().join("root").display(),
        ports.networking_yaml(true),
        cluster_yaml(&etcd, "b")
    );
    std::fs::write(dir.path().join("server.yml"), config).unwrap();
    let out = std::process::Command::new(pantry_integration::bin("pantry-server"))
        .args(["-c", dir.path().join("server.yml").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not the cluster's") && stderr.contains("server_keys.yml"), "{stderr}");
}

#[test]
fn servers_keep_serving_while_etcd_is_away_and_catch_up() {
    let mut etcd = Etcd::start();
    let a = first(&etcd, "a");
    let (cwd, _) = bootstrap_admin(&a);
    let b = another(&etcd, "b", &a);
    let _web = agent_on(&a, create_named_client(&a, cwd.path(), "web-1"), "web-1");
    let listed = wait_until(WAIT, || listed_on(&a, cwd.path(), "web-1", "a"));
    assert!(listed, "{}", a.log());

    etcd.stop();
    // Served from each server's copy of the keys.
    let echo = admin(&a, cwd.path(), 5, &["-i", "web-1", "echo", "still here"]);
    assert!(echo.success(), "{echo:?}");
    assert!(admin(&b, cwd.path(), 5, &["status"]).success());
    // Key changes are refused, saying why.
    let create = admin(&a, cwd.path(), 10, &["client:create", "--name", "web-2"]);
    assert!(!create.success(), "{create:?}");
    assert!(create.stderr.contains("unavailable"), "{create:?}");

    etcd.resume();
    let made = wait_until(Duration::from_secs(20), || {
        admin(&b, cwd.path(), 10, &["client:create", "--name", "web-3"]).success()
    });
    assert!(made, "no key change after etcd came back:\n{}", b.log());
    // A caught up: the key made on B is known there.
    let known = wait_until(WAIT, || admin(&a, cwd.path(), 5, &["client:list"]).stdout.contains("web-3"));
    assert!(known, "{}", a.log());
}

#[test]
fn keys_import_moves_a_file_store_into_etcd() {
    let etcd = Etcd::start();
    // A standalone server with an admin and a client key in its file.
    let solo = Server::start(true);
    let (cwd, _) = bootstrap_admin(&solo);
    create_named_client(&solo, cwd.path(), "web-1");
    let yaml = std::fs::read_to_string(solo.config_path()).unwrap() + &cluster_yaml(&etcd, "solo");
    let config = solo.dir.path().join("cluster.yml");
    std::fs::write(&config, yaml).unwrap();
    let out = std::process::Command::new(pantry_integration::bin("pantry-server"))
        .args(["-c", config.to_str().unwrap(), "keys:import"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("imported 2 keys"), "{stderr}");
    // A cluster server with the same key pair knows the admin and web-1.
    let b = another(&etcd, "b", &solo);
    let list = admin(&b, cwd.path(), 5, &["client:list"]);
    assert!(list.success() && list.stdout.contains("web-1"), "{list:?}\n{}", b.log());
}

#[test]
fn agents_of_a_killed_server_answer_through_the_others() {
    let etcd = Etcd::start();
    let hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let ports = Ports::free_on(&hosts);
    let on = |host: &str, id: &str, like: Option<&Server>| {
        Server::start_on_with(host, ports, true, &cluster_yaml_at(&etcd, id, host), |root| {
            if let Some(like) = like {
                copy_key_store(like, root)
            }
        })
    };
    let a = on(hosts[0], "a", None);
    let (cwd, _) = bootstrap_admin(&a);
    let mut b = on(hosts[1], "b", Some(&a));
    let c = on(hosts[2], "c", Some(&a));
    // An agent that starts on B and knows the other two.
    let mut spec = AgentSpec::new("web-1", "shop", "prod", &[]);
    spec.client_keys_yaml = Some(create_named_client(&a, cwd.path(), "web-1"));
    spec.server_hosts = vec![hosts[1].into(), hosts[2].into(), hosts[0].into()];
    let agent = Agent::start(&b, spec);
    assert!(wait_until(WAIT, || listed_on(&a, cwd.path(), "web-1", "b")), "{}", agent.log());

    b.process.kill();
    let killed = Instant::now();
    // At once (before B's lease expires), a command names it offline
    // instead of waiting for it: A's link to B is down.
    let gap = wait_until(Duration::from_secs(2), || {
        let echo = admin(&a, cwd.path(), 5, &["-i", "web-1", "echo", "gap"]);
        !echo.success() && format!("{}{}", echo.stdout, echo.stderr).contains("offline")
    });
    assert!(gap, "the moving agent was not named offline:\n{}", a.log());
    // Within three heartbeat intervals (1 s) and the lease (2 s), it answers
    // an admin on A, through A or C.
    let moved = wait_until(Duration::from_secs(8), || {
        let echo = admin(&a, cwd.path(), 2, &["-i", "web-1", "echo", "moved"]);
        echo.success() && echo.stdout.contains("web-1: moved")
    });
    assert!(moved, "no answer via another server:\n{}\n{}", agent.log(), c.log());
    eprintln!("SIGKILL of B to an answer through another server: {:?}", killed.elapsed());
    // Its next server is C or A (the order after the first host is the
    // agent's own, so that B's agents spread over both).
    let now_on = ["a", "c"].into_iter().find(|on| listed_on(&a, cwd.path(), "web-1", on));
    assert!(now_on.is_some(), "{}", admin(&a, cwd.path(), 5, &["status"]).stdout);
}

/// A rollout runs on the server that took it, over agents connected to
/// the others too: each batch reaches its agents wherever they are, and
/// their answers come back to that server's job.
#[test]
fn a_rollout_reaches_agents_on_every_server_of_the_cluster() {
    let etcd = Etcd::start();
    let a = first(&etcd, "a");
    let (cwd, _) = bootstrap_admin(&a);
    let b = another(&etcd, "b", &a);
    let ids = ["web-1", "web-2", "web-3", "web-4"];
    let _agents: Vec<Agent> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| agent_on(if i % 2 == 0 { &a } else { &b }, create_named_client(&a, cwd.path(), id), id))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let on = if i % 2 == 0 { "a" } else { "b" };
        assert!(wait_until(WAIT, || listed_on(&a, cwd.path(), id, on)), "{id} not on {on}\n{}", a.log());
    }
    let run = admin(&a, cwd.path(), 10, &["-a", "shop", "echo", "--batch", "2", "rolled"]);
    assert!(run.success(), "{run:?}\n{}\n{}", a.log(), b.log());
    assert!(run.stderr.contains("4 targeted: 4 ok") && run.stderr.contains("batch 2/2"), "{run:?}");
    for id in ids {
        assert!(run.stdout.contains(&format!("{id}: rolled")), "{run:?}");
    }
    // Control is the server running it's: the other one does not know it.
    let list: serde_json::Value = serde_json::from_str(&admin(&a, cwd.path(), 5, &["jobs", "--json"]).stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let elsewhere = admin(&b, cwd.path(), 5, &["job", "pause", &id]);
    assert_eq!(elsewhere.code, Some(1), "{elsewhere:?}");

    // Cancel reaches the agents on the other server too.
    let file = a.dir.path().join("pids");
    let sh = format!("echo $$ >> {}; exec sleep 600", file.display());
    let pids = || -> Vec<u32> {
        std::fs::read_to_string(&file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    };
    let started = admin(&a, cwd.path(), 10, &["-a", "shop", "exec", "--batch", "4", "--async", "--shell", "--", &sh]);
    assert!(started.success(), "{started:?}");
    let id = started.stdout.trim().to_owned();
    assert!(wait_until(WAIT, || pids().len() == 4), "not all started: {:?}", pids());
    let cancelled = admin(&a, cwd.path(), 5, &["job", "cancel", &id, "--grace", "1s"]);
    assert!(cancelled.success(), "{cancelled:?}");
    let alive = |pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    assert!(
        wait_until(Duration::from_secs(3), || !pids().iter().any(alive)),
        "still running
{}",
        b.log()
    );
    let waited = admin(&a, cwd.path(), 10, &["job", &id, "--wait"]);
    assert!(waited.stderr.contains("4 targeted: 4 cancelled"), "{waited:?}");
}

/// Facts are in the fleet's registry: an admin on one server targets by
/// the facts of an agent on another.
#[test]
fn facts_target_agents_on_every_server_of_the_cluster() {
    let etcd = Etcd::start();
    let a = first(&etcd, "a");
    let (cwd, _) = bootstrap_admin(&a);
    let b = another(&etcd, "b", &a);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("team.json"), r#"{"team": "payments"}"#).unwrap();
    let mut spec = AgentSpec::new("web-9", "shop", "prod", &[]);
    spec.client_keys_yaml = Some(create_named_client(&a, cwd.path(), "web-9"));
    spec.client_extra = format!("  facts_dir: {}\n", dir.path().display());
    let _agent = Agent::start(&b, spec);
    let answered = wait_until(WAIT, || {
        let run = admin(&a, cwd.path(), 3, &["-F", "team=payments", "echo", "by-fact"]);
        run.success() && run.stdout.contains("web-9: by-fact")
    });
    assert!(answered, "{}\n{}", a.log(), b.log());
    let none = admin(&a, cwd.path(), 3, &["-F", "team=search", "echo", "none"]);
    assert_eq!(none.code, Some(2), "{none:?}");
}
