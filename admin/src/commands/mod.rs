//! The admin's half of each command, one file each, in the order the
//! command travels from here: its clap arguments, the request it builds
//! (with the protocol in `pantry_shared::commands`), what it waits for and
//! how it prints the answers (text or JSON).
//!
//! [`Command`] is the list of subcommands: one line per command, naming the
//! arguments in its file, whose [`Admin`] implementation does the work.

pub mod app_config;
pub mod client_forget;
pub mod client_list;
pub mod client_pending;
pub mod client_revoke;
pub mod client_token;
pub mod client_tokens;
pub mod client_trust;
pub mod create_client;
pub mod echo;
pub mod exec;
pub mod facts;
pub mod jobs;
pub mod status;
pub mod upload;

use crate::session::{Admin, Outcome, Session};

/// Writes the `Subcommand` enum from one line per command, and hands each
/// arm to its arguments' [`Admin`] implementation.
macro_rules! admin_commands {
    ($($(#[$($attr:tt)*])* $name:ident($args:ty),)*) => {
        /// The admin's subcommands, in the order `pantry-admin --help` lists
        /// them. Each one's help is its arguments' doc comment.
        #[derive(clap::Subcommand, Debug)]
        pub enum Command {
            $($(#[$($attr)*])* $name($args),)*
        }

        impl Admin for Command {
            fn wait(&self, global: f64) -> f64 {
                match self {
                    $(Command::$name(args) => args.wait(global),)*
                }
            }

            fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
                match self {
                    $(Command::$name(args) => args.run(session),)*
                }
            }
        }
    };
}

admin_commands! {
    Status(status::Args),
    Facts(facts::Args),
    Echo(echo::Args),
    Exec(exec::Args),
    Upload(upload::Args),
    #[command(name = "client:create")] ClientCreate(create_client::Args),
    #[command(name = "client:list")] ClientList(client_list::Args),
    #[command(name = "client:revoke")] ClientRevoke(client_revoke::Args),
    #[command(name = "client:trust")] ClientTrust(client_trust::Args),
    #[command(name = "client:token")] ClientToken(client_token::Args),
    #[command(name = "client:tokens")] ClientTokens(client_tokens::Args),
    #[command(name = "client:pending")] ClientPending(client_pending::ListArgs),
    #[command(name = "client:accept")] ClientAccept(client_pending::AcceptArgs),
    #[command(name = "client:forget")] ClientForget(client_forget::Args),
    #[command(name = "client:reject")] ClientReject(client_pending::RejectArgs),
    Jobs(jobs::ListArgs),
    Job(jobs::ShowArgs),
    #[command(name = "app:show")] AppShow(app_config::ShowArgs),
    Edit(app_config::EditArgs),
}
