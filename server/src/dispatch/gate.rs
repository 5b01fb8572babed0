//! The gate every message from the receive socket passes before anything
//! runs: a revoked key's late messages are dropped, authorization judges
//! the rest ([`crate::authorize`], deny by default), and each request gets
//! its audit line before it is carried out.
//!
//! Refusals and drops are written to the log and the audit log once per
//! key, address, decision and type in a window ([`REFUSAL_WINDOW`]); the
//! rest are counted and written as one line each when the window ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pantry_shared::commands::Kind;
use serde_json::Value;
use slog::{debug, error, warn, Logger};

use crate::audit::{self, Audit, AuditLine};
use crate::authorize::{authorize, Verdict};
use crate::log_limit::{Admit, LogLimit};
use crate::messages::{Hex, Standing};
use crate::metrics::{Metrics, Refusal};

use super::Request;

/// One line per key, address, decision and type this often at most.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// How long a revoked key's late messages are dropped here (the socket
/// thread has cut it off long before).
const REVOKED_GRACE: Duration = Duration::from_secs(60);

/// What becomes of a message at the gate.
pub enum Judged {
    /// A request to carry out.
    Request(Kind),
    /// Not carried out; the requester is told why (if it asked).
    Refused(String),
    /// Not carried out; nothing said.
    Dropped,
}

/// Why a request could not pass after all (its audit line).
#[derive(Debug, thiserror::Error)]
#[error("the server cannot write its audit log ({0}); request refused")]
pub struct AuditFailed(std::io::Error);

