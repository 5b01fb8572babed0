//! Man pages and shell completions, generated from the programs' clap
//! definitions (`make install`, the Debian packages): run a program with
//! `PANTRY_GENERATE_DOCS=DIR` and it writes them under DIR and exits.

use std::path::{Path, PathBuf};

/// The directory asked for, if any.
pub fn requested() -> Option<PathBuf> {
    std::env::var_os("PANTRY_GENERATE_DOCS").map(PathBuf::from)
}

/// Writes `DIR/man/man1/NAME.1` and bash, zsh and fish completions under
/// `DIR/completions/`.
pub fn write(mut command: clap::Command, dir: &Path) -> std::io::Result<()> {
    use clap_complete::Shell;
    let name = command.get_name().to_owned();
    let man = dir.join("man/man1");
    std::fs::create_dir_all(&man)?;
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    std::fs::write(man.join(format!("{name}.1")), page)?;
    for (shell, sub) in [(Shell::Bash, "bash"), (Shell::Zsh, "zsh"), (Shell::Fish, "fish")] {
        let out = dir.join("completions").join(sub);
        std::fs::create_dir_all(&out)?;
        clap_complete::generate_to(shell, &mut command, &name, &out)?;
    }
    Ok(())
}

/// For a program's `main`: generates and exits if asked to.
pub fn generate_if_requested(command: impl FnOnce() -> clap::Command) {
    if let Some(dir) = requested() {
        match write(command(), &dir) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("cannot write man page and completions to {}: {e}", dir.display());
                std::process::exit(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_man_page_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = clap::Command::new("pantry-demo").about("demo").arg(clap::Arg::new("config").long("config"));
        write(cmd, dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("man/man1/pantry-demo.1")).unwrap();
        assert!(page.contains("pantry\\-demo") && page.contains("config"), "{page}");
        assert!(dir.path().join("completions/bash/pantry-demo.bash").exists());
        assert!(dir.path().join("completions/zsh/_pantry-demo").exists());
        assert!(dir.path().join("completions/fish/pantry-demo.fish").exists());
    }
}
