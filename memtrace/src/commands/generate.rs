//! `memtrace generate man|completions DIR` (hidden): the man pages and shell completions, made
//! from the clap definitions themselves, so they can never disagree with `--help`.

use std::fs;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::{
    cli::{Cli, GenerateArgs, Generated},
    error::exit_code,
};

pub fn execute(args: &GenerateArgs) -> anyhow::Result<u8> {
    fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let command = Cli::command();
    match args.what {
        Generated::Man => clap_mangen::generate_to(command, &args.dir)
            .with_context(|| format!("write the man pages into {}", args.dir.display()))?,
        Generated::Completions => {
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut command.clone(), "memtrace", &args.dir)
                    .with_context(|| {
                        format!("write the {shell} completions into {}", args.dir.display())
                    })?;
            }
        }
    }
    Ok(exit_code::OK)
}
