//! What the registry ([`crate::commands::Kind`]) says of a command: where
//! it runs, who may send it, whether it may block an agent, whether it is
//! a job. Each command's file declares its own [`Rule`].

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
