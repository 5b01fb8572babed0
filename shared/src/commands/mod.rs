//! Pantry's commands, one file each. Every file reads in the order the
//! command travels: how the admin builds the request, what the server or the
//! client does with it, how the admin prints the response.

pub mod app_config;
pub mod client_list;
pub mod client_revoke;
pub mod create_client;
pub mod echo;
pub mod exec;
pub mod register_client;
pub mod status;
pub mod upload;

use crate::filter::ClientFilter;
use crate::message::Message;

/// Where a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsOn {
    /// The server answers it itself, with one response.
    Server,
    /// The server forwards it to the matching clients; each answers.
    Clients,
}

/// Message types the server runs itself; every other type is forwarded.
pub fn runs_on(message_type: &str) -> RunsOn {
    match message_type {
        register_client::TYPE
        | status::TYPE
        | create_client::TYPE
        | client_list::TYPE
        | client_revoke::TYPE
        | app_config::SHOW_TYPE
        | app_config::EDIT_TYPE => RunsOn::Server,
        _ => RunsOn::Clients,
    }
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

/// Whether only admin keys may send this type (under CURVE; null security
/// has no keys and no roles). Client keys may register, answer, and `echo`.
pub fn needs_admin(message_type: &str) -> bool {
    matches!(
        message_type,
        create_client::TYPE
            | client_list::TYPE
            | client_revoke::TYPE
            | exec::TYPE
            | upload::TYPE
            | app_config::EDIT_TYPE
            | app_config::SHOW_TYPE
            | status::TYPE
    )
}

/// Whether a command may take long: the agent runs those on a worker
/// thread so that heartbeats and other commands go on meanwhile.
pub fn may_block(message_type: &str) -> bool {
    message_type == exec::TYPE || message_type == upload::TYPE
}

/// Runs a request on an agent and returns its answer. A type the agent does
/// not know gets an answer with `custom.error`, so no requester waits in vain.
pub fn run_on_client(request: &Message, ctx: &ClientContext) -> Message {
    let mut response = match request.message_type() {
        echo::TYPE => echo::handle(request),
        exec::TYPE => exec::handle(request, ctx.allow_exec),
        upload::TYPE => match &ctx.file_service {
            Some(service) => upload::handle(request, service),
            None => {
                let mut r = request.response();
                r.set_error("this client has no file service connection");
                r
            }
        },
        other => {
            let mut r = request.response();
            r.set_error(format!("client {} does not know the command type `{other}`", ctx.identity()));
            r
        }
    };
    response.metadata.from = ctx.identity().to_owned();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_commands_run_on_the_server() {
        for t in [
            register_client::TYPE,
            status::TYPE,
            create_client::TYPE,
            client_list::TYPE,
            client_revoke::TYPE,
            app_config::SHOW_TYPE,
            app_config::EDIT_TYPE,
        ] {
            assert_eq!(runs_on(t), RunsOn::Server, "{t}");
        }
        for t in [echo::TYPE, exec::TYPE, upload::TYPE, "SomethingNew"] {
            assert_eq!(runs_on(t), RunsOn::Clients, "{t}");
        }
    }
}
