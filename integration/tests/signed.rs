//! Signed requests (issue 26), on the real binaries, with a rogue server:
//! once the real server stops, a raw ZeroMQ process binds its ports with
//! its key pair (read from its `server_keys.yml`) and publishes to an
//! enrolled `pantry-client`: an unsigned `exec`, one signed with a key not
//! on the agent's list, a legitimate one replayed, one altered after
//! signing, one for another agent, one past its expiry, and one signed by
//! an admin revoked since. Each is refused, logged at warn, and runs
//! nothing; a legitimate one runs once; an agent with
//! `require_signed: false` still runs unsigned requests.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use pantry_integration::curve::{admin, bootstrap_admin, create_named_client, KEYS};
use pantry_integration::{wait_for_status, wait_until, Agent, AgentSpec, Server};
use pantry_shared::commands::{exec, register_client, trust};
use pantry_shared::filter::TopicForm;
use pantry_shared::keys::ClientKeysFile;
use pantry_shared::signing::{self, SigningPair, TrustList, TrustedAdmin};
use pantry_shared::Message;

const WAIT: Duration = Duration::from_secs(15);

fn signing_pair_of(path: &Path) -> SigningPair {
    let file: ClientKeysFile = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    SigningPair::from_hex(&file.signing_public_key.unwrap(), &file.signing_private_key.unwrap()).unwrap()
}

