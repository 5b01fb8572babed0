//! Authorization, deny by default, in one place: every message is judged
//! here before any handler sees it, whatever its flags say.
//!
//! - A type the registry ([`Kind`]) does not know is refused.
//! - Under CURVE the sender is who its key says, never what `from` claims.
//!   A request is allowed only from the keys its rule names (admins, or
//!   clients for `RegisterClient`); an answer (a client-run type without
//!   `requires_response`) only from a client key speaking for itself. The
//!   dispatcher then routes an answer only if its sender is one of the
//!   pending request's recipients.
//! - Null security has no keys: every known type is allowed.

use pantry_shared::commands::{Kind, RunsOn, Senders};
use pantry_shared::keys::Role;
use pantry_shared::logging::shortened;
use pantry_shared::Message;

use crate::messages::{PeerAuth, Standing};

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A request: run it on the server or forward it.
    Request(Kind),
    /// An answer to a request forwarded to clients.
    Answer(Kind),
    /// Refused with a reason the sender is told (when it asked for a
    /// response) and the log says at warn.
    Refuse(String),
    /// Dropped without an answer (a reply would help a spoofer); logged at
    /// warn.
    Drop(&'static str),
}

/// What an unknown key hears for anything but `Enroll`; the admin and the
/// agent recognise it and say the server rejected the key.
pub const UNKNOWN_CLIENT: &str = "unknown client: the server does not know this key (enroll it with \
    `pantry-client enroll --token`, or have an admin run `pantry-admin client:accept`)";

pub fn authorize(message: &Message, sender: Option<&PeerAuth>, curve: bool) -> Verdict {
    let m = &message.metadata;
    judge(&m.message_type, m.requires_response, &m.from, sender, curve)
}

