//! Ctrl-C while a command waits for its agents. On a terminal the operator
//! is asked what to do with the job (`cancel job ID on N running agents?
//! [y/N/d(etach)]`); without one, SIGINT cancels the job and SIGTERM
//! detaches from it (the job goes on, `pantry-admin job ID` shows it).
//!
//! The handlers only set a flag; the waits ([`crate::connection`]) check it
//! between polls (a signal interrupts the poll) and return [`Interrupted`].

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Result;

/// The flags the signal handlers set.
struct Flags {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

/// Installs the handlers: from now on SIGINT and SIGTERM no longer end the
/// admin, they interrupt its wait. Called by commands that start a job.
pub fn install() -> Result<()> {
    if FLAGS.get().is_some() {
        return Ok(());
    }
    let flags = Flags { int: Arc::new(AtomicBool::new(false)), term: Arc::new(AtomicBool::new(false)) };
    signal_hook::flag::register(signal_hook::consts::SIGINT, flags.int.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, flags.term.clone())?;
    let _ = FLAGS.set(flags);
    Ok(())
}

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
}

/// Whether a signal arrived since the last [`take`] (without taking it).
pub fn pending() -> bool {
    FLAGS.get().is_some_and(|f| f.int.load(Ordering::SeqCst) || f.term.load(Ordering::SeqCst))
}

/// The signal that arrived, if any, cleared.
pub fn take() -> Option<Signal> {
    let flags = FLAGS.get()?;
    if flags.term.swap(false, Ordering::SeqCst) {
        flags.int.store(false, Ordering::SeqCst);
        return Some(Signal::Term);
    }
    flags.int.swap(false, Ordering::SeqCst).then_some(Signal::Int)
}

/// A wait ended by a signal: the command decides what becomes of its job.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// What the operator wants done with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Cancel,
    /// Go on waiting.
    Wait,
    /// Leave: the job goes on.
    Detach,
}

/// Asks on the terminal (stdin and stderr both one), else follows the
/// signal: SIGINT cancels, SIGTERM detaches.
pub fn choose(signal: Signal, job: &str, running: usize) -> Choice {
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return match signal {
            Signal::Int => Choice::Cancel,
            Signal::Term => Choice::Detach,
        };
    }
    if signal == Signal::Term {
        return Choice::Detach;
    }
    eprint!("\ncancel job {job} on {running} running agents? [y/N/d(etach)] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return Choice::Wait;
    }
    // A second Ctrl-C while asked is not an answer.
    take();
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Choice::Cancel,
        "d" | "detach" => Choice::Detach,
        _ => Choice::Wait,
    }
}