fn appending(file: &Path, line: &str) -> Message {
    let mut m = exec::request(&exec::ExecRequest {
        program: format!("echo {line} >> {}", file.display()),
        args: vec![],
        shell: true,
        timeout: 5.0,
    });
    m.metadata.from = "admin".into();
    m
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// A process that took over the server's ports and key pair: it answers
/// registrations and sends what it likes, over each agent's own connection
/// (as this server does) and on its PUB socket (as an older one did).
struct Rogue {
    publish: zmq::Socket,
    router: zmq::Socket,
    /// Each agent's connection, from its registrations.
    peers: std::cell::RefCell<std::collections::HashMap<String, Vec<u8>>>,
    _ctx: zmq::Context,
}

impl Rogue {
    fn bind(server: &Server) -> Rogue {
        let text = std::fs::read_to_string(server.root_dir().join("security/curve/server_keys.yml")).unwrap();
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let secret = zmq::z85_decode(yaml["private_key"].as_str().unwrap()).unwrap();
        let ctx = zmq::Context::new();
        let socket = |kind, port: u16| {
            let s = ctx.socket(kind).unwrap();
            s.set_linger(0).unwrap();
            s.set_curve_server(true).unwrap();
            s.set_curve_secretkey(&secret).unwrap();
            // The ports were the server's a moment ago: a few tries.
            let end = Instant::now() + Duration::from_secs(5);
            while s.bind(&format!("tcp://127.0.0.1:{port}")).is_err() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            s
        };
        let router = socket(zmq::ROUTER, server.ports.receive);
        let publish = socket(zmq::PUB, server.ports.pub_sub);
        Rogue { publish, router, peers: Default::default(), _ctx: ctx }
    }

    /// Answers every registration waiting (accepted, exact topics), with
    /// a trust list of its own making, which agents must refuse.
    fn answer_registrations(&self, forged: &TrustList) {
        while let Ok(frames) = self.router.recv_multipart(zmq::DONTWAIT) {
            let Some((peer, rest)) = frames.split_first() else { continue };
            let Ok(m) = Message::from_frames(rest) else { continue };
            if m.message_type() == register_client::TYPE && m.metadata.requires_response {
                self.peers.borrow_mut().insert(m.metadata.from.clone(), peer.clone());
                let mut answer = register_client::respond(&m);
                answer.metadata.custom.insert(trust::LIST_FIELD.into(), serde_json::to_value(forged).unwrap());
                let mut out = vec![peer.clone()];
                out.extend(answer.to_frames());
                let _ = self.router.send_multipart(out, zmq::DONTWAIT);
            }
        }
    }

    /// Sends `m` to `identity`: over its connection, and published to its
    /// exact topic.
    fn publish_to(&self, identity: &str, m: &Message) {
        let mut frames = m.to_frames();
        if let Some(peer) = self.peers.borrow().get(identity) {
            let mut direct = vec![peer.clone(), identity.as_bytes().to_vec()];
            direct.extend(frames.iter().skip(1).cloned());
            let _ = self.router.send_multipart(direct, zmq::DONTWAIT);
        }
        frames[0] = TopicForm::Exact.topic(identity);
        let _ = self.publish.send_multipart(frames, zmq::DONTWAIT);
    }
}

#[test]
fn a_rogue_server_runs_nothing_on_an_agent_that_requires_signatures() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let alice = signing_pair_of(&cwd.path().join(".pantry").join(KEYS));

    // A second admin, signed in by the first; agents trust both.
    let bob_file = cwd.path().join(".pantry/bob.yml");
    let made = admin(
        &server,
        cwd.path(),
        5,
        &["client:create", "--admin", "--name", "bob", "--output", bob_file.to_str().unwrap()],
    );
    assert!(made.success() && made.stderr.contains("agents now trust `bob`"), "{made:?}");
    let bob = signing_pair_of(&bob_file);

    let mut spec = AgentSpec::new("web-1", "shop", "prod", &["web"]);
    spec.client_keys_yaml = Some(create_named_client(&server, cwd.path(), "web-1"));
    let agent = Agent::start(&server, spec);
    let mut lax = AgentSpec::new("web-3", "shop", "prod", &["web"]);
    lax.client_keys_yaml = Some(create_named_client(&server, cwd.path(), "web-3"));
    lax.client_extra = "  require_signed: false\n".into();
    let lax = Agent::start(&server, lax);
    let online =
        wait_for_status(&server, cwd.path(), &["--curve-key-file", KEYS, "--timeout", "2"], &["web-1", "web-3"], WAIT);
    assert!(online, "{}", server.log());
    assert!(agent.log().contains("running only requests signed by a trusted admin"), "{}", agent.log());
    assert!(lax.log().contains("runs unsigned requests"), "{}", lax.log());

    // Legitimate: an admin's exec runs; bob's too.
    let ok = cwd.path().join("ok");
    for who in [KEYS, "bob.yml"] {
        let run = admin(
            &server,
            cwd.path(),
            5,
            &[
                "--curve-key-file",
                who,
                "-i",
                "web-1",
                "exec",
                "--shell",
                "--",
                &format!("echo {who} >> {}", ok.display()),
            ],
        );
        assert!(run.success(), "{who}: {run:?}\n{}", agent.log());
    }
    assert_eq!(lines(&ok).len(), 2);

    // Bob revoked: the agents' list loses him.
    let revoked = admin(&server, cwd.path(), 5, &["client:revoke", "bob"]);
    assert!(revoked.success() && revoked.stderr.contains("agents no longer trust `bob`"), "{revoked:?}");
    assert!(wait_until(WAIT, || agent.log().contains("version: 3")), "{}", agent.log());

    // The real server goes; a rogue one takes its ports and key pair.
    let mut server = server;
    server.process.terminate();
    let rogue = Rogue::bind(&server);
    let mallory = SigningPair::generate().unwrap();
    let forged = TrustList::signed(
        99,
        vec![TrustedAdmin { name: "mallory".into(), signing_key: mallory.public.clone() }],
        &mallory,
    );
    let file = cwd.path().join("pwned");
    let mut attempts: Vec<(&str, Message)> = Vec::new();
    attempts.push(("unsigned", appending(&file, "unsigned")));
    let mut m = appending(&file, "stranger");
    signing::sign(&mut m, &mallory, "mallory", signing::DEFAULT_TTL);
    attempts.push(("unknown signer", m));
    let mut m = appending(&cwd.path().join("ok"), "altered");
    signing::sign(&mut m, &alice, "alice", signing::DEFAULT_TTL);
    m.body[0] = appending(&file, "altered").body[0].clone();
    attempts.push(("bad signature", m));
    let mut m = appending(&file, "elsewhere");
    m.stream = "web-2".into();
    signing::sign(&mut m, &alice, "alice", signing::DEFAULT_TTL);
    attempts.push(("not for this agent", m));
    let mut m = appending(&file, "expired");
    signing::sign_at(&mut m, &alice, "alice", SystemTime::now() - Duration::from_secs(3600), signing::DEFAULT_TTL);
    attempts.push(("expired", m));
    let mut m = appending(&file, "revoked");
    signing::sign(&mut m, &bob, "bob", signing::DEFAULT_TTL);
    attempts.push(("unknown signer", m));
    // A legitimate one, published again and again: it runs once.
    let replayed = cwd.path().join("replayed");
    let mut legit = appending(&replayed, "once");
    signing::sign(&mut legit, &alice, "alice", signing::DEFAULT_TTL);

    let end = Instant::now() + Duration::from_secs(20);
    let refused = |why: &str| agent.log().matches(&format!("request refused: {why}")).count();
    loop {
        rogue.answer_registrations(&forged);
        for (_, m) in &attempts {
            rogue.publish_to("web-1", m);
        }
        rogue.publish_to("web-1", &legit);
        rogue.publish_to("web-3", &appending(&cwd.path().join("lax"), "ran"));
        let all_refused = ["unsigned", "unknown signer", "bad signature", "not for this agent", "expired", "replayed"]
            .iter()
            .all(|why| refused(why) > 0);
        if all_refused && refused("unknown signer") >= 2 && !lines(&cwd.path().join("lax")).is_empty() {
            break;
        }
        assert!(Instant::now() < end, "not every refusal seen:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!file.exists(), "a rogue request ran: {:?}", lines(&file));
    assert_eq!(lines(&replayed), ["once"], "the legitimate request ran once");
    assert!(agent.log().contains("trust list refused"), "the forged list is refused:\n{}", agent.log());
    assert!(agent.log().contains("signer_name: mallory"), "the signer is named:\n{}", agent.log());
}
