//! The `memtrace` binary: parse the command line, run one subcommand, and turn the outcome into
//! one clear line and an exit code (table in `docs/exit-codes.md`).

use std::process::ExitCode;

use clap::Parser as _;
use memtrace::{
    cli::Cli,
    commands,
    error::{exit_code, failure_of},
    output,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // --help and --version are not failures.
            return ExitCode::from(if err.use_stderr() {
                exit_code::USAGE
            } else {
                exit_code::OK
            });
        }
    };
    init_logging(cli.verbose);

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("memtrace: cannot start the runtime: {err}");
            return ExitCode::from(exit_code::RUNTIME);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`memtrace ... | head`): nothing more to say to anyone.
        Err(err) if output::is_closed(&err) => ExitCode::from(exit_code::OK),
        Err(err) => match failure_of(&err) {
            Some(failure) => {
                eprintln!("memtrace: {failure}");
                if let Some(details) = failure.details() {
                    log::info!("{details}");
                }
                log::debug!("{err:?}");
                ExitCode::from(failure.exit_code())
            }
            None => {
                eprintln!("memtrace: {err:#}");
                ExitCode::from(exit_code::RUNTIME)
            }
        },
    }
}

/// `-v` shows memtrace's and its kernel programs' info, `-vv` their debug, `-vvv` also the
/// loader's (aya) debug; RUST_LOG, when set, wins. Warnings are always shown.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "warn,memtrace=info,memtrace_ebpf=info",
        2 => "warn,memtrace=debug,memtrace_ebpf=debug",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp(None)
        .format_target(false)
        .init();
}
