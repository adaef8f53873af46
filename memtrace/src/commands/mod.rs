//! One module per subcommand, each with an `execute` that returns the process exit code.

pub mod faults;
pub mod oom;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Faults(args) => faults::execute(args).await,
        Command::Oom(args) => oom::execute(args).await,
    }
}
