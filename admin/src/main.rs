//! `pantry-admin`: the operator's command-line tool. It connects to the
//! server like a client (same sockets, same security), sends one command,
//! prints the responses and exits: 0 when everything answered, 1 otherwise,
//! 2 when no client matched.
//!
//! Options in `.pantry/config` (one per line) are read before the command
//! line, which overrides them.
//!
//! Layout:
//! - [`commands`]: each command's admin half (its arguments, its request,
//!   its waiting and its printing), one file each;
//! - [`session`]: the global options, the session commands run in, the
//!   summaries they print;
//! - [`connection`]: the connection to the server: deadlines, handshake
//!   errors, collecting the answers of many clients;
//! - [`for_clients`]: how `echo`, `exec` and `upload` run: live, or as a
//!   rollout ([`rollout`]'s options) that [`follow`] follows in the job
//!   store; [`output`] prints answers (grouped with [`fold`]);
//! - [`interrupt`]: Ctrl-C while waiting: cancel, wait on, or detach;
//! - [`signing`]: the admin's signature on what reaches agents, and the
//!   trust list it signs for them.

mod commands;
mod connection;
mod fold;
mod follow;
mod for_clients;
mod interrupt;
mod output;
mod rollout;
mod session;
mod signing;

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::Parser;
use commands::Command;
use session::Global;

const DEFAULTS_FILE: &str = ".pantry/config";

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
    match session::run(&cli.global, cli.command) {
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
    let defaults = parse_defaults(&text, &repeatable_given(&args[1..]));
    args.splice(1..1, defaults);
    Ok(args)
}

/// Options that may be given several times: clap adds their values up, so
/// the file's would join the command line's instead of yielding to them.
const REPEATABLE: &[&str] = &["--host", "--fact"];

/// The [`REPEATABLE`] options the command line gives (before any `--`,
/// after which the words are a remote command's).
fn repeatable_given(args: &[String]) -> Vec<&'static str> {
    let words = args.iter().take_while(|a| *a != "--");
    let words: Vec<&String> = words.collect();
    REPEATABLE
        .iter()
        .copied()
        .filter(|option| {
            words.iter().any(|w| *w == option || w.strip_prefix(option).is_some_and(|r| r.starts_with('=')))
        })
        .collect()
}

/// One option per line (`--host example.com` or `--host=example.com`);
/// blank lines and `#` comments are skipped, and so are the options in
/// `overridden` (the command line gives them).
fn parse_defaults(text: &str, overridden: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let option = line.split(|c: char| c == '=' || c.is_whitespace()).next().unwrap_or_default();
        if overridden.contains(&option) {
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Admin;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_file_lines() {
        let d = parse_defaults("# comment\n--host example.com\n\n--timeout=3\n-a pantry\n", &[]);
        assert_eq!(d, ["--host", "example.com", "--timeout=3", "-a", "pantry"]);
    }

    fn with_defaults(file: &str, command_line: &[&str]) -> Cli {
        let command_line: Vec<String> = command_line.iter().map(|s| s.to_string()).collect();
        let mut args = vec!["pantry-admin".to_string()];
        args.extend(parse_defaults(file, &repeatable_given(&command_line)));
        args.extend(command_line);
        Cli::try_parse_from(args).unwrap()
    }

    /// Z85 has `-` in its alphabet: about one key in 85 begins with it.
    #[test]
    fn a_key_that_begins_with_a_hyphen_is_a_value() {
        let key = "-0Z&k3Yx^ZyPBf]g=?[5b@Pm8$-RkBcMzFJe2EwEY";
        for sub in ["client:revoke", "client:accept", "client:reject"] {
            let cli = Cli::try_parse_from(["pantry-admin", sub, "--timeout", "2", key]).unwrap();
            let target = match cli.command {
                Command::ClientRevoke(a) => a.target,
                Command::ClientAccept(a) => a.target,
                Command::ClientReject(a) => a.target,
                other => panic!("{other:?}"),
            };
            assert_eq!(target, key, "{sub}");
        }
        let cli = Cli::try_parse_from(["pantry-admin", "client:revoke", key, "--timeout", "2"]).unwrap();
        assert_eq!(cli.command.wait(10.0), 2.0, "options after the key are still options");
    }

    #[test]
    fn command_line_overrides_defaults() {
        let cli = with_defaults("--host from-file\n--timeout 3\n", &["--host", "from-cli", "status"]);
        assert_eq!(cli.global.host, ["from-cli"]);
        assert_eq!(cli.global.timeout, 3.0);
        let cli = Cli::try_parse_from(["pantry-admin", "echo", "--timeout", "2", "hi"]).unwrap();
        assert_eq!(cli.command.wait(10.0), 2.0);
    }

    #[test]
    fn host_may_be_repeated() {
        let cli = Cli::try_parse_from(["pantry-admin", "--host", "a", "--host=b", "status"]).unwrap();
        assert_eq!(cli.global.host, ["a", "b"]);
        let cli = Cli::try_parse_from(["pantry-admin", "status", "--host", "a", "--host", "b"]).unwrap();
        assert_eq!(cli.global.host, ["a", "b"]);
        assert!(Cli::try_parse_from(["pantry-admin", "status"]).unwrap().global.host.is_empty());
        // Hosts from the file add up; the command line's replace them all.
        let file = "--host a\n--host=b\n";
        assert_eq!(with_defaults(file, &["status"]).global.host, ["a", "b"]);
        assert_eq!(with_defaults(file, &["--host=c", "status"]).global.host, ["c"]);
        assert_eq!(with_defaults(file, &["status", "--host", "c", "--host", "d"]).global.host, ["c", "d"]);
        // After `--` the words are a remote command's, not options.
        assert_eq!(with_defaults(file, &["exec", "--", "x", "--host", "c"]).global.host, ["a", "b"]);
    }

    #[test]
    fn roles_split_on_commas() {
        let cli = Cli::try_parse_from(["pantry-admin", "-r", "web,db", "status"]).unwrap();
        assert_eq!(cli.global.roles, ["web", "db"]);
    }

    #[test]
    fn exec_takes_everything_after_the_double_dash() {
        let cli = Cli::try_parse_from(["pantry-admin", "-a", "web", "exec", "--timeout", "1", "--", "ls", "-la", "/"])
            .unwrap();
        match cli.command {
            Command::Exec(exec) => {
                assert_eq!(exec.timeout, Some(1.0));
                assert!(!exec.shell);
                assert_eq!(exec.command, ["ls", "-la", "/"]);
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
