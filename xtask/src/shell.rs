//! Running commands with their invocation echoed, and failing with it when they fail.

use std::{
    ffi::{OsStr, OsString},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub struct Cmd {
    command: Command,
    shown: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        let mut command = Command::new(program.as_ref());
        command.current_dir(workspace_root());
        Cmd {
            command,
            shown: program.as_ref().to_string_lossy().into_owned(),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self.shown.push(' ');
            self.shown.push_str(&arg.as_ref().to_string_lossy());
            self.command.arg(arg);
        }
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Cmd {
        self.command.env(key, value.into());
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<std::path::Path>) -> Cmd {
        self.command.current_dir(dir);
        self
    }

    pub fn arg_version(self) -> Cmd {
        self.args(["--version"])
    }

    /// Runs to completion, inheriting stdio; fails on a non-zero exit.
    pub fn run(mut self) -> Result<()> {
        eprintln!("+ {}", self.shown);
        let status = self
            .command
            .status()
            .with_context(|| format!("start `{}`", self.shown))?;
        if !status.success() {
            bail!("`{}` failed ({status})", self.shown);
        }
        Ok(())
    }

    /// Runs quietly and returns stdout; fails on a non-zero exit.
    pub fn output(mut self) -> Result<String> {
        let output = self
            .command
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("start `{}`", self.shown))?;
        if !output.status.success() {
            bail!("`{}` failed ({})", self.shown, output.status);
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Whether it runs and exits 0, quietly.
    pub fn succeeds(mut self) -> bool {
        self.command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Replaces this process (so signals and the exit code are the program's own).
    pub fn replace_process(mut self) -> Result<()> {
        use std::os::unix::process::CommandExt as _;
        let err = self.command.exec();
        Err(err).with_context(|| format!("exec `{}`", self.shown))
    }
}
