//! Pantry's commands, one file each. Every file reads in the order the
//! command travels: how the admin builds the request, what the server or the
//! client does with it, how the admin prints the response.
//!
//! [`Kind`] is the registry: every message type the protocol knows, one line
//! each naming the [`Rule`] its file declares (wire type, where it runs, who
//! may send it, whether it may block an agent, whether it is a job). The
//! server's authorization, the agent and the admin consult it; a type that
//! is not in it is refused (deny by default). A new command is its file, its
//! `pub mod` line, its line in `kinds!` and, when the admin sends it, its
//! line in `admin_commands!`.
//!
//! [`Command`] is the admin's side of it: one line per subcommand, naming
//! the clap arguments in the command's file, whose [`Admin`] implementation
//! builds the request, waits for the answers and prints them (text or
//! JSON).

pub mod app_config;
pub mod client_forget;
pub mod client_list;
pub mod client_pending;
pub mod client_revoke;
pub mod client_token;
pub mod client_tokens;
pub mod create_client;
pub mod echo;
pub mod enroll;
pub mod exec;
pub mod jobs;
pub mod recipients;
pub mod register_client;
pub mod status;
pub mod upload;

use crate::filter::ClientFilter;
use crate::message::Message;
use crate::session::{Outcome, Session};

/// Where a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsOn {
    /// The server answers it itself, with one response.
    Server,
    /// The server forwards it to the matching clients; each answers.
    Clients,
}

/// Which keys may send a command's requests under CURVE (null security has
/// no keys: everyone may send everything). Answers to commands that run on
/// clients come only from client keys the request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Senders {
    /// Admin keys only.
    Admins,
    /// Client keys only (an agent speaking for itself).
    Clients,
    /// Keys the server does not know yet (an agent enrolling itself).
    Enrollees,
}

/// What the registry says about one kind; each command's file declares its
/// own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The `type` field on the wire.
    pub wire: &'static str,
    pub runs_on: RunsOn,
    pub senders: Senders,
    /// The agent runs it on a worker thread, so heartbeats go on.
    pub may_block: bool,
    /// The server records it as a job: commands sent to clients, and
    /// changes to keys, clients and configs. Read-only queries are only in
    /// the audit log.
    pub job: bool,
}

/// Writes [`Kind`], [`Kind::ALL`] and [`Kind::rule`] from one line per
/// kind naming the rule in its command's file.
macro_rules! kinds {
    ($($kind:ident => $rule:path,)*) => {
        /// Every message type Pantry knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kind {
            $($kind,)*
        }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$kind,)*];

            pub const fn rule(self) -> Rule {
                match self {
                    $(Kind::$kind => $rule,)*
                }
            }
        }
    };
}

kinds! {
    RegisterClient => register_client::RULE,
    Status => status::RULE,
    Echo => echo::RULE,
    Exec => exec::RULE,
    Upload => upload::RULE,
    CreateClient => create_client::RULE,
    ListClients => client_list::RULE,
    RevokeClient => client_revoke::RULE,
    ShowApplication => app_config::SHOW_RULE,
    EditApplication => app_config::EDIT_RULE,
    CreateToken => client_token::RULE,
    RevokeToken => client_token::REVOKE_RULE,
    ListTokens => client_tokens::RULE,
    Enroll => enroll::RULE,
    ListPendingKeys => client_pending::LIST_RULE,
    AcceptPendingKey => client_pending::ACCEPT_RULE,
    RejectPendingKey => client_pending::REJECT_RULE,
    ForgetClient => client_forget::RULE,
    ListJobs => jobs::LIST_RULE,
    ShowJob => jobs::SHOW_RULE,
}

