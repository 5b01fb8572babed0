//! The protocol of Pantry's commands, one file each: the wire type and its
//! [`Rule`], how a request is built and read, and how the server answers
//! the ones it runs. The admin's half of each command (its arguments,
//! waiting and printing) is in `admin/src/commands/`, the agent's work in
//! `client/src/work/`, the server's handlers in `server/src/dispatch/`.
//!
//! [`Kind`] is the registry: every message type the protocol knows, one line
//! each naming the [`Rule`] its file declares (wire type, where it runs, who
//! may send it, whether it may block an agent, whether it is a job). The
//! server's authorization, the agent and the admin consult it; a type that
//! is not in it is refused (deny by default). The server matches it with
//! no wildcard: a kind added here without a handler does not compile.

pub mod app_config;
pub mod cancel;
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
pub mod facts;
pub mod job_control;
pub mod jobs;
pub mod recipients;
pub mod register_client;
pub mod rollout;
pub mod status;
pub mod trust;
pub mod upload;

pub use crate::rule::{Rule, RunsOn, Senders};

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
    JobControl => job_control::RULE,
    Cancel => cancel::RULE,
    Facts => facts::RULE,
    ListFacts => facts::LIST_RULE,
    RegisterSigningKey => trust::REGISTER_RULE,
    ShowTrustList => trust::SHOW_RULE,
    SetTrustList => trust::SET_RULE,
    TrustList => trust::LIST_RULE,
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

/// Whether an agent's error says it does not run `message_type` at all:
/// SPEC §3 asks an agent to answer a type it does not know with an error
/// "saying so", in its own words (ours: "does not know the command type").
pub fn says_unsupported(error: &str, message_type: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains(&message_type.to_ascii_lowercase())
        && ["unknown", "not know", "not support", "unsupported", "not implemented"].iter().any(|w| error.contains(w))
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
            JobControl,
            RegisterSigningKey,
            SetTrustList,
        ];
        assert_eq!(jobs, expected);
        // Cancel and TrustList are the server's, sent on behalf of a
        // recorded JobControl or SetTrustList.
        let for_clients =
            Kind::ALL.iter().filter(|k| k.runs_on() == RunsOn::Clients && !matches!(k, Cancel | TrustList));
        assert!(for_clients.into_iter().all(|k| k.is_job()));
    }

    #[test]
    fn only_registration_and_facts_are_for_client_keys() {
        for &kind in Kind::ALL {
            let expected = match kind {
                Kind::RegisterClient | Kind::Facts => Senders::Clients,
                Kind::Enroll => Senders::Enrollees,
                _ => Senders::Admins,
            };
            assert_eq!(kind.rule().senders, expected, "{kind:?}");
        }
    }
}
