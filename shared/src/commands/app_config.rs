//! `app:show` and `edit`: each application's configuration, kept by the
//! server in `root_dir/applications/NAME/config.yml`.
//!
//! `app:show` asks the server for the file and prints it. `edit` fetches it
//! the same way, opens it in `$EDITOR`, and sends it back only when it
//! changed and is valid YAML; the server checks again and replaces the file
//! atomically.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::DecodeError;
use crate::filter::ClientFilter;
use crate::keys::write_atomically;
use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

pub const SHOW_TYPE: &str = "ShowApplication";
pub const EDIT_TYPE: &str = "EditApplication";

pub const SHOW_RULE: Rule =
    Rule { wire: SHOW_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

pub const EDIT_RULE: Rule =
    Rule { wire: EDIT_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };

/// Admin: ask for an application's config.
pub fn show_request(application: &str) -> Message {
    let mut m = Message::new(SHOW_TYPE);
    m.metadata.requires_response = true;
    m.metadata.custom.insert("application".into(), Value::String(application.into()));
    m
}

/// Admin: save a new config (already checked with [`check_yaml`]).
pub fn edit_request(application: &str, config: &str) -> Message {
    let mut m = Message::new(EDIT_TYPE);
    m.metadata.requires_response = true;
    m.metadata.custom.insert("application".into(), Value::String(application.into()));
    m.body.push(BodyPart::Text(config.into()));
    m
}

/// Server: the application named by a request, checked to be a safe
/// directory name.
pub fn application(request: &Message) -> Result<String, DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: request.message_type().into(), reason };
    let name = request
        .metadata
        .custom
        .get("application")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no application".into()))?;
    ClientFilter::check_name("application", name).map_err(|e| bad(e.to_string()))?;
    if name.contains('/') || name == ".." {
        return Err(bad(format!("application `{name}` may not contain `/` or be `..`")));
    }
    Ok(name.to_owned())
}

/// Where the server keeps an application's config.
pub fn config_path(root_dir: &Path, application: &str) -> PathBuf {
    root_dir.join("applications").join(application).join("config.yml")
}

/// Server: the answer to `app:show` (and the start of `edit`). A missing
/// file is answered with `custom.exists: false` and no body.
pub fn respond_show(request: &Message, root_dir: &Path) -> Message {
    let mut response = request.response();
    match application(request) {
        Err(e) => response.set_error(e.to_string()),
        Ok(name) => match std::fs::read_to_string(config_path(root_dir, &name)) {
            Ok(text) => {
                response.metadata.custom.insert("exists".into(), Value::Bool(true));
                response.body.push(BodyPart::Text(text));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                response.metadata.custom.insert("exists".into(), Value::Bool(false));
            }
            Err(e) => response.set_error(format!("cannot read the config of {name}: {e}")),
        },
    }
    response
}

/// Server: check and save a new config, then answer.
pub fn respond_edit(request: &Message, root_dir: &Path) -> Message {
    let mut response = request.response();
    let saved = application(request).map_err(|e| e.to_string()).and_then(|name| {
        let text = request.body.first().and_then(BodyPart::as_text).ok_or("no config text")?;
        check_yaml(text).map_err(|e| e.to_string())?;
        let path = config_path(root_dir, &name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        write_atomically(&path, text.as_bytes()).map_err(|e| e.to_string())
    });
    if let Err(e) = saved {
        response.set_error(e);
    }
    response
}

/// Whether `text` is valid YAML; the error names the line and column.
pub fn check_yaml(text: &str) -> Result<(), YamlError> {
    serde_yaml::from_str::<serde_yaml::Value>(text)
        .map(|_| ())
        .map_err(|e| YamlError { at: e.location().map(|at| (at.line(), at.column())), reason: e.to_string() })
}

/// Where and why a config is not YAML.
#[derive(Debug, thiserror::Error)]
pub struct YamlError {
    /// Line and column.
    pub at: Option<(usize, usize)>,
    pub reason: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "invalid YAML at line {line}, column {column}: {}", self.reason),
            None => write!(f, "invalid YAML: {}", self.reason),
        }
    }
}
