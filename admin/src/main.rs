//! `pantry-admin`: the operator's command-line tool. It connects to the
//! server like a client (same sockets, same security), sends one command,
//! prints the responses and exits: 0 when everything answered, 1 otherwise.
//!
//! Options in `.pantry/config` (one per line) are read before the command
//! line, which overrides them.

mod connection;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use pantry_shared::commands::{create_client, echo, status};
use pantry_shared::config::{self, Config, Program};
use pantry_shared::filter::ClientFilter;
use pantry_shared::keys::{self, ClientKeys};
use pantry_shared::security::SocketSecurity;
use pantry_shared::Message;

use connection::Connection;

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
    /// Use CURVE with the keys in .pantry/FILE (it may hold only server_public_key).
    #[arg(long, global = true, value_name = "FILE")]
    curve_key_file: Option<PathBuf>,
    /// Seconds to wait for the server and the clients.
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECONDS")]
    timeout: f64,
    /// Say more on stderr.
    #[arg(short = 'v', long, global = true)]
    verbose: bool,
    /// Say everything on stderr.
    #[arg(short = 'd', long, global = true)]
    debug: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List checked-in clients matching -a/-e/-r: last check-in, identity,
    /// application, environment, roles.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Every matching client answers with MESSAGE.
    Echo {
        message: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Create a client key pair on the server and print it as YAML for the
    /// client's client_keys.yml (needs CURVE).
    #[command(name = "client:create")]
    ClientCreate {
        /// Write the keys to FILE (mode 0600) instead of printing them.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

fn main() {
    let args = match args_with_defaults(Path::new(DEFAULTS_FILE)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("pantry-admin: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
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

fn run(cli: Cli) -> Result<bool> {
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
    if !(g.timeout > 0.0 && g.timeout.is_finite()) {
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
    let server = net.networking.endpoint(net.networking.receive_port);
    let mut conn = Connection::open(server, &security, keys, g.timeout)?;
    let deadline = Instant::now() + Duration::from_secs_f64(g.timeout);
    let filter = ClientFilter {
        application: g.application.clone(),
        environment: g.environment.clone(),
        roles: g.roles.clone(),
        identity: None,
    };
    filter.validate().map_err(anyhow::Error::msg)?;

    let ok = match &cli.command {
        Command::Status { json } => {
            let response = conn.ask_server(&stamped(status::request(&filter)), deadline)?;
            let clients = status::clients(&response);
            if *json {
                println!("{}", serde_json::to_string_pretty(&clients)?);
            } else {
                print!("{}", status::format_table(&clients, SystemTime::now()));
            }
            true
        }
        Command::Echo { message, json } => {
            let mut request = stamped(echo::request(message));
            request.stream = filter.target_stream().map_err(anyhow::Error::msg)?;
            request.metadata.to = request.stream.clone();
            let mut answers = Vec::new();
            let result = conn.ask_clients(&request, deadline, |answer| {
                if *json {
                    answers.push(serde_json::json!({
                        "identity": answer.metadata.from,
                        "message": answer.body.first().and_then(|b| b.as_text()),
                    }));
                } else {
                    println!("{}", echo::format_answer(answer));
                    let _ = std::io::stdout().flush();
                }
            })?;
            if *json {
                let out = serde_json::json!({
                    "answers": answers, "failed": result.failed, "missing": result.missing,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            report(&result)
        }
        Command::ClientCreate { output } => {
            if !security.is_curve() {
                bail!("client:create needs CURVE: pass --curve-key-file FILE (or a config with security: curve)");
            }
            if let Some(path) = output {
                if path.exists() {
                    bail!("{} already exists; not overwriting a key file", path.display());
                }
            }
            let response = conn.ask_server(&stamped(create_client::request()), deadline)?;
            let yaml = create_client::credentials_yaml(&response)?;
            match output {
                Some(path) => {
                    keys::write_atomically(path, yaml.as_bytes())?;
                    eprintln!("wrote the new client's keys to {}", path.display());
                }
                None => print!("{yaml}"),
            }
            true
        }
    };
    if ok {
        save_generated_keys(&mut conn)?;
    }
    Ok(ok)
}

fn stamped(mut request: Message) -> Message {
    request.metadata.from = admin_identity();
    request
}

/// Prints the summary of a command run on clients; true if all answered.
fn report(result: &connection::ClientAnswers) -> bool {
    let mut summary = format!("{} of {} clients answered", result.answered, result.expected);
    if !result.failed.is_empty() {
        summary.push_str(&format!(", {} failed", result.failed.len()));
    }
    eprintln!("{summary}");
    if !result.missing.is_empty() {
        eprintln!("did not answer: {}", result.missing.join(", "));
    }
    result.missing.is_empty() && result.failed.is_empty()
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
    }

    #[test]
    fn roles_split_on_commas() {
        let cli = Cli::try_parse_from(["pantry-admin", "-r", "web,db", "status"]).unwrap();
        assert_eq!(cli.global.roles, ["web", "db"]);
    }
}