/// [`authorize`] from the three fields it reads (the socket thread judges
/// answers from their [`Head`](pantry_shared::Head) alone).
pub fn judge(wire: &str, requires_response: bool, from: &str, sender: Option<&PeerAuth>, curve: bool) -> Verdict {
    let Some(kind) = Kind::from_wire(wire) else {
        // The type is the sender's: a refusal repeats at most its start.
        return Verdict::Refuse(format!("unknown command type `{}`", shortened(wire, 64)));
    };
    let rule = kind.rule();
    let is_answer = rule.runs_on == RunsOn::Clients && !requires_response;
    let judged = if is_answer { Verdict::Answer(kind) } else { Verdict::Request(kind) };
    if !curve {
        return judged;
    }
    let Some(sender) = sender else {
        return Verdict::Drop("message without an authenticated key");
    };
    match sender.standing {
        // An unknown key may only ask to be enrolled.
        Standing::Enrollee if kind == Kind::Enroll => judged,
        Standing::Enrollee => Verdict::Refuse(UNKNOWN_CLIENT.into()),
        Standing::Known(Role::Admin) if is_answer => {
            Verdict::Drop("an admin key cannot answer a request sent to clients")
        }
        Standing::Known(Role::Admin) if rule.senders == Senders::Admins => judged,
        Standing::Known(Role::Admin) => Verdict::Refuse(format!("not authorized: {wire} is sent by agents only")),
        // Another server of the cluster passes on what an admin sent to
        // clients, and nothing else.
        Standing::Known(Role::Server)
            if !is_answer && rule.runs_on == RunsOn::Clients && rule.senders == Senders::Admins =>
        {
            judged
        }
        Standing::Known(Role::Server) => {
            Verdict::Refuse(format!("not authorized: a server's key only passes on commands to clients, not {wire}"))
        }
        // An enrolled agent asking again hears its name (it may have been
        // accepted while it waited).
        Standing::Known(Role::Client) if kind == Kind::Enroll => judged,
        Standing::Known(Role::Client) if !is_answer && rule.senders != Senders::Clients => {
            Verdict::Refuse(format!("not authorized: {wire} needs an admin key"))
        }
        // A client key speaks only for itself; an unbound one may only
        // register (its first registration binds it).
        Standing::Known(Role::Client) => match &sender.name {
            Some(name) if name == from => judged,
            None if kind == Kind::RegisterClient => judged,
            _ => Verdict::Drop("message with a spoofed sender"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::commands::{client_revoke, create_client, echo, exec, register_client, status};
    use pantry_shared::filter::ClientFilter;

    fn key(name: Option<&str>, role: Role) -> PeerAuth {
        PeerAuth {
            key: "k".into(),
            name: name.map(Into::into),
            standing: Standing::Known(role),
            address: "127.0.0.1".into(),
        }
    }

    fn from(mut m: Message, who: &str) -> Message {
        m.metadata.from = who.into();
        m
    }

    fn registration(identity: &str) -> Message {
        register_client::request(&ClientFilter { identity: Some(identity.into()), ..Default::default() })
    }

    #[test]
    fn client_keys_run_no_admin_command_whatever_the_flags_say() {
        let web = key(Some("web-1"), Role::Client);
        for mut m in [
            create_client::request(Some("x"), Role::Admin),
            status::request(&ClientFilter::default()),
            echo::request("hi"),
        ] {
            m.metadata.from = "web-1".into();
            for requires_response in [true, false] {
                m.metadata.requires_response = requires_response;
                let verdict = authorize(&m, Some(&web), true);
                // Echo without requires_response is an answer: routed only
                // if web-1 was asked; never run as a request.
                let ok = matches!(verdict, Verdict::Refuse(_))
                    || (m.message_type() == echo::TYPE && !requires_response && verdict == Verdict::Answer(Kind::Echo));
                assert!(ok, "{} requires_response={requires_response}: {verdict:?}", m.message_type());
            }
        }
    }

    #[test]
    fn unknown_types_are_refused_for_everyone() {
        let m = from(Message::new("Frobnicate"), "admin");
        for curve in [true, false] {
            let verdict = authorize(&m, Some(&key(Some("admin"), Role::Admin)), curve);
            assert_eq!(verdict, Verdict::Refuse("unknown command type `Frobnicate`".into()));
        }
    }

    #[test]
    fn senders_speak_for_themselves() {
        let web = key(Some("web-1"), Role::Client);
        assert_eq!(
            authorize(&from(registration("web-1"), "web-1"), Some(&web), true),
            Verdict::Request(Kind::RegisterClient)
        );
        assert_eq!(
            authorize(&from(registration("db-1"), "db-1"), Some(&web), true),
            Verdict::Drop("message with a spoofed sender")
        );
        let mut answer = from(echo::request("hi").response(), "web-1");
        answer.metadata.requires_response = false;
        assert_eq!(authorize(&answer, Some(&web), true), Verdict::Answer(Kind::Echo));
        answer.metadata.from = "db-1".into();
        assert!(matches!(authorize(&answer, Some(&web), true), Verdict::Drop(_)));
        // Unbound: registers (and binds), nothing else.
        let unbound = key(None, Role::Client);
        assert_eq!(
            authorize(&from(registration("web-3"), "web-3"), Some(&unbound), true),
            Verdict::Request(Kind::RegisterClient)
        );
        answer.metadata.from = "web-3".into();
        assert!(matches!(authorize(&answer, Some(&unbound), true), Verdict::Drop(_)));
    }

    #[test]
    fn unknown_keys_may_only_enroll() {
        let stranger = PeerAuth { standing: Standing::Enrollee, ..key(None, Role::Client) };
        let enroll = pantry_shared::commands::enroll::request(&pantry_shared::commands::enroll::EnrollRequest {
            token: None,
            identity: None,
            hostname: "h".into(),
        });
        assert_eq!(authorize(&enroll, Some(&stranger), true), Verdict::Request(Kind::Enroll));
        for m in [status::request(&ClientFilter::default()), registration("h"), echo::request("x")] {
            assert_eq!(authorize(&m, Some(&stranger), true), Verdict::Refuse(UNKNOWN_CLIENT.into()));
        }
        assert!(matches!(authorize(&enroll, Some(&key(Some("ops"), Role::Admin)), true), Verdict::Refuse(_)));
    }

    #[test]
    fn admins_request_but_neither_answer_nor_register() {
        let admin = key(Some("ops"), Role::Admin);
        assert_eq!(authorize(&from(exec::request(&exec_req()), "x"), Some(&admin), true), Verdict::Request(Kind::Exec));
        let mut answer = echo::request("hi");
        answer.metadata.requires_response = false;
        assert!(matches!(authorize(&answer, Some(&admin), true), Verdict::Drop(_)));
        assert!(matches!(authorize(&registration("ops"), Some(&admin), true), Verdict::Refuse(_)));
        assert!(matches!(authorize(&echo::request("hi"), None, true), Verdict::Drop(_)));
        assert_eq!(authorize(&echo::request("hi"), None, false), Verdict::Request(Kind::Echo));
    }

    #[test]
    fn a_servers_key_only_passes_on_commands_to_clients() {
        let peer = key(Some("pantry-server"), Role::Server);
        assert_eq!(authorize(&echo::request("hi"), Some(&peer), true), Verdict::Request(Kind::Echo));
        assert_eq!(authorize(&exec::request(&exec_req()), Some(&peer), true), Verdict::Request(Kind::Exec));
        for m in [
            create_client::request(Some("x"), Role::Admin),
            status::request(&ClientFilter::default()),
            client_revoke::request("web-1"),
            registration("pantry-server"),
        ] {
            let verdict = authorize(&m, Some(&peer), true);
            assert!(matches!(&verdict, Verdict::Refuse(r) if r.contains("not authorized")), "{m:?}: {verdict:?}");
        }
        let mut answer = echo::request("hi");
        answer.metadata.requires_response = false;
        assert!(matches!(authorize(&answer, Some(&peer), true), Verdict::Refuse(_)));
    }

    fn exec_req() -> exec::ExecRequest {
        exec::ExecRequest { program: "true".into(), args: vec![], shell: false, timeout: 1.0 }
    }
}
