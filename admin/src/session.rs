//! The admin's side of every command: the options all commands take, the
//! session a command's admin half runs in (the connection, the wait, the
//! target), and how a command sent to clients is summed up and ends (the
//! exit status). Each command's own half is in its file under `commands/`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};

use pantry_shared::commands::facts;
use pantry_shared::commands::recipients::{self, Offline};
use pantry_shared::commands::rollout::{self, AgentState};
use pantry_shared::config::{self, Config, Networking, Program, ServerHosts};
use pantry_shared::facts::FactFilter;
use pantry_shared::filter::{ClientFilter, Identities};
use pantry_shared::keys::{self, ClientKeys};
use pantry_shared::message::Message;
use pantry_shared::program;
use pantry_shared::security::SocketSecurity;

use crate::connection::{ClientAnswers, Connection, Deadline, SideTask};
use anyhow::Context as _;
use pantry_shared::commands::trust;
use pantry_shared::signing::{self, SigningPair, TrustList};

/// Where `--curve-key-file FILE` is looked for.
const KEYS_DIR: &str = ".pantry";

/// How long the admin waits for a server's handshake before it tries the
/// next one (with several hosts; never longer than `--timeout`).
const CONNECT_BUDGET: Duration = Duration::from_secs(1);

/// The options every command takes.
#[derive(clap::Args, Debug)]
pub struct Global {
    /// Server to connect to [config's networking.server_host, or 127.0.0.1].
    /// Repeat it (--host a --host b, all before or all after the command)
    /// to fail over: a server that completes no handshake within 1 s is
    /// skipped for the next.
    #[arg(long, global = true, value_name = "HOST", action = clap::ArgAction::Append)]
    pub host: Vec<String>,
    /// Read networking settings from this client.yml.
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, global = true, value_name = "PORT")]
    pub pub_sub_port: Option<u16>,
    #[arg(long, global = true, value_name = "PORT")]
    pub receive_port: Option<u16>,
    #[arg(long, global = true, value_name = "PORT")]
    pub file_service_port: Option<u16>,
    /// Target clients of this application.
    #[arg(short = 'a', long, global = true)]
    pub application: Option<String>,
    /// Target clients of this environment.
    #[arg(short = 'e', long, global = true)]
    pub environment: Option<String>,
    /// Target clients with these roles (comma-separated).
    #[arg(short = 'r', long, global = true, value_delimiter = ',', value_name = "ROLE1,ROLE2")]
    pub roles: Vec<String>,
    /// Target these identities (comma-separated; shell globs such as
    /// 'web-*'), within -a/-e/-r when given.
    #[arg(short = 'i', long = "identity", global = true, value_delimiter = ',', value_name = "NAME[,NAME...]")]
    pub identities: Vec<String>,
    /// Target clients whose facts match EXPR (repeatable: all must hold):
    /// key=value (a glob), key!=value, key>N, key>=N, key<N, key<=N,
    /// key~REGEX, or key (present). Missing or stale facts match nothing.
    #[arg(short = 'F', long = "fact", global = true, value_name = "EXPR", value_parser = fact_expr,
        action = clap::ArgAction::Append)]
    pub facts: Vec<String>,
    /// Also name the clients -a/-e/-r/-i select whose facts are missing or
    /// stale (no -F matches them).
    #[arg(long, global = true)]
    pub show_unknown: bool,
    /// Leave offline clients out of the output and the exit status.
    #[arg(long, global = true)]
    pub online_only: bool,
    /// Use CURVE with the keys in .pantry/FILE (it may hold only server_public_key).
    #[arg(long, global = true, value_name = "FILE")]
    pub curve_key_file: Option<PathBuf>,
    /// Seconds to wait for the server and the clients (also accepted after
    /// the command).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// How long a signed request holds (agents refuse it after).
    #[arg(long, global = true, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub sign_ttl: Duration,
    /// Say more on stderr.
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,
    /// Say everything on stderr.
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,
}

/// `-F`: checked here, sent as written.
fn fact_expr(text: &str) -> Result<String, pantry_shared::facts::ExprError> {
    text.parse::<pantry_shared::facts::FactExpr>().map(|_| text.to_owned())
}

/// How a command ended, as the exit status says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0: everything answered and succeeded.
    Done = 0,
    /// 1: some client failed or did not answer (or the command failed).
    Failed = 1,
    /// 2: no client matched the target.
    NoMatch = 2,
}

