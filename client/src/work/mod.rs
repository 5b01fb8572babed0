//! The agent's work: each request it is sent runs here ([`run_on_client`]),
//! on the agent's thread or, for those that may block ([`may_block`]), on
//! a worker thread of its own: `echo` answers at once, `exec` runs a
//! program ([`exec`]), `upload` fetches a file ([`upload`]). A type the
//! agent does not run is answered with an error naming it.

pub mod exec;
pub mod running;
pub mod upload;

use pantry_shared::commands::{cancel, echo, unknown_type_error, Kind};
use pantry_shared::filter::ClientFilter;
use pantry_shared::Message;

/// What an agent knows about itself when it runs a command.
#[derive(Clone)]
pub struct ClientContext {
    pub filter: ClientFilter,
    /// `allow_exec` from the agent's config.
    pub allow_exec: bool,
    /// Where uploads are fetched from.
    pub file_service: Option<upload::FileService>,
    /// The commands running, for `job cancel`.
    pub running: running::Running,
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
        Some(Kind::Exec) => exec::handle(request, ctx.allow_exec, ctx.identity(), &ctx.running),
        // No answer is asked for: the cancelled command's own answer says so.
        Some(Kind::Cancel) => {
            if let Some(asked) = cancel::parse(request) {
                ctx.running.cancel(&asked.job, asked.grace());
            }
            request.response()
        }
        Some(Kind::Upload) => match &ctx.file_service {
            Some(service) => upload::handle(request, service, &ctx.running),
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
    // The request's signature is of no use in its answer: not sent back.
    response.metadata.custom.remove(pantry_shared::signing::SIGNATURE_FIELD);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::commands::{exec, upload};

    #[test]
    fn long_commands_run_beside_the_loop() {
        assert!(may_block(exec::TYPE) && may_block(upload::TYPE) && !may_block(echo::TYPE));
        assert!(!may_block("SomethingNew"));
    }

    #[test]
    fn unknown_types_get_an_error_naming_them() {
        let ctx = ClientContext {
            filter: ClientFilter::default(),
            allow_exec: true,
            file_service: None,
            running: running::Running::default(),
        };
        let mut request = Message::new("Frobnicate");
        request.metadata.requires_response = true;
        let answer = run_on_client(&request, &ctx);
        assert!(answer.error().unwrap().contains("`Frobnicate`"), "{answer:?}");
    }
}
