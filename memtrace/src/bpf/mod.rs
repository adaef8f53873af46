//! Loading memtrace's kernel programs, embedded in this binary, with their configuration set as
//! globals before load; and turning the kernel's refusals into errors a user can act on.
//!
//! Only the programs a command attaches are ever loaded into the kernel. Every program, link and
//! map is owned by file descriptors of this process, never pinned: whatever way memtrace ends,
//! even SIGKILL, the kernel releases them with the process.

pub mod faults;
pub mod oom;
pub mod syscalls;
pub mod targets;

use std::{error::Error as StdError, io};

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader};
use log::LevelFilter;
use tokio::io::{Interest, unix::AsyncFd};

use crate::error::Failure;

/// The kernel programs, built by `build.rs` from the `memtrace-ebpf` crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));

/// Values for the programs' global variables, set before load so the verifier sees constants.
#[derive(Default)]
pub struct Globals(Vec<(&'static str, Vec<u8>)>);

impl Globals {
    pub fn u32(&mut self, name: &'static str, value: u32) -> &mut Self {
        self.0.push((name, value.to_ne_bytes().to_vec()));
        self
    }

    pub fn bytes(&mut self, name: &'static str, value: &[u8]) -> &mut Self {
        self.0.push((name, value.to_vec()));
        self
    }
}

/// Parses the embedded object and creates its maps, with `globals` applied.
pub fn load(globals: &Globals) -> anyhow::Result<Ebpf> {
    let level = kernel_log_level();
    let mut loader = EbpfLoader::new();
    // Absent when no program logs; kernel-side logging stays off unless `-v` or RUST_LOG asks.
    loader.override_global("AYA_LOG_LEVEL", &level, false);
    for (name, bytes) in &globals.0 {
        loader.override_global(name, bytes.as_slice(), true);
    }
    loader
        .load(OBJECT)
        .map_err(|err| kernel_refusal(err, "load memtrace's BPF object"))
}

/// The aya-log level the kernel programs format messages at: 0 (none) unless the userspace
/// logger would show them.
fn kernel_log_level() -> u8 {
    match log::max_level() {
        LevelFilter::Off => 0,
        LevelFilter::Error => 1,
        LevelFilter::Warn => 2,
        LevelFilter::Info => 3,
        LevelFilter::Debug => 4,
        LevelFilter::Trace => 5,
    }
}

/// Forwards kernel-side aya-log records to the userspace logger, when logging is on.
pub fn forward_kernel_logs(ebpf: &mut Ebpf) {
    if kernel_log_level() == 0 {
        return;
    }
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            log::debug!("no kernel-side log records: {err}");
            return;
        }
    };
    // SAFETY: the AsyncFd owns the logger, and with it the ring buffer's descriptor.
    let Ok(mut logger) = (unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) })
    else {
        return;
    };
    tokio::spawn(async move {
        while let Ok(mut ready) = logger.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
}

/// Wraps a kernel error with `action` as context, recognising a missing privilege so that
/// `main` reports it as such.
pub fn kernel_refusal<E>(err: E, action: &str) -> anyhow::Error
where
    E: StdError + Send + Sync + 'static,
{
    if os_error(&err).is_some_and(|code| code == libc::EPERM || code == libc::EACCES) {
        let failure = Failure::NotPrivileged {
            missing: format!("the kernel refused to {action}"),
        };
        return anyhow::Error::new(err).context(failure);
    }
    anyhow::Error::new(err).context(action.to_owned())
}

/// The OS error code at the root of an error chain, if any.
fn os_error(err: &(dyn StdError + 'static)) -> Option<i32> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(code) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = err.source();
    }
    None
}

/// The outcome of deleting a map entry, where an entry already gone counts as deleted (aya
/// reports that as `KeyNotFound` or as the syscall's ENOENT, depending on the map type).
pub fn deleted(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(err))
            if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Looks up a program by name, failing with the name if the object lacks it.
pub fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("the BPF object has no program {name}"))?;
    program
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}