impl From<bool> for Outcome {
    fn from(ok: bool) -> Outcome {
        if ok {
            Outcome::Done
        } else {
            Outcome::Failed
        }
    }
}

/// What a command's admin half works with: the connection to the server,
/// the wait, and the global options, checked.
pub struct Session {
    /// The networking settings: the config's, overridden by the options.
    pub net: Config,
    pub security: SocketSecurity,
    /// `-a/-e/-r`.
    pub filter: ClientFilter,
    /// `-i`.
    pub identities: Vec<String>,
    /// `-F`.
    pub facts: Vec<String>,
    pub show_unknown: bool,
    pub online_only: bool,
    /// When to give up waiting for the server and the clients.
    pub deadline: Deadline,
    conn: Connection,
    /// The admin's name in `from`.
    me: String,
    /// Signs what reaches agents (CURVE, once the admin has a signing key).
    pub signer: Option<Signer>,
}

/// Runs one command: reads the config, opens the connection and hands the
/// session to the command's admin half. After a command that succeeded,
/// keys generated for this admin are saved.
pub fn run(g: &Global, command: impl Admin) -> Result<Outcome> {
    let mut net = program::load_config(g.config.as_deref(), Program::Client)?;
    if !g.host.is_empty() {
        net.networking.server_host = ServerHosts::new(g.host.clone()).map_err(|e| anyhow::anyhow!("--host: {e}"))?;
    }
    net.networking.pub_sub_port = g.pub_sub_port.unwrap_or(net.networking.pub_sub_port);
    net.networking.receive_port = g.receive_port.unwrap_or(net.networking.receive_port);
    net.networking.file_service_port = g.file_service_port.unwrap_or(net.networking.file_service_port);
    let wait = command.wait(g.timeout);
    if !(wait > 0.0 && wait.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }

    let keys = match (&g.curve_key_file, net.networking.is_curve()) {
        (Some(file), _) => Some(ClientKeys::load(&Path::new(KEYS_DIR).join(file), false)?),
        (None, true) => {
            let path = keys::curve_dir(net.root_dir()).join(keys::CLIENT_KEYS_FILE);
            Some(ClientKeys::load(&path, false)?)
        }
        (None, false) => None,
    };
    let security = match &keys {
        Some(k) => SocketSecurity::client(k)?,
        None => SocketSecurity::Null,
    };
    if g.debug || g.verbose {
        eprintln!(
            "connecting to {} with {} security",
            net.networking.endpoint(net.networking.receive_port),
            security.mechanism()
        );
    }
    pantry_shared::security::set_max_message_size(net.networking.max_message_size);
    // Started before connecting: with several hosts, the time spent on the
    // silent ones comes out of --timeout.
    let deadline = Deadline::after(Duration::from_secs_f64(wait));
    let port = net.networking.receive_port;
    let servers: Vec<String> = net.networking.hosts().iter().map(|h| Networking::endpoint_for(h, port)).collect();
    let conn =
        Connection::open_first_answering(&servers, &security, keys, CONNECT_BUDGET, &deadline, |from, to, why| {
            if g.debug || g.verbose {
                eprintln!("{from}: {why}; connecting to {to}");
            }
        })?;
    if let Some(index) = servers.iter().position(|s| s == conn.server()).filter(|_| servers.len() > 1) {
        // The file service (upload) is on the server that answered.
        let host = net.networking.hosts()[index].clone();
        net.networking.server_host = ServerHosts::new(vec![host]).map_err(anyhow::Error::msg)?;
    }
    let filter = ClientFilter {
        application: g.application.clone(),
        environment: g.environment.clone(),
        roles: g.roles.clone(),
        identity: None,
    };
    filter.validate().map_err(anyhow::Error::msg)?;
    Identities::parse(&g.identities).map_err(anyhow::Error::msg)?;

    let mut session = Session {
        net,
        security,
        filter,
        identities: g.identities.clone(),
        facts: g.facts.clone(),
        show_unknown: g.show_unknown,
        online_only: g.online_only,
        deadline,
        conn,
        me: admin_identity(),
        signer: None,
    };
    if session.security.is_curve() {
        if let Some(pair) = ensure_signing_key(&mut session, g.verbose || g.debug)? {
            let name = session.conn.keys_mut().and_then(|k| k.name.clone()).unwrap_or_else(|| session.me.clone());
            session.signer = Some(Signer { pair, name, ttl: g.sign_ttl });
        }
    }
    let outcome = command.run(&mut session)?;
    if outcome == Outcome::Done {
        session.save_generated_keys()?;
    }
    Ok(outcome)
}

