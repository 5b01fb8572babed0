//! `app:show` and `edit`: each application's configuration, kept by the
//! server in `root_dir/applications/NAME/config.yml`.
//!
//! `app:show` asks the server for the file and prints it. `edit` fetches it
//! the same way, opens it in `$EDITOR`, and sends it back only when it
//! changed and is valid YAML; the server checks again and replaces the file
//! atomically.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;

use crate::error::DecodeError;
use crate::filter::ClientFilter;
use crate::keys::write_atomically;
use crate::message::{BodyPart, Message};
use crate::session::{Outcome, Session};

use super::{Admin, Rule, RunsOn, Senders, Wait};

pub const SHOW_TYPE: &str = "ShowApplication";
pub const EDIT_TYPE: &str = "EditApplication";

pub const SHOW_RULE: Rule =
    Rule { wire: SHOW_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

pub const EDIT_RULE: Rule =
    Rule { wire: EDIT_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };

/// Print the configuration of the application given with -a.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub wait: Wait,
}

/// Admin: ask for an application's config.
pub fn show_request(application: &str) -> Message {
    let mut m = Message::new(SHOW_TYPE);
    m.metadata.requires_response = true;
    m.metadata.custom.insert("application".into(), Value::String(application.into()));
    m
}

/// Edit the configuration of the application given with -a in $EDITOR;
/// saved only when changed and valid YAML.
#[derive(clap::Args, Debug)]
pub struct EditArgs {
    #[command(flatten)]
    pub wait: Wait,
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
    ClientFilter::check_name("application", name).map_err(bad)?;
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
        check_yaml(text)?;
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

impl Admin for ShowArgs {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let application = session.filter.application.clone().context("app:show needs -a/--application NAME")?;
        let response = session.ask_server(show_request(&application))?;
        match config_text(&response) {
            Some(text) => print!("{text}"),
            None => bail!("application {application} has no config yet (create one with `-a {application} edit`)"),
        }
        Ok(Outcome::Done)
    }
}

impl Admin for EditArgs {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    /// Admin: fetch, open in $EDITOR, check, save if changed.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let application = session.filter.application.clone().context("edit needs -a/--application NAME")?;
        let response = session.ask_server(show_request(&application))?;
        let before = config_text(&response).unwrap_or_default();
        let mut file = tempfile::Builder::new().prefix(&format!("pantry-{application}-")).suffix(".yml").tempfile()?;
        file.write_all(before.as_bytes())?;
        file.flush()?;
        let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
        // Through the shell, so EDITOR may carry arguments ("code --wait").
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("pantry-edit")
            .arg(file.path())
            .status()
            .with_context(|| format!("cannot run the editor `{editor}`"))?;
        if !status.success() {
            bail!("the editor `{editor}` failed ({status}); nothing saved");
        }
        let after = std::fs::read_to_string(file.path()).context("cannot read the edited file")?;
        if after == before {
            eprintln!("no changes; nothing saved");
            return Ok(Outcome::Done);
        }
        check_yaml(&after).map_err(|e| anyhow!("{e}; nothing saved"))?;
        // The edit may have taken long: give the save its own wait.
        session.deadline.restart();
        session.ask_server(edit_request(&application, &after))?;
        eprintln!("saved the config of {application}");
        Ok(Outcome::Done)
    }
}

/// Admin: the config text, or `None` when the application has none yet.
pub fn config_text(response: &Message) -> Option<String> {
    match response.metadata.custom.get("exists") {
        Some(Value::Bool(false)) => None,
        _ => Some(response.body.first().and_then(BodyPart::as_text).unwrap_or_default().to_owned()),
    }
}

/// Whether `text` is valid YAML; the error names the line and column.
pub fn check_yaml(text: &str) -> Result<(), String> {
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.location() {
            Some(at) => format!("invalid YAML at line {}, column {}: {e}", at.line(), at.column()),
            None => format!("invalid YAML: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_edit_show() {
        let root = tempfile::tempdir().unwrap();
        let shown = respond_show(&show_request("web"), root.path());
        assert_eq!(config_text(&shown), None);
        let saved = respond_edit(&edit_request("web", "port: 80\n"), root.path());
        assert_eq!(saved.error(), None);
        let shown = respond_show(&show_request("web"), root.path());
        assert_eq!(config_text(&shown).as_deref(), Some("port: 80\n"));
    }

    #[test]
    fn invalid_yaml_is_refused_with_its_position() {
        let root = tempfile::tempdir().unwrap();
        let e = check_yaml("a: [1, 2\nb: }").unwrap_err();
        assert!(e.contains("line") && e.contains("column"), "{e}");
        let refused = respond_edit(&edit_request("web", "a: [1"), root.path());
        assert!(refused.error().is_some());
        assert!(!config_path(root.path(), "web").exists());
    }

    #[test]
    fn names_cannot_escape_the_directory() {
        for bad in ["../x", "a/b", "..", ""] {
            assert!(application(&show_request(bad)).is_err(), "{bad}");
        }
    }
}
