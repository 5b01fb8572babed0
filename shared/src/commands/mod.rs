//! Pantry's commands, one file each. Every file reads in the order the
//! command travels: how the admin builds the request, what the server or the
//! client does with it, how the admin prints the response.

pub mod create_client;
pub mod echo;
pub mod register_client;
pub mod status;

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
        register_client::TYPE | status::TYPE | create_client::TYPE => RunsOn::Server,
        _ => RunsOn::Clients,
    }
}

/// What an agent knows about itself when it runs a command.
#[derive(Debug, Clone)]
pub struct ClientContext {
    pub filter: ClientFilter,
}

impl ClientContext {
    pub fn identity(&self) -> &str {
        self.filter.identity.as_deref().unwrap_or_default()
    }
}

/// Runs a request on an agent and returns its answer. A type the agent does
/// not know gets an answer with `custom.error`, so no requester waits in vain.
pub fn run_on_client(request: &Message, ctx: &ClientContext) -> Message {
    let mut response = match request.message_type() {
        echo::TYPE => echo::handle(request),
        other => {
            let mut r = request.response();
            r.set_error(format!("client {} does not know the command type `{other}`", ctx.identity()));
            r
        }
    };
    response.metadata.from = ctx.identity().to_owned();
    response
}