impl Kind {
    /// The kind of a wire type; `None` for a type Pantry does not know.
    pub fn from_wire(message_type: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.rule().wire == message_type)
    }

    pub fn wire(self) -> &'static str {
        self.rule().wire
    }

    pub fn runs_on(self) -> RunsOn {
        self.rule().runs_on
    }

    pub fn is_job(self) -> bool {
        self.rule().job
    }
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
    Echo(echo::Args),
    Exec(exec::Args),
    Upload(upload::Args),
    #[command(name = "client:create")] ClientCreate(create_client::Args),
    #[command(name = "client:list")] ClientList(client_list::Args),
    #[command(name = "client:revoke")] ClientRevoke(client_revoke::Args),
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

/// What an agent knows about itself when it runs a command.
#[derive(Clone)]
pub struct ClientContext {
    pub filter: ClientFilter,
    /// `allow_exec` from the agent's config.
    pub allow_exec: bool,
    /// Where uploads are fetched from.
    pub file_service: Option<upload::FileService>,
}

impl ClientContext {
    pub fn identity(&self) -> &str {
        self.filter.identity.as_deref().unwrap_or_default()
    }
}

/// Whether the agent should run this request on a worker thread.
pub fn may_block(message_type: &str) -> bool {
    Kind::from_wire(message_type).is_some_and(|k| k.rule().may_block)
}

/// Runs a request on an agent and returns its answer. A type the agent does
/// not run gets an answer with `custom.error` naming it, so no requester
/// waits in vain.
pub fn run_on_client(request: &Message, ctx: &ClientContext) -> Message {
    let mut response = match Kind::from_wire(request.message_type()) {
        Some(Kind::Echo) => echo::handle(request),
        Some(Kind::Exec) => exec::handle(request, ctx.allow_exec),
        Some(Kind::Upload) => match &ctx.file_service {
            Some(service) => upload::handle(request, service),
            None => {
                let mut r = request.response();
                r.set_error("this client has no file service connection");
                r
            }
        },
        _ => {
            let mut r = request.response();
            r.set_error(unknown_type_error(ctx.identity(), request.message_type()));
            r
        }
    };
    response.metadata.from = ctx.identity().to_owned();
    response
}

/// The error an agent answers a type it does not run with.
pub fn unknown_type_error(identity: &str, message_type: &str) -> String {
    format!("client {identity} does not know the command type `{message_type}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_wire_type() {
        for &kind in Kind::ALL {
            assert_eq!(Kind::from_wire(kind.wire()), Some(kind), "{kind:?}");
        }
        assert_eq!(Kind::from_wire("SomethingNew"), None);
        assert_eq!(Kind::from_wire(""), None);
    }

    #[test]
    fn jobs_are_commands_to_clients_and_changes() {
        use Kind::*;
        let jobs: Vec<Kind> = Kind::ALL.iter().copied().filter(|k| k.is_job()).collect();
        let expected = [
            Echo,
            Exec,
            Upload,
            CreateClient,
            RevokeClient,
            EditApplication,
            CreateToken,
            RevokeToken,
            AcceptPendingKey,
            RejectPendingKey,
            ForgetClient,
        ];
        assert_eq!(jobs, expected);
        assert!(Kind::ALL.iter().filter(|k| k.runs_on() == RunsOn::Clients).all(|k| k.is_job()));
    }

    #[test]
    fn only_registration_is_for_client_keys() {
        for &kind in Kind::ALL {
            let expected = match kind {
                Kind::RegisterClient => Senders::Clients,
                Kind::Enroll => Senders::Enrollees,
                _ => Senders::Admins,
            };
            assert_eq!(kind.rule().senders, expected, "{kind:?}");
        }
        assert!(may_block(exec::TYPE) && may_block(upload::TYPE) && !may_block(echo::TYPE));
        assert!(!may_block("SomethingNew"));
    }

    #[test]
    fn unknown_types_get_an_error_naming_them() {
        let ctx = ClientContext { filter: ClientFilter::default(), allow_exec: true, file_service: None };
        let mut request = Message::new("Frobnicate");
        request.metadata.requires_response = true;
        let answer = run_on_client(&request, &ctx);
        assert!(answer.error().unwrap().contains("`Frobnicate`"), "{answer:?}");
    }
}
