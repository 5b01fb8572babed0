//! `pantry-admin`: the operator's command-line tool. It connects to the
//! server like a client (same sockets, same security), sends one command,
//! prints the responses and exits: 0 when everything answered, 1 otherwise.
//!
//! Options in `.pantry/config` (one per line) are read before the command
//! line, which overrides them.

mod connection;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use pantry_shared::commands::{
    app_config, client_forget, client_list, client_pending, client_revoke, client_token, create_client, echo, exec,
    jobs, recipients, status, upload,
};
use pantry_shared::config::{self, Config, Program};
use pantry_shared::filter::{ClientFilter, Identities};
use pantry_shared::keys::{self, ClientKeys, Role};
use pantry_shared::security::SocketSecurity;
use pantry_shared::Message;

use connection::{Connection, Deadline};

const DEFAULTS_FILE: &str = ".pantry/config";
const KEYS_DIR: &str = ".pantry";

#[derive(Parser, Debug)]
#[command(
    name = "pantry-admin",
    version = pantry_shared::VERSION,
    about = "Pantry's command-line tool: enroll clients, query status, run commands on clients",
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// Server to connect to [config's networking.server_host, or 127.0.0.1].
    #[arg(long, global = true, value_name = "HOST")]
    host: Option<String>,
    /// Read networking settings from this client.yml.
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, global = true, value_name = "PORT")]
    pub_sub_port: Option<u16>,
    #[arg(long, global = true, value_name = "PORT")]
    receive_port: Option<u16>,
    #[arg(long, global = true, value_name = "PORT")]
    file_service_port: Option<u16>,
    /// Target clients of this application.
    #[arg(short = 'a', long, global = true)]
    application: Option<String>,
    /// Target clients of this environment.
    #[arg(short = 'e', long, global = true)]
    environment: Option<String>,
    /// Target clients with these roles (comma-separated).
    #[arg(short = 'r', long, global = true, value_delimiter = ',', value_name = "ROLE1,ROLE2")]
    roles: Vec<String>,
    /// Target these identities (comma-separated; shell globs such as
    /// 'web-*'), within -a/-e/-r when given.
    #[arg(short = 'i', long = "identity", global = true, value_delimiter = ',', value_name = "NAME[,NAME...]")]
    identities: Vec<String>,
    /// Leave offline clients out of the output and the exit status.
    #[arg(long, global = true)]
    online_only: bool,
    /// Use CURVE with the keys in .pantry/FILE (it may hold only server_public_key).
    #[arg(long, global = true, value_name = "FILE")]
    curve_key_file: Option<PathBuf>,
    /// Seconds to wait for the server and the clients (also accepted after
    /// the command).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    timeout: f64,
    /// Say more on stderr.
    #[arg(short = 'v', long, global = true)]
    verbose: bool,
    /// Say everything on stderr.
    #[arg(short = 'd', long, global = true)]
    debug: bool,
}

