//! `pantry-admin`: the operator's command-line tool. It connects to the
//! server like a client (same sockets, same security), sends one command,
//! prints the responses and exits: 0 when everything answered, 1 otherwise,
//! 2 when no client matched.
//!
//! Options in `.pantry/config` (one per line) are read before the command
//! line, which overrides them. Each command's admin half (its arguments,
//! its request, its waiting and its printing) is in its file under
//! `shared/src/commands/`; the session they run in is `shared/src/session.rs`.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::Parser;
use pantry_shared::commands::Command;
use pantry_shared::session::{self, Global};

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use pantry_shared::commands::Admin;

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

    #[test]
    fn exec_takes_everything_after_the_double_dash() {
        let cli = Cli::try_parse_from(["pantry-admin", "-a", "web", "exec", "--timeout", "1", "--", "ls", "-la", "/"])
            .unwrap();
        match cli.command {
            Command::Exec(exec) => {
                assert_eq!(exec.timeout, 1.0);
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
