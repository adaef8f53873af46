//! Overhead benchmarks (filled in below).

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// A short run (under two minutes) with fewer rounds
    #[arg(long)]
    pub quick: bool,
}

pub fn run(_args: &BenchArgs) -> Result<()> {
    anyhow::bail!("not yet")
}