/// The admin's name in `from`: responses are routed by connection, so this
/// only tells operators who asked.
fn admin_identity() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "admin".into());
    format!("{user}@{}", config::hostname())
}

impl Session {
    /// Sends a request the server runs itself and returns its response; a
    /// response carrying `custom.error` is an error.
    pub fn ask_server(&mut self, request: Message) -> Result<Message> {
        self.ask_server_beside(request, None)
    }

    /// [`Session::ask_server`] while `side` is served (an upload's chunks).
    pub fn ask_server_beside(&mut self, request: Message, side: Option<&mut (dyn SideTask + '_)>) -> Result<Message> {
        let request = self.stamped(request);
        self.conn.ask_server(&request, &mut self.deadline, side)
    }

    /// Whom `-a/-e/-r/-i` select for a command sent to clients.
    pub fn target(&self) -> Result<Target> {
        let stream = self.filter.target_stream().map_err(anyhow::Error::msg)?;
        Ok(Target { stream, identities: self.identities.clone() })
    }

    /// `request`, addressed to the clients of `target`.
    pub fn to_clients(&self, request: Message, target: &Target) -> Message {
        let mut request = self.stamped(request);
        request.metadata.to = target.stream.clone();
        request.stream = target.stream.clone();
        Identities::attach(&mut request, &target.identities);
        FactFilter::attach(&mut request, &self.facts);
        if let Some(signer) = &self.signer {
            signer.sign(&mut request);
        }
        request
    }

    /// The server's copy of the agents' trust list, and the admins' keys.
    pub fn show_trust(&mut self) -> Result<trust::Shown> {
        let response = self.ask_server(trust::show_request())?;
        Ok(trust::shown(&response)?)
    }

    /// This admin's signing key, if its key file has one.
    pub fn own_signing_key(&mut self) -> Option<SigningPair> {
        self.conn.keys_mut().and_then(|k| k.signing.clone())
    }

    /// Keeps a new signing key in the admin's key file (0600).
    pub fn keep_signing_key(&mut self, pair: SigningPair) -> Result<()> {
        if let Some(keys) = self.conn.keys_mut() {
            keys.signing = Some(pair);
            keys.save()?;
            eprintln!("saved this admin's new signing key to {}", keys.path.display());
        }
        Ok(())
    }

    /// A query of the server about clients (`status`, `facts`): `-i` and
    /// `-F` added.
    pub fn selecting(&self, mut request: Message) -> Message {
        Identities::attach(&mut request, &self.identities);
        FactFilter::attach(&mut request, &self.facts);
        request
    }

    /// `--show-unknown`: the clients `-a/-e/-r/-i` select whose facts are
    /// missing or stale, said on stderr.
    pub fn say_unknown(&mut self, identities: &[String]) -> Result<()> {
        if !self.show_unknown {
            return Ok(());
        }
        let mut request = facts::list_request(&self.filter, &["-".to_owned()]);
        Identities::attach(&mut request, if identities.is_empty() { &self.identities } else { identities });
        let response = self.ask_server(request)?;
        let unknown: Vec<String> =
            facts::agents(&response).into_iter().filter(|a| !a.fresh).map(|a| a.identity).collect();
        match unknown.is_empty() {
            true => eprintln!("no client has missing or stale facts"),
            false => eprintln!("missing or stale facts (no -F matches them): {}", unknown.join(", ")),
        }
        Ok(())
    }

    /// Sends a request made by [`Session::to_clients`] and collects the
    /// answers; see [`Connection::ask_clients`].
    pub fn ask_clients(
        &mut self,
        request: &Message,
        side: Option<&mut (dyn SideTask + '_)>,
        on_list: impl FnOnce(&[String], &[Offline]),
        on_answer: impl FnMut(&Message) -> bool,
    ) -> Result<ClientAnswers> {
        self.conn.ask_clients(request, &mut self.deadline, side, on_list, on_answer)
    }

    /// `--async`: the server takes the request (and lists who will answer);
    /// the job id is printed and nothing waited for.
    pub fn start_async(&mut self, request: &Message) -> Result<Outcome> {
        let list = self.start_job(request, None)?;
        let (online, offline) = (recipients::online(&list), recipients::offline(&list));
        if online.is_empty() && offline.is_empty() {
            eprintln!("no clients match");
            return Ok(Outcome::NoMatch);
        }
        println!("{}", request.uuid());
        eprintln!(
            "job {} sent to {} clients ({} offline); `pantry-admin job {}` shows the answers",
            request.uuid(),
            online.len(),
            offline.len(),
            request.uuid()
        );
        Ok(Outcome::Done)
    }

    /// Sends a request for clients and returns the server's list of who it
    /// targets (the job exists), serving `side` meanwhile.
    pub fn start_job(&mut self, request: &Message, side: Option<&mut (dyn SideTask + '_)>) -> Result<Message> {
        self.conn.start_job(request, &mut self.deadline, side)
    }

    /// Prints the summary of a command run on clients.
    pub fn report(&self, result: &ClientAnswers, target: &Target) -> Outcome {
        let online_only = self.online_only;
        let offline = if online_only { 0 } else { result.offline.len() };
        if result.expected == 0 && offline == 0 {
            let which = if online_only && !result.offline.is_empty() { "no online clients" } else { "no clients" };
            eprintln!("{which} match {target}");
            return Outcome::NoMatch;
        }
        let mut summary = format!("{} of {} clients answered", result.answered, result.expected + offline);
        if !result.failed.is_empty() {
            summary.push_str(&format!(", {} failed", result.failed.len()));
        }
        if offline > 0 {
            summary.push_str(&format!(", {offline} offline"));
        }
        eprintln!("{summary}");
        if !result.missing.is_empty() {
            eprintln!("did not answer: {}", result.missing.join(", "));
        }
        let states = result.agent_states(online_only);
        eprintln!("{}", rollout::summary(states.iter().map(|(_, s)| *s)));
        let all_ok = states.iter().all(|(_, s)| *s == AgentState::Ok);
        (all_ok && result.missing.is_empty() && result.failed.is_empty() && offline == 0).into()
    }

    fn stamped(&self, mut request: Message) -> Message {
        request.metadata.from = self.me.clone();
        request
    }

    /// After the first successful command with a file that held only the
    /// server's key, write the generated pair back so later runs are known.
    fn save_generated_keys(&mut self) -> Result<()> {
        if let Some(keys) = self.conn.keys_mut().filter(|k| k.generated) {
            keys.save()?;
            eprintln!("saved this admin's new key pair to {}", keys.path.display());
        }
        Ok(())
    }
}

/// The admin's signing key and the name it signs as.
pub struct Signer {
    pub pair: SigningPair,
    pub name: String,
    pub ttl: Duration,
}

impl Signer {
    pub fn sign(&self, request: &mut Message) {
        signing::sign(request, &self.pair, &self.name, self.ttl);
    }

    pub fn sign_cancel(&self, control: &mut Message, job: &str, identities: &[String]) {
        signing::sign_cancel(control, job, identities, &self.pair, &self.name, self.ttl);
    }
}

/// A key file without a signing key gets one: registered with the server,
/// kept in the file (0600), and, on a server with no trust list yet (the
/// first admin), put on the first one. Returns the pair.
fn ensure_signing_key(session: &mut Session, verbose: bool) -> Result<Option<SigningPair>> {
    if let Some(pair) = session.own_signing_key() {
        return Ok(Some(pair));
    }
    let pair = SigningPair::generate().context("cannot make a signing key")?;
    if let Err(e) = session.ask_server(trust::register_request(&pair.public)) {
        if verbose {
            eprintln!("no signing key registered (the server does not take one: {e:#}); requests go unsigned");
        }
        return Ok(None);
    }
    session.keep_signing_key(pair.clone())?;
    let shown = session.show_trust()?;
    match &shown.list {
        None => {
            let me = shown
                .admins
                .iter()
                .find(|a| a.signing_key == pair.public)
                .cloned()
                .context("signing key not listed")?;
            let first = TrustList::signed(1, vec![me.clone()], &pair);
            session.ask_server(trust::set_request(&first))?;
            eprintln!("made the first trust list: agents enrolled from now on trust `{}`'s signed requests", me.name);
        }
        Some(list) if !list.trusts(&pair.public) => {
            let name = shown.admins.iter().find(|a| a.signing_key == pair.public).map_or("this admin", |a| &a.name);
            eprintln!(
                "made a signing key for this admin; agents do not trust it until an admin they trust runs \
                 `pantry-admin client:trust {name}`"
            );
        }
        Some(_) => {}
    }
    Ok(Some(pair))
}

/// Whom a command sent to clients is for: a stream (`-a/-e/-r`, `""` for
/// everyone) and, with `-i`, identity patterns within it.
pub struct Target {
    stream: String,
    identities: Vec<String>,
}

impl Target {
    /// `-i`'s patterns (or a re-run's identities).
    pub fn identities(&self) -> &[String] {
        &self.identities
    }

    /// The same stream, these identities (`--from-job`).
    pub fn only(self, identities: Vec<String>) -> Target {
        Target { stream: self.stream, identities }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.stream.as_str(), self.identities.is_empty()) {
            ("", true) => f.write_str("(every client)"),
            (stream, true) => write!(f, "`{stream}`"),
            ("", false) => write!(f, "identity {}", self.identities.join(",")),
            (stream, false) => write!(f, "identity {} in `{stream}`", self.identities.join(",")),
        }
    }
}

/// Says at once which targeted clients are offline (the server did not
/// send them the request): one line each, unless left out.
pub fn report_offline(offline: &[Offline], online_only: bool, json: bool) {
    if online_only || json {
        return;
    }
    let now = SystemTime::now();
    for client in offline {
        println!("{}", format_offline(client, now));
    }
    let _ = std::io::stdout().flush();
}

/// `--json` for a command sent to clients: the answers, who failed, who
/// did not answer and who is offline, then each agent's state.
pub fn print_json_summary(json: bool, answers: Vec<serde_json::Value>, result: &ClientAnswers) -> Result<()> {
    if json {
        let states = result.agent_states(false);
        let agents: Vec<serde_json::Value> =
            states.iter().map(|(identity, state)| serde_json::json!({"identity": identity, "state": state})).collect();
        let out = serde_json::json!({
            "answers": answers,
            "failed": result.failed,
            "missing": result.missing,
            "offline": result.offline,
            "agents": agents,
            "summary": rollout::summary(states.iter().map(|(_, s)| *s)),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// A command's admin half; the type is its clap arguments.
pub trait Admin {
    /// Seconds to wait for the server and the clients when nothing
    /// happens, given the global `--timeout`.
    fn wait(&self, global: f64) -> f64;

    /// Sends the request, waits for what it needs and prints the answers.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome>;
}

/// `--timeout` given after the command name overrides the global one.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Wait {
    /// Seconds to wait for the server and the clients.
    #[arg(long = "timeout", value_name = "SECONDS")]
    pub timeout: Option<f64>,
}

impl Wait {
    /// This command's `--timeout`, else the global one.
    pub fn or(self, global: f64) -> f64 {
        self.timeout.unwrap_or(global)
    }
}

/// `web-3: offline (last seen 12 minutes ago)`.
pub fn format_offline(client: &Offline, now: SystemTime) -> String {
    format!("{}: offline (last seen {})", client.identity, ago(&client.last_seen, now))
}

/// "5m", "2h", "3d", "40s": how long ago, short.
pub fn short_ago(rfc3339: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(rfc3339) else {
        return "?".into();
    };
    let secs = now.duration_since(then).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// "12 seconds ago", from an RFC 3339 time.
pub fn ago(rfc3339: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(rfc3339) else {
        return rfc3339.to_owned();
    };
    let secs = now.duration_since(then).map(|d| d.as_secs()).unwrap_or(0);
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod recipients_tests {
    use super::*;
    use pantry_shared::commands::recipients::{offline, online, respond};

    #[test]
    fn lists_round_trip() {
        let mut request = pantry_shared::commands::echo::request("x");
        request.metadata.from = "admin".into();
        let gone = Offline { identity: "web-3".into(), last_seen: "2026-01-01T00:00:00Z".into() };
        let list = respond(&request, &["web-1".into()], std::slice::from_ref(&gone));
        let back = Message::from_frames(&list.to_frames()).unwrap();
        assert!(back.is_client_response_list() && back.metadata.from.is_empty());
        assert_eq!((online(&back), offline(&back)), (vec!["web-1".to_owned()], vec![gone]));
        let line = format_offline(&offline(&back)[0], humantime::parse_rfc3339("2026-01-01T00:12:00Z").unwrap());
        assert_eq!(line, "web-3: offline (last seen 12 minutes ago)");
    }
}