pub struct Gate {
    audit: Audit,
    fail_closed: bool,
    /// Keys revoked lately, and when: their open connections may still
    /// deliver a message or two before the cut-off lands. Forgotten after
    /// [`REVOKED_GRACE`], or at once when the key is accepted again.
    revoked: HashMap<String, Instant>,
    refusals: LogLimit,
    curve: bool,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl Gate {
    pub fn new(audit: Audit, fail_closed: bool, curve: bool, metrics: Arc<Metrics>, log: Logger) -> Gate {
        Gate {
            audit,
            fail_closed,
            revoked: HashMap::new(),
            refusals: LogLimit::new(REFUSAL_WINDOW),
            curve,
            metrics,
            log,
        }
    }

    /// Judges `request`; an admin's `from` becomes its key's name (admins
    /// do not register: their name is their key's).
    pub fn judge(&mut self, request: &mut Request) -> Judged {
        if let Some(auth) = &request.auth {
            // Late messages of a revoked key's connections (a new connection
            // of the key is an enrollee's, and may ask to be enrolled again).
            if matches!(auth.standing, Standing::Known(_)) && self.revoked.contains_key(&auth.key) {
                self.metrics.refused(Refusal::RevokedKey);
                if self.writes(request, "dropped") {
                    debug!(self.log, "message from a revoked key dropped";
                        "type" => request.message.message_type(), "name" => auth.name_or_dash(), "key" => &auth.key);
                    self.write_audit(request, &summary(request), "dropped: revoked key".into());
                }
                return Judged::Dropped;
            }
        }
        match authorize(&request.message, request.auth.as_deref(), self.curve) {
            Verdict::Request(kind) => {
                self.metrics.requests_in.inc();
                if let Some(auth) = request.auth.as_ref().filter(|a| a.is_admin()) {
                    request.message.metadata.from = auth.name_or_dash().to_owned();
                }
                Judged::Request(kind)
            }
            // The socket thread routes answers (or drops those nobody
            // awaits) before they would reach here.
            Verdict::Answer(_) => {
                self.metrics.answers_in.inc();
                debug!(self.log, "answer not routed by the socket thread dropped";
                    "uuid" => request.message.uuid(), "from" => &request.message.metadata.from);
                Judged::Dropped
            }
            Verdict::Drop(reason) => {
                self.metrics.refused(Refusal::of(reason));
                if self.writes(request, "dropped") {
                    let m = &request.message;
                    warn!(self.log, "{} dropped", reason;
                        "type" => m.message_type(), "uuid" => m.uuid(), "claimed" => &m.metadata.from,
                        "name" => request.name(), "key" => request.key(), "address" => request.address());
                    self.write_audit(request, &summary(request), format!("dropped: {reason}"));
                }
                Judged::Dropped
            }
            Verdict::Refuse(reason) => {
                self.metrics.requests_in.inc();
                self.metrics.refused(Refusal::of(&reason));
                if self.writes(request, "refused") {
                    let m = &request.message;
                    warn!(self.log, "unauthorized command refused: {}", reason;
                        "type" => m.message_type(), "uuid" => m.uuid(), "key" => request.key(),
                        "name" => request.name(), "address" => request.address());
                    self.write_audit(request, &summary(request), format!("refused: {reason}"));
                }
                Judged::Refused(reason)
            }
        }
    }

    /// The audit line of an admitted request, before it is carried out.
    /// Under `audit_fail_closed`, a line that cannot be written stops it.
    pub fn admit(&mut self, request: &Request, arguments: &Value) -> Result<(), AuditFailed> {
        match self.audit.write(&line(request, arguments, "accepted".into())) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.audit_error(request, &e);
                if self.fail_closed {
                    self.metrics.refused(Refusal::AuditLog);
                    Err(AuditFailed(e))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The audit line of a request refused after the gate judged it (its
    /// arguments were read).
    pub fn refused(&mut self, request: &Request, arguments: &Value, reason: &str) {
        self.write_audit(request, arguments, format!("refused: {reason}"));
    }

    /// A key was revoked: its late messages are dropped.
    pub fn revoked(&mut self, key: &str) {
        self.revoked.insert(key.to_owned(), Instant::now());
    }

    /// Whether `key` was revoked lately (this server's own revocations come
    /// back through a cluster's watch).
    pub fn was_revoked(&self, key: &str) -> bool {
        self.revoked.contains_key(key)
    }

    /// A revoked key was accepted again: it speaks again.
    pub fn accepted_again(&mut self, key: &str) {
        self.revoked.remove(key);
    }

    pub fn reopen_audit(&mut self) {
        if let Err(e) = self.audit.reopen() {
            error!(self.log, "cannot reopen the audit log"; "log" => self.audit.describe(), "error" => %e);
        }
    }

    /// Once a second: the counts of the windows that ended, one line each
    /// in both logs, and the revocations past their grace forgotten.
    pub fn tick(&mut self) {
        self.revoked.retain(|_, at| at.elapsed() < REVOKED_GRACE);
        for s in self.refusals.ended() {
            let mut parts = s.source.splitn(4, ' ');
            let (key, address) = (parts.next().unwrap_or("-"), parts.next().unwrap_or("-"));
            let (what, kind) = (parts.next().unwrap_or("-"), parts.next().unwrap_or("-"));
            warn!(self.log, "more refusals of this key and address were left out of the log";
                "key" => key, "address" => address, "decision" => what, "type" => kind, "refused" => s.count,
                "over_seconds" => s.seconds);
            let line = AuditLine {
                time: audit::now(),
                uuid: "-",
                name: "-",
                key,
                role: "-",
                address,
                message_type: kind,
                target: "",
                identities: None,
                arguments: Value::Null,
                decision: format!(
                    "{what}: {} more requests from this key and address over {} s, not written one by one \
                     (rate limit)",
                    s.count, s.seconds
                ),
            };
            if let Err(e) = self.audit.write(&line) {
                error!(self.log, "cannot write the audit log"; "log" => self.audit.describe(), "error" => %e);
            }
        }
    }

    /// Whether a refusal (or drop) of `request` is written out: the first
    /// of each decision and known type from its key and address in a
    /// window, so the log still says what a key tried.
    fn writes(&mut self, request: &Request, what: &str) -> bool {
        let kind = Kind::from_wire(request.message.message_type()).map_or("(unknown type)", Kind::wire);
        let source = match &request.auth {
            Some(auth) => format!("{} {} {what} {kind}", auth.key, auth.address),
            None => format!("- peer:{} {what} {kind}", Hex(&request.peer)),
        };
        self.refusals.admit(&source) == Admit::Write
    }

    fn write_audit(&mut self, request: &Request, arguments: &Value, decision: String) {
        if let Err(e) = self.audit.write(&line(request, arguments, decision)) {
            self.audit_error(request, &e);
        }
    }

    fn audit_error(&self, request: &Request, e: &std::io::Error) {
        error!(self.log, "cannot write the audit log"; "log" => self.audit.describe(), "error" => %e,
            "uuid" => request.message.uuid(), "type" => request.message.message_type());
    }
}

/// What a request asked, in summary, when its type is known.
fn summary(request: &Request) -> Value {
    Kind::from_wire(request.message.message_type()).map_or(Value::Null, |k| crate::jobs::arguments(k, &request.message))
}

fn line<'a>(request: &'a Request, arguments: &Value, decision: String) -> AuditLine<'a> {
    let m = &request.message;
    let auth = request.auth.as_deref();
    AuditLine {
        time: audit::now(),
        uuid: m.uuid(),
        name: auth.map_or(m.metadata.from.as_str(), |a| a.name_or_dash()),
        key: request.key(),
        role: auth.map_or("-", |a| a.standing.name()),
        address: request.address(),
        message_type: m.message_type(),
        target: &m.stream,
        identities: m.metadata.custom.get(pantry_shared::filter::IDENTITIES_FIELD),
        arguments: arguments.clone(),
        decision,
    }
}