/// `--timeout` given after the command name overrides the global one.
#[derive(Args, Debug, Clone, Copy)]
struct Wait {
    /// Seconds to wait for the server and the clients.
    #[arg(long = "timeout", value_name = "SECONDS")]
    timeout: Option<f64>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List checked-in clients matching -a/-e/-r: last check-in, identity,
    /// application, environment, roles.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Only the clients that are online.
        #[arg(long, conflicts_with = "offline")]
        online: bool,
        /// Only the clients that are offline.
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Every matching client answers with MESSAGE.
    Echo {
        message: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Print the job id and return at once; `pantry-admin job ID` shows
        /// the answers.
        #[arg(long = "async")]
        detach: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Run PROGRAM with ARGS on every matching client: `exec -- uname -a`.
    Exec {
        /// Seconds each client lets the program run before killing its
        /// process group.
        #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
        timeout: f64,
        /// Run through `sh -c` (PROGRAM ARGS joined by spaces).
        #[arg(long)]
        shell: bool,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Print the job id and return at once; `pantry-admin job ID` shows
        /// the answers.
        #[arg(long = "async")]
        detach: bool,
        /// The program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM")]
        command: Vec<String>,
    },
    /// Copy LOCAL_FILE to REMOTE_PATH (absolute) on every matching client.
    Upload {
        local_file: PathBuf,
        remote_path: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Create a key pair on the server and print it as YAML for a client's
    /// client_keys.yml (needs CURVE and an admin key).
    #[command(name = "client:create")]
    ClientCreate {
        /// The key's name: an agent's identity, or an admin's name.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Make an admin key instead of a client key.
        #[arg(long)]
        admin: bool,
        /// Write the keys to FILE (mode 0600) instead of printing them.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        wait: Wait,
    },
    /// List the server's known keys: name, role, key, created, last seen,
    /// connected.
    #[command(name = "client:list")]
    ClientList {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Remove a key (by name or Z85 key) and cut its connections off.
    #[command(name = "client:revoke")]
    ClientRevoke {
        #[arg(value_name = "NAME|KEY")]
        target: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Make an enrollment token for `pantry-client enroll --token` and print
    /// it (one line); the server keeps only its hash.
    #[command(name = "client:token")]
    ClientToken {
        /// The identity the enrolled agent gets (default: its own).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = client_token::DEFAULT_USES, value_name = "N")]
        uses: u32,
        /// How long it is valid (e.g. 30m, 1h, 7d).
        #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = humantime::parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        wait: Wait,
    },
    /// List the keys that tried to connect but are not known: key, claimed
    /// identity, address, when last seen, attempts.
    #[command(name = "client:pending")]
    ClientPending {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Make a pending key a client key, bound to NAME (default: the
    /// identity it claimed).
    #[command(name = "client:accept")]
    ClientAccept {
        #[arg(value_name = "KEY|IDENTITY")]
        target: String,
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Drop a client from the registry now (offline clients leave by
    /// themselves after registry.forget_after).
    #[command(name = "client:forget")]
    ClientForget {
        identity: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Forget a pending key.
    #[command(name = "client:reject")]
    ClientReject {
        #[arg(value_name = "KEY|IDENTITY")]
        target: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Recent jobs, newest first: commands sent to clients and key or config
    /// changes, with answered / failed / pending / offline counts. -a/-e/-r
    /// select jobs sent to that stream, -i jobs sent to those identities.
    Jobs {
        /// How many.
        #[arg(long, default_value_t = jobs::DEFAULT_LIMIT, value_name = "N")]
        limit: u32,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// One job's results, printed as the command printed them.
    Job {
        id: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Wait (up to --timeout) until every client sent the request has
        /// answered.
        #[arg(long = "wait")]
        until_done: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Print the configuration of the application given with -a.
    #[command(name = "app:show")]
    AppShow {
        #[command(flatten)]
        wait: Wait,
    },
    /// Edit the configuration of the application given with -a in $EDITOR;
    /// saved only when changed and valid YAML.
    Edit {
        #[command(flatten)]
        wait: Wait,
    },
}

impl Command {
    /// How long to wait for the server and clients when nothing happens.
    fn wait(&self, global: f64) -> f64 {
        match self {
            Command::Status { wait, .. }
            | Command::Echo { wait, .. }
            | Command::Upload { wait, .. }
            | Command::ClientCreate { wait, .. }
            | Command::ClientList { wait, .. }
            | Command::ClientRevoke { wait, .. }
            | Command::ClientToken { wait, .. }
            | Command::ClientPending { wait, .. }
            | Command::ClientAccept { wait, .. }
            | Command::ClientReject { wait, .. }
            | Command::ClientForget { wait, .. }
            | Command::Jobs { wait, .. }
            | Command::Job { wait, .. }
            | Command::AppShow { wait }
            | Command::Edit { wait } => wait.timeout.unwrap_or(global),
            // The clients' time limit, plus the usual wait for the answers.
            Command::Exec { timeout, .. } => timeout + global,
        }
    }
}

/// How a command ended, as the exit status says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
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

fn main() {
    pantry_shared::docs::generate_if_requested(<Cli as clap::CommandFactory>::command);
    let args = match args_with_defaults(Path::new(DEFAULTS_FILE)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("pantry-admin: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(outcome) => std::process::exit(outcome as i32),
        Err(e) => {
            eprintln!("pantry-admin: {e:#}");
            std::process::exit(1);
        }
    }
}

/// argv with the defaults file's options inserted after the program name.
fn args_with_defaults(file: &Path) -> Result<Vec<String>> {
    let mut args: Vec<String> = std::env::args().collect();
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(args),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let defaults = parse_defaults(&text);
    args.splice(1..1, defaults);
    Ok(args)
}

/// One option per line (`--host example.com` or `--host=example.com`);
/// blank lines and `#` comments are skipped.
fn parse_defaults(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match line.split_once(char::is_whitespace) {
            Some((option, value)) if !option.contains('=') => {
                out.push(option.to_owned());
                out.push(value.trim().to_owned());
            }
            _ => out.push(line.to_owned()),
        }
    }
    out
}

/// The admin's name in `from`: responses are routed by connection, so this
/// only tells operators who asked.
fn admin_identity() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "admin".into());
    format!("{user}@{}", config::hostname())
}

fn run(cli: Cli) -> Result<Outcome> {
    let g = &cli.global;
    let mut net = match &g.config {
        Some(path) => Config::load(path, Program::Client)?,
        None => Config::defaults(Program::Client),
    };
    if let Some(host) = &g.host {
        net.networking.server_host = host.clone();
    }
    net.networking.pub_sub_port = g.pub_sub_port.unwrap_or(net.networking.pub_sub_port);
    net.networking.receive_port = g.receive_port.unwrap_or(net.networking.receive_port);
    net.networking.file_service_port = g.file_service_port.unwrap_or(net.networking.file_service_port);
    let wait = cli.command.wait(g.timeout);
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
    let server = net.networking.endpoint(net.networking.receive_port);
    let mut conn = Connection::open(server, &security, keys)?;
    let mut deadline = Deadline::after(Duration::from_secs_f64(wait));
    let filter = ClientFilter {
        application: g.application.clone(),
        environment: g.environment.clone(),
        roles: g.roles.clone(),
        identity: None,
    };
    filter.validate().map_err(anyhow::Error::msg)?;
    Identities::parse(&g.identities).map_err(anyhow::Error::msg)?;
    let target = || -> Result<Target> {
        let stream = filter.target_stream().map_err(anyhow::Error::msg)?;
        Ok(Target { stream, identities: g.identities.clone() })
    };

    let outcome = match &cli.command {
        Command::Status { json, online, offline, .. } => {
            let mut request = status::request(&filter);
            Identities::attach(&mut request, &g.identities);
            let response = conn.ask_server(&stamped(request), &mut deadline)?;
            let mut clients = status::clients(&response);
            if *online || *offline {
                let wanted = if *online { status::ONLINE } else { status::OFFLINE };
                clients.retain(|c| c.state == wanted);
            }
            if *json {
                println!("{}", serde_json::to_string_pretty(&clients)?);
            } else {
                print!("{}", status::format_table(&clients, SystemTime::now()));
            }
            Outcome::Done
        }
        Command::Echo { message, detach: true, .. } => {
            let request = to_clients(echo::request(message), &target()?);
            start_async(&mut conn, &request, &mut deadline)?
        }
        Command::Exec { timeout, shell, detach: true, command, .. } => {
            let (program, args) = command.split_first().context("no program given")?;
            let exec_request =
                exec::ExecRequest { program: program.clone(), args: args.to_vec(), shell: *shell, timeout: *timeout };
            let request = to_clients(exec::request(&exec_request), &target()?);
            start_async(&mut conn, &request, &mut deadline)?
        }
        Command::Jobs { limit, json, .. } => {
            let mut request = jobs::list_request(*limit, &filter);
            Identities::attach(&mut request, &g.identities);
            let response = conn.ask_server(&stamped(request), &mut deadline)?;
            let list = jobs::jobs(&response);
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", jobs::format_table(&list));
            }
            Outcome::Done
        }
        Command::Job { id, json, until_done, .. } => show_job(&mut conn, id, *json, *until_done, &mut deadline)?,
        Command::Echo { message, json, .. } => {
            let target = target()?;
            let request = to_clients(echo::request(message), &target);
            let mut answers = Vec::new();
            let result = conn.ask_clients(
                &request,
                &mut deadline,
                None,
                |_, offline| report_offline(offline, g.online_only, *json),
                |answer| {
                    if *json {
                        answers.push(serde_json::json!({
                            "identity": answer.metadata.from,
                            "message": answer.body.first().and_then(|b| b.as_text()),
                        }));
                    } else {
                        println!("{}", echo::format_answer(answer));
                        let _ = std::io::stdout().flush();
                    }
                    true
                },
            )?;
            print_json_summary(*json, answers, &result)?;
            report(&result, &target, g.online_only)
        }
        Command::Exec { timeout, shell, json, command, .. } => {
            let (program, args) = command.split_first().context("no program given")?;
            let exec_request =
                exec::ExecRequest { program: program.clone(), args: args.to_vec(), shell: *shell, timeout: *timeout };
            let target = target()?;
            let request = to_clients(exec::request(&exec_request), &target);
            let mut answers = Vec::new();
            let result = conn.ask_clients(
                &request,
                &mut deadline,
                None,
                |_, offline| report_offline(offline, g.online_only, *json),
                |answer| {
                    let Some(result) = exec::result(answer) else {
                        eprintln!("{}: {}", answer.metadata.from, unsupported(exec::TYPE));
                        return false;
                    };
                    if *json {
                        answers.push(serde_json::json!({"identity": answer.metadata.from, "result": result}));
                    } else {
                        print!("{}", exec::format_answer(&answer.metadata.from, &result, *timeout));
                        let _ = std::io::stdout().flush();
                    }
                    result.succeeded()
                },
            )?;
            print_json_summary(*json, answers, &result)?;
            report(&result, &target, g.online_only)
        }
        Command::Upload { local_file, remote_path, json, .. } => {
            let target = target()?;
            upload_file(
                &mut conn,
                &net,
                &security,
                local_file,
                remote_path,
                &target,
                *json,
                g.online_only,
                &mut deadline,
            )?
        }
        Command::ClientList { json, .. } => {
            let response = conn.ask_server(&stamped(client_list::request()), &mut deadline)?;
            let keys = client_list::keys(&response);
            if *json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                print!("{}", client_list::format_table(&keys, SystemTime::now()));
            }
            Outcome::Done
        }
        Command::ClientRevoke { target, .. } => {
            let response = conn.ask_server(&stamped(client_revoke::request(target)), &mut deadline)?;
            println!("{}", client_revoke::format_answer(&response));
            Outcome::Done
        }
        Command::ClientToken { name, uses, ttl, .. } => {
            let asked = client_token::TokenRequest { name: name.clone(), uses: *uses, ttl: *ttl };
            let response = conn.ask_server(&stamped(client_token::request(&asked)), &mut deadline)?;
            println!("{}", client_token::token(&response).context("the server's answer holds no token")?);
            Outcome::Done
        }
        Command::ClientPending { json, .. } => {
            let response = conn.ask_server(&stamped(client_pending::list_request()), &mut deadline)?;
            let keys = client_pending::keys(&response);
            if *json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                print!("{}", client_pending::format_table(&keys, SystemTime::now()));
            }
            Outcome::Done
        }
        Command::ClientAccept { target, name, .. } => {
            let request = client_pending::accept_request(target, name.as_deref());
            let response = conn.ask_server(&stamped(request), &mut deadline)?;
            println!("{}", client_pending::format_done(&response, "accepted"));
            Outcome::Done
        }
        Command::ClientForget { identity, .. } => {
            conn.ask_server(&stamped(client_forget::request(identity)), &mut deadline)?;
            println!("{}", client_forget::format_answer(identity));
            Outcome::Done
        }
        Command::ClientReject { target, .. } => {
            let response = conn.ask_server(&stamped(client_pending::reject_request(target)), &mut deadline)?;
            println!("{}", client_pending::format_done(&response, "rejected"));
            Outcome::Done
        }
        Command::ClientCreate { output, name, admin, .. } => {
            if !security.is_curve() {
                bail!("client:create needs CURVE: pass --curve-key-file FILE (or a config with security: curve)");
            }
            if let Some(path) = output {
                if path.exists() {
                    bail!("{} already exists; not overwriting a key file", path.display());
                }
            }
            let role = if *admin { Role::Admin } else { Role::Client };
            let response = conn.ask_server(&stamped(create_client::request(name.as_deref(), role)), &mut deadline)?;
            let yaml = create_client::credentials_yaml(&response)?;
            match output {
                Some(path) => {
                    keys::write_atomically(path, yaml.as_bytes())?;
                    eprintln!("wrote the new client's keys to {}", path.display());
                }
                None => print!("{yaml}"),
            }
            Outcome::Done
        }
        Command::AppShow { .. } => {
            let application = g.application.as_deref().context("app:show needs -a/--application NAME")?;
            let response = conn.ask_server(&stamped(app_config::show_request(application)), &mut deadline)?;
            match app_config::config_text(&response) {
                Some(text) => print!("{text}"),
                None => bail!("application {application} has no config yet (create one with `-a {application} edit`)"),
            }
            Outcome::Done
        }
        Command::Edit { .. } => {
            let application = g.application.as_deref().context("edit needs -a/--application NAME")?;
            edit_application(&mut conn, application, &mut deadline)?.into()
        }
    };
    if outcome == Outcome::Done {
        save_generated_keys(&mut conn)?;
    }
    Ok(outcome)
}

/// `--async`: the server takes the request (and lists who will answer);
/// the job id is printed and nothing waited for.
fn start_async(conn: &mut Connection, request: &Message, deadline: &mut Deadline) -> Result<Outcome> {
    let list = conn.start_job(&stamped(request.clone()), deadline)?;
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

/// `job ID`: the job as the command printed it; `--wait` polls until every
/// client sent the request answered, or the deadline.
fn show_job(conn: &mut Connection, id: &str, json: bool, until_done: bool, deadline: &mut Deadline) -> Result<Outcome> {
    let job = loop {
        let response = conn.ask_server(&stamped(jobs::show_request(id)), deadline)?;
        let job = jobs::job(&response).context("the server's answer holds no job")?;
        if !until_done || job.summary.pending == 0 || job.lost.len() as u32 >= job.summary.pending {
            break job;
        }
        if std::time::Instant::now() + Duration::from_millis(500) >= deadline.at {
            eprintln!("still waiting for {} clients", job.summary.pending);
            break job;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        print!("{}", format_job(&job));
    }
    let answered_ok = job.answers.iter().all(|a| a.outcome == "ok");
    let complete = job.summary.pending == 0 && job.offline.is_empty() && job.lost.is_empty();
    let changed_ok = job.result.as_deref().is_none_or(|r| r == "ok");
    Ok((answered_ok && complete && changed_ok).into())
}

/// A job's answers as its command printed them, then who did not answer.
fn format_job(job: &jobs::JobDetail) -> String {
    let mut out = String::new();
    let command = job.summary.command.as_str();
    let timeout = job.arguments.get("timeout").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    for answer in &job.answers {
        let m = answer.as_message(command);
        let line = match (m.error(), command) {
            (Some(error), _) => format!("{}: error: {error}\n", answer.identity),
            (None, exec::TYPE) => match exec::result(&m) {
                Some(result) => exec::format_answer(&answer.identity, &result, timeout),
                None => format!("{}: {}\n", answer.identity, unsupported(command)),
            },
            (None, upload::TYPE) => match upload::result(&m) {
                Some(result) => format!("{}\n", upload::format_answer(&answer.identity, &result)),
                None => format!("{}: {}\n", answer.identity, unsupported(command)),
            },
            (None, _) => format!("{}\n", echo::format_answer(&m)),
        };
        out.push_str(&line);
    }
    for identity in &job.offline {
        out.push_str(&format!("{identity}: offline\n"));
    }
    for identity in &job.lost {
        out.push_str(&format!("{identity}: no answer (server restarted)\n"));
    }
    let answered: Vec<&str> = job.answers.iter().map(|a| a.identity.as_str()).collect();
    for identity in job.sent_to.iter().filter(|s| !answered.contains(&s.as_str()) && !job.lost.contains(s)) {
        out.push_str(&format!("{identity}: no answer yet\n"));
    }
    if let Some(result) = &job.result {
        out.push_str(&format!("{command} {}: {result}\n", job.arguments));
    }
    out
}

/// Whom a command sent to clients is for: a stream (`-a/-e/-r`, `""` for
/// everyone) and, with `-i`, identity patterns within it.
struct Target {
    stream: String,
    identities: Vec<String>,
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

/// A request for the clients of `target`.
fn to_clients(request: Message, target: &Target) -> Message {
    let mut request = stamped(request);
    request.metadata.to = target.stream.clone();
    request.stream = target.stream.clone();
    Identities::attach(&mut request, &target.identities);
    request
}

/// What the admin says of a client that answered without a result: an
/// agent (an older or the original one) that does not run the command.
fn unsupported(message_type: &str) -> String {
    format!("does not support the command type {message_type} (an older or the original agent?)")
}

fn print_json_summary(json: bool, answers: Vec<serde_json::Value>, result: &connection::ClientAnswers) -> Result<()> {
    if json {
        let out = serde_json::json!({
            "answers": answers,
            "failed": result.failed,
            "missing": result.missing,
            "offline": result.offline,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// The admin's side of an upload: offer the file on the file service, ask
/// the clients to fetch it, serve their chunks while a progress bar runs.
#[allow(clippy::too_many_arguments)]
fn upload_file(
    conn: &mut Connection,
    net: &Config,
    security: &SocketSecurity,
    local: &Path,
    remote: &str,
    target: &Target,
    json: bool,
    online_only: bool,
    deadline: &mut Deadline,
) -> Result<Outcome> {
    use std::os::unix::fs::PermissionsExt;
    if !remote.starts_with('/') {
        bail!("REMOTE_PATH must be absolute: {remote}");
    }
    let (size, sha256) = upload::describe(local).with_context(|| format!("cannot read {}", local.display()))?;
    // Hashing a big file takes a while: the wait for the server starts now.
    *deadline = Deadline::after(deadline.idle);
    let mode = std::fs::metadata(local).map(|m| m.permissions().mode() & 0o7777).ok();
    let ctx = zmq::Context::new();
    let endpoint = net.networking.endpoint(net.networking.file_service_port);
    let socket = security.socket(&ctx, zmq::DEALER)?;
    socket.connect(&endpoint).with_context(|| format!("cannot connect to {endpoint}"))?;
    socket.send_multipart(upload::offer_frames(), 0)?;
    let transfer_id = upload::await_offered(&socket, deadline.idle).map_err(anyhow::Error::msg)?;

    // Its length is known once the server says how many clients will fetch.
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut side = UploadSide { socket, sender: upload::Sender::new(local, &transfer_id, size)?, bar: bar.clone() };
    let request = upload::UploadRequest { transfer_id, remote_path: remote.to_owned(), size, sha256, mode };
    let request = to_clients(upload::request(&request), target);
    let mut answers = Vec::new();
    let result = conn.ask_clients(
        &request,
        deadline,
        Some(&mut side),
        |ids, offline| {
            bar.suspend(|| report_offline(offline, online_only, json));
            bar.set_length(size * ids.len() as u64)
        },
        |answer| {
            let Some(done) = upload::result(answer) else {
                bar.suspend(|| eprintln!("{}: {}", answer.metadata.from, unsupported(upload::TYPE)));
                return false;
            };
            if json {
                answers.push(serde_json::json!({"identity": answer.metadata.from, "result": done}));
            } else {
                bar.suspend(|| eprintln!("{}", upload::format_answer(&answer.metadata.from, &done)));
            }
            true
        },
    );
    bar.finish_and_clear();
    let _ = side.socket.send_multipart(side.sender.done_frames(), zmq::DONTWAIT);
    let result = result?;
    print_json_summary(json, answers, &result)?;
    Ok(report(&result, target, online_only))
}

/// Serves chunk requests while the admin waits for the clients' answers.
struct UploadSide {
    socket: zmq::Socket,
    sender: upload::Sender,
    bar: indicatif::ProgressBar,
}

impl connection::SideTask for UploadSide {
    fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    fn ready(&mut self) -> Result<bool> {
        let sent = self.sender.serve(&self.socket).context("cannot read the local file")?;
        self.bar.set_position(self.sender.sent);
        Ok(sent > 0)
    }
}

/// `edit`: fetch, open in $EDITOR, check, save if changed.
fn edit_application(conn: &mut Connection, application: &str, deadline: &mut Deadline) -> Result<bool> {
    let response = conn.ask_server(&stamped(app_config::show_request(application)), deadline)?;
    let before = app_config::config_text(&response).unwrap_or_default();
    let mut file = tempfile::Builder::new().prefix(&format!("pantry-{application}-")).suffix(".yml").tempfile()?;
    file.write_all(before.as_bytes())?;
    file.flush()?;
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    // Through the shell, so EDITOR may carry arguments ("code --wait").
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("pantry-edit")
        .arg(file.path())
        .status()
        .with_context(|| format!("cannot run the editor `{editor}`"))?;
    if !status.success() {
        bail!("the editor `{editor}` failed ({status}); nothing saved");
    }
    let after = std::fs::read_to_string(file.path()).context("cannot read the edited file")?;
    if after == before {
        eprintln!("no changes; nothing saved");
        return Ok(true);
    }
    app_config::check_yaml(&after).map_err(|e| anyhow::anyhow!("{e}; nothing saved"))?;
    // The edit may have taken long: give the save its own wait.
    let mut save_deadline = Deadline::after(deadline.idle);
    conn.ask_server(&stamped(app_config::edit_request(application, &after)), &mut save_deadline)?;
    eprintln!("saved the config of {application}");
    Ok(true)
}

fn stamped(mut request: Message) -> Message {
    request.metadata.from = admin_identity();
    request
}

/// Says at once which targeted clients are offline (the server did not
/// send them the request): one line each, unless left out.
fn report_offline(offline: &[recipients::Offline], online_only: bool, json: bool) {
    if online_only || json {
        return;
    }
    let now = SystemTime::now();
    for client in offline {
        println!("{}", recipients::format_offline(client, now));
    }
    let _ = std::io::stdout().flush();
}

/// Prints the summary of a command run on clients.
fn report(result: &connection::ClientAnswers, target: &Target, online_only: bool) -> Outcome {
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
    (result.missing.is_empty() && result.failed.is_empty() && offline == 0).into()
}

/// After the first successful command with a file that held only the
/// server's key, write the generated pair back so later runs are known.
fn save_generated_keys(conn: &mut Connection) -> Result<()> {
    if let Some(keys) = conn.keys_mut().filter(|k| k.generated) {
        keys.save()?;
        eprintln!("saved this admin's new key pair to {}", keys.path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_file_lines() {
        let d = parse_defaults("# comment\n--host example.com\n\n--timeout=3\n-a pantry\n");
        assert_eq!(d, ["--host", "example.com", "--timeout=3", "-a", "pantry"]);
    }

    #[test]
    fn command_line_overrides_defaults() {
        let mut args = vec!["pantry-admin".to_string()];
        args.extend(parse_defaults("--host from-file\n--timeout 3\n"));
        args.extend(["--host", "from-cli", "status"].map(String::from));
        let cli = Cli::try_parse_from(args).unwrap();
        assert_eq!(cli.global.host.as_deref(), Some("from-cli"));
        assert_eq!(cli.global.timeout, 3.0);
        let cli = Cli::try_parse_from(["pantry-admin", "echo", "--timeout", "2", "hi"]).unwrap();
        assert_eq!(cli.command.wait(10.0), 2.0);
    }

    #[test]
    fn roles_split_on_commas() {
        let cli = Cli::try_parse_from(["pantry-admin", "-r", "web,db", "status"]).unwrap();
        assert_eq!(cli.global.roles, ["web", "db"]);
    }
}

#[cfg(test)]
mod exec_cli_tests {
    use super::*;

    #[test]
    fn exec_takes_everything_after_the_double_dash() {
        let cli = Cli::try_parse_from(["pantry-admin", "-a", "web", "exec", "--timeout", "1", "--", "ls", "-la", "/"])
            .unwrap();
        match cli.command {
            Command::Exec { timeout, command, shell, .. } => {
                assert_eq!(timeout, 1.0);
                assert!(!shell);
                assert_eq!(command, ["ls", "-la", "/"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Cli::try_parse_from(["pantry-admin", "--timeout", "5", "exec", "--timeout", "1", "--", "true"])
                .unwrap()
                .command
                .wait(5.0),
            6.0
        );
    }
}
