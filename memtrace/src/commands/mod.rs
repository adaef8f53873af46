//! One module per subcommand, each with an `execute` that returns the process exit code.

pub mod faults;
pub mod lifecycle;
pub mod oom;
pub mod serve;
pub mod trace;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Faults(args) => faults::execute(args).await,
        Command::Trace(args) => trace::execute(args).await,
        Command::Oom(args) => oom::execute(args).await,
        Command::Serve(args) => serve::execute(args).await,
    }
}
