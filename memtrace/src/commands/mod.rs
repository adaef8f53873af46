//! One module per subcommand, each with an `execute` that returns the process exit code: it
//! validates its flags, opens the session (`crate::session`), and runs its job in it.

mod attributed;
mod call_stacks;
pub mod faults;
mod generate;
pub mod leaks;
pub mod oom;
pub mod pressure;
pub mod serve;
pub mod trace;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Faults(args) => faults::execute(args).await,
        Command::Trace(args) => trace::execute(args).await,
        Command::Oom(args) => oom::execute(args).await,
        Command::Pressure(args) => pressure::execute(args).await,
        Command::Serve(args) => serve::execute(args).await,
        Command::Leaks(args) => leaks::execute(args).await,
        Command::Generate(args) => generate::execute(&args),
    }
}
