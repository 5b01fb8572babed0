//! `app:show` and `edit`: an application's config, shown or edited in `$EDITOR` (saved only if changed and valid YAML).

use crate::session::{Outcome, Session};
use anyhow::{anyhow, bail, Context as _};
use pantry_shared::commands::app_config::*;
use pantry_shared::message::{BodyPart, Message};
use serde_json::Value;
use std::io::Write as _;

use crate::session::{Admin, Wait};

/// Print the configuration of the application given with -a.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub wait: Wait,
}

/// Edit the configuration of the application given with -a in $EDITOR;
/// saved only when changed and valid YAML.
#[derive(clap::Args, Debug)]
pub struct EditArgs {
    #[command(flatten)]
    pub wait: Wait,
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
        assert!(e.at.is_some() && e.to_string().contains("line") && e.to_string().contains("column"), "{e}");
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
