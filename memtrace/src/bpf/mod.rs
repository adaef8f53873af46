//! memtrace's kernel objects, embedded in this binary: loading one with its configuration set
//! before load (globals the verifier sees as constants, table sizes chosen by the command),
//! attaching its programs, reading its maps; and turning the kernel's refusals into errors a user
//! can act on.
//!
//! Each hook family is its own object (`memtrace_common::objects`), so a command creates only
//! the maps of the families it uses, and only the programs it attaches are ever loaded into the
//! kernel. Every program, link and map is owned by file descriptors of this process, never
//! pinned: whatever way memtrace ends, even SIGKILL, the kernel releases them with the process.

pub mod allocs;
pub mod attribution;
pub mod drops;
pub mod faults;
pub mod kernel;
pub mod oom;
pub mod pressure;
pub mod release;
pub mod stacks;
pub mod syscalls;
pub mod targets;
pub mod tracepoints;

use std::{error::Error as StdError, io};

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader};
use log::LevelFilter;
use memtrace_common::objects;
use tokio::io::{Interest, unix::AsyncFd};

use crate::error::Failure;

/// One of the kernel objects `build.rs` builds from the `memtrace-ebpf` crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Faults,
    Syscalls,
    Oom,
    Pressure,
    Attribution,
    Allocs,
}

impl Object {
    pub fn name(self) -> &'static str {
        match self {
            Object::Faults => objects::FAULTS,
            Object::Syscalls => objects::SYSCALLS,
            Object::Oom => objects::OOM,
            Object::Pressure => objects::PRESSURE,
            Object::Attribution => objects::ATTRIBUTION,
            Object::Allocs => objects::ALLOCS,
        }
    }

    fn bytes(self) -> &'static [u8] {
        match self {
            Object::Faults => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/faults")),
            Object::Syscalls => {
                aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/syscalls"))
            }
            Object::Oom => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oom")),
            Object::Pressure => {
                aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pressure"))
            }
            Object::Attribution => {
                aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/attribution"))
            }
            Object::Allocs => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/allocs")),
        }
    }
}

/// What a command sets before an object is loaded: values of its globals (constants to the
/// verifier, so a disabled feature's code is pruned) and the sizes of its tables.
#[derive(Default)]
pub struct Config {
    globals: Vec<(&'static str, Vec<u8>)>,
    sizes: Vec<(&'static str, u32)>,
}

impl Config {
    pub fn u32(&mut self, name: &'static str, value: u32) -> &mut Self {
        self.bytes(name, &value.to_ne_bytes())
    }

    pub fn bytes(&mut self, name: &'static str, value: &[u8]) -> &mut Self {
        self.globals.push((name, value.to_vec()));
        self
    }

    /// Sets a map's capacity (entries; bytes for a ring buffer). A table the command does not
    /// use gets the smallest size the kernel accepts: 1 entry, or one page of ring.
    pub fn size(&mut self, map: &'static str, entries: u32) -> &mut Self {
        self.sizes.push((map, entries));
        self
    }
}

/// A loaded object and the classic tracepoints it attached. Its other attachments (raw
/// tracepoints, perf events) belong to the object itself and detach at once when it is dropped.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub tracepoints: tracepoints::Tracepoints,
}

impl Loaded {
    /// Detaches every program and releases everything, without waiting on the kernel's slow
    /// release of tracepoint events unless `how` says so (`tracepoints`).
    pub fn release(self, how: tracepoints::Release) {
        let Loaded { ebpf, tracepoints } = self;
        tracepoints.release(how);
        drop(ebpf);
    }
}

/// Smallest ring buffer the kernel accepts: one page.
pub const MIN_RING_BYTES: u32 = 4096;

/// Parses one embedded object and creates its maps, with `config` applied.
pub fn load(object: Object, config: &Config) -> anyhow::Result<Ebpf> {
    let started = std::time::Instant::now();
    lift_memlock_limit();
    let level = kernel_log_level();
    let mut loader = loader_without_kernel_btf();
    // Absent when no program logs. The programs log only at debug level: below it (unless
    // `-vv` or RUST_LOG asks) they send nothing, and their ring buffer is as small as the kernel
    // allows.
    loader.override_global("AYA_LOG_LEVEL", &level, false);
    if level < KERNEL_LOG_DEBUG {
        loader.map_max_entries("AYA_LOGS", MIN_RING_BYTES);
    }
    for (name, bytes) in &config.globals {
        loader.override_global(name, bytes.as_slice(), true);
    }
    for &(map, entries) in &config.sizes {
        loader.map_max_entries(map, entries);
    }
    // Kernels before 6.1 want tracing programs' hash maps whole from the start.
    let patched;
    let bytes = if kernel::hash_maps_preallocated() {
        patched = preallocated(object.bytes())
            .with_context(|| format!("prepare memtrace's {} object", object.name()))?;
        patched.bytes()
    } else {
        object.bytes()
    };
    let ebpf = loader
        .load(bytes)
        .map_err(|err| kernel_refusal(err, &format!("load memtrace's {} object", object.name())))?;
    log::debug!(
        "created the {} object's maps in {:.1} ms",
        object.name(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(ebpf)
}

/// An object's bytes, 8-byte aligned (the ELF parser reads them in place).
struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the words hold `len` initialized bytes, and u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// A copy of an object whose maps (legacy `maps` definitions: type, key size, value size,
/// entries, flags, id, pinning) lose `BPF_F_NO_PREALLOC`.
fn preallocated(elf: &[u8]) -> anyhow::Result<AlignedObject> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    /// `map_flags` in `struct bpf_map_def`, and the definition's size.
    const FLAGS_AT: usize = 16;
    const DEFINITION: usize = 28;
    const BPF_F_NO_PREALLOC: u32 = 1;
    let mut words = vec![0u64; elf.len().div_ceil(8)];
    // SAFETY: the words have room for `elf.len()` bytes.
    let copy =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), elf.len()) };
    copy.copy_from_slice(elf);
    let file = object::File::parse(elf).context("parse the object")?;
    let Some(section) = file.section_by_name("maps") else {
        return Ok(AlignedObject {
            words,
            len: elf.len(),
        });
    };
    let (start, size) = section
        .file_range()
        .context("the maps section has no data")?;
    for symbol in file.symbols() {
        if symbol.section_index() != Some(section.index()) || symbol.size() < DEFINITION as u64 {
            continue;
        }
        let at = symbol.address() as usize;
        if at + DEFINITION > size as usize {
            anyhow::bail!("a map's definition lies outside the maps section");
        }
        let flags = &mut copy[start as usize + at + FLAGS_AT..][..4];
        let value = u32::from_ne_bytes((*flags).try_into().unwrap()) & !BPF_F_NO_PREALLOC;
        flags.copy_from_slice(&value.to_ne_bytes());
    }
    Ok(AlignedObject {
        words,
        len: elf.len(),
    })
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK` (often 8 MiB, less than `trace`'s
/// ring buffer) rather than to the memory cgroup: the limit is lifted once, as root may. Newer
/// kernels ignore it, and without the privilege to lift it the maps are tried anyway.
fn lift_memlock_limit() {
    static LIFTED: std::sync::Once = std::sync::Once::new();
    LIFTED.call_once(|| {
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: a valid rlimit we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
            log::debug!(
                "RLIMIT_MEMLOCK stays as it is ({}): kernels before 5.11 count BPF maps against it",
                io::Error::last_os_error()
            );
        }
    });
}

/// A loader that relocates nothing against the kernel's BTF, which memtrace's programs do not
/// need, and that has not parsed it either.
///
/// `EbpfLoader::new()` (aya 0.14) always parses `/sys/kernel/btf/vmlinux` (5.5 MB), which took
/// ~50 ms of a fresh process here: most of `memtrace oom`'s start-up. It has no constructor
/// without that parse, so for that one call the limit on open files is lowered to the lowest
/// free descriptor: opening the file fails at once (EMFILE), the loader is created without
/// BTF, and the limit is restored. Nothing else runs meanwhile (memtrace has no other thread
/// while it loads). Should the trick not apply, the parse merely happens.
fn loader_without_kernel_btf() -> EbpfLoader<'static> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit we own; F_DUPFD on stdin's number only asks for the
    // lowest free descriptor, which is closed at once.
    let lowered = unsafe {
        let lowest_free = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0);
        if lowest_free >= 0 {
            libc::close(lowest_free);
        }
        lowest_free >= 0
            && libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
            && libc::setrlimit(
                libc::RLIMIT_NOFILE,
                &libc::rlimit {
                    rlim_cur: lowest_free as libc::rlim_t,
                    rlim_max: limit.rlim_max,
                },
            ) == 0
    };
    let mut loader = EbpfLoader::new();
    if lowered {
        // SAFETY: as above; restores what getrlimit read.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
    loader.btf(None);
    loader
}

/// aya-log's level of debug messages, the only ones memtrace's kernel programs write.
const KERNEL_LOG_DEBUG: u8 = 4;

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

/// Wraps a kernel error with `action` as context, turning the refusals a user can act on into a
/// [`Failure`]: a missing privilege (exit 3) or a program the verifier rejected (exit 5). The
/// verifier also answers EACCES, so EACCES alone never means "needs root".
pub fn kernel_refusal<E>(err: E, action: &str) -> anyhow::Error
where
    E: StdError + Send + Sync + 'static,
{
    let privileged = crate::sys::procfs::effective_capabilities()
        .is_ok_and(|caps| crate::sys::privileges::check(caps).is_ok());
    let failure = match classify(&err, privileged) {
        Refusal::NotPrivileged => Failure::NotPrivileged {
            missing: format!("the kernel refused to {action}"),
        },
        Refusal::Rejected { errno, log_tail } => Failure::VerifierRejected {
            program: action.strip_prefix("load ").unwrap_or(action).to_owned(),
            reason: io::Error::from_raw_os_error(errno).to_string(),
            log_tail,
        },
        Refusal::Other => return anyhow::Error::new(err).context(action.to_owned()),
    };
    anyhow::Error::new(err).context(failure)
}

/// What a kernel error means for the user.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Not privileged enough.
    NotPrivileged,
    /// `BPF_PROG_LOAD` failed for another reason than privilege: the verifier rejected the
    /// program (its log's last lines, when it wrote one) or the kernel lacks what it uses.
    Rejected { errno: i32, log_tail: String },
    /// Anything else: reported as it is, with its context.
    Other,
}

/// Lines of the verifier's log kept for `-v`: its verdict is at the end.
const VERIFIER_LOG_LINES: usize = 20;

/// Classifies a kernel error. `privileged`: whether memtrace holds the capabilities it needs.
///
/// - `BPF_PROG_LOAD` (aya's `ProgramError::LoadError`) fails with EPERM *before* the verifier
///   runs when the caller lacks CAP_BPF; any other failure (EACCES or EINVAL from the verifier,
///   E2BIG, ...) or any failure with a verifier log is a rejection of the program.
/// - `perf_event_open` answers EACCES when `perf_event_paranoid` forbids an unprivileged caller;
///   privileged, EACCES there comes from a security policy and is reported as it is.
/// - EPERM from any other call means a missing privilege.
fn classify(err: &(dyn StdError + 'static), privileged: bool) -> Refusal {
    use aya::{programs::ProgramError, sys::SyscallError};

    let mut current = Some(err);
    while let Some(err) = current {
        // `ProgramError::SyscallError` is transparent: its `source()` skips the SyscallError,
        // so it is matched here rather than found further down the chain.
        let syscall = match err.downcast_ref::<ProgramError>() {
            Some(ProgramError::LoadError {
                io_error,
                verifier_log,
            }) => {
                let log = verifier_log.to_string();
                let errno = io_error.raw_os_error().unwrap_or(0);
                if errno == libc::EPERM && log.trim().is_empty() {
                    return Refusal::NotPrivileged;
                }
                return Refusal::Rejected {
                    errno,
                    log_tail: last_lines(&log, VERIFIER_LOG_LINES),
                };
            }
            Some(ProgramError::SyscallError(syscall)) => Some(syscall),
            _ => err.downcast_ref::<SyscallError>(),
        };
        if let Some(syscall) = syscall
            && syscall.call.starts_with("perf_event_open")
            && syscall.io_error.raw_os_error() == Some(libc::EACCES)
            && !privileged
        {
            return Refusal::NotPrivileged;
        }
        current = err.source();
    }
    if os_error(err) == Some(libc::EPERM) {
        Refusal::NotPrivileged
    } else {
        Refusal::Other
    }
}

/// The last `n` non-blank lines of a text.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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

/// One of the object's maps, typed (`HashMap<&MapData, K, V>`, `PerCpuArray<...>`, ...).
pub fn map<'a, T>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map(name)
        .with_context(|| format!("the BPF object has no {name} map"))?;
    T::try_from(map).with_context(|| format!("the {name} map"))
}

/// Every entry of a hash map. An entry deleted between the listing of its key and its reading
/// (a process retired meanwhile) is skipped, not an error.
pub fn entries<K: aya::Pod, V: aya::Pod>(ebpf: &Ebpf, name: &str) -> anyhow::Result<Vec<(K, V)>> {
    let table: aya::maps::HashMap<&aya::maps::MapData, K, V> = map(ebpf, name)?;
    entries_of(&table, name)
}

/// Every entry of a hash map already opened (taken out of its object), as [`entries`] reads
/// them.
pub fn entries_of<T, K, V>(
    table: &aya::maps::HashMap<T, K, V>,
    name: &str,
) -> anyhow::Result<Vec<(K, V)>>
where
    T: std::borrow::Borrow<aya::maps::MapData>,
    K: aya::Pod,
    V: aya::Pod,
{
    let mut entries = Vec::new();
    for entry in table.iter() {
        match entry {
            Ok(entry) => entries.push(entry),
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(err) => return Err(anyhow::Error::new(err).context(format!("read {name}"))),
        }
    }
    Ok(entries)
}

/// Where a task's memory cgroup is, from the kernel's BTF, for programs that record it; `None`
/// (with a warning saying what is lost: `without`) where the kernel has no BTF or lacks a field.
pub fn memcg_layout(without: &str) -> Option<memtrace_common::faults::MemcgLayout> {
    let btf = crate::sys::btf::Btf::from_sys_fs()
        .inspect_err(|err| log::warn!("no kernel BTF ({err}): {without}"))
        .ok()?;
    let layout = faults::memcg_layout(&btf);
    if layout.is_none() {
        log::warn!("the kernel's BTF lacks a field of a task's memory cgroup: {without}");
    }
    layout
}

/// One of the object's maps, typed, for writing.
pub fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("the BPF object has no {name} map"))?;
    T::try_from(map).with_context(|| format!("the {name} map"))
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

/// How many CPUs the kernel may ever run (its `possible` mask): the entries of a table indexed
/// by CPU.
pub fn possible_cpus() -> anyhow::Result<u32> {
    // The highest id plus one: the mask may have holes (`0-3,8-11`).
    const POSSIBLE: &str = "/sys/devices/system/cpu/possible";
    let mask = std::fs::read_to_string(POSSIBLE).with_context(|| format!("read {POSSIBLE}"))?;
    let highest = mask
        .trim()
        .split(',')
        .filter_map(|range| range.rsplit('-').next()?.parse::<u32>().ok())
        .max()
        .with_context(|| format!("{POSSIBLE}: no CPU in `{}`", mask.trim()))?;
    Ok(highest + 1)
}

#[cfg(test)]
mod tests {
    use aya::{programs::ProgramError, sys::SyscallError};
    use aya_obj::VerifierLog;

    use super::*;

    fn load_error(errno: i32, log: &str) -> ProgramError {
        ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(errno),
            verifier_log: VerifierLog::new(log.to_owned()),
        }
    }

    fn syscall_error(call: &'static str, errno: i32) -> ProgramError {
        ProgramError::SyscallError(SyscallError {
            call,
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    const LOG: &str = "func#0 @0\n0: R1=ctx() R10=fp0\n0: (79) r2 = *(u64 *)(r1 +0)\n\n\
                       invalid bpf_context access off=0 size=8\n\
                       processed 1 insns (limit 1000000) max_states_per_insn 0\n";

    #[test]
    fn a_verifier_rejection_is_not_a_missing_privilege() {
        // The verifier answers EACCES: exit 5 with the log's end, never "needs root".
        let refusal = classify(&load_error(libc::EACCES, LOG), true);
        let Refusal::Rejected { errno, log_tail } = refusal else {
            panic!("{refusal:?}");
        };
        assert_eq!(errno, libc::EACCES);
        assert!(log_tail.ends_with("max_states_per_insn 0"), "{log_tail}");
        assert!(log_tail.contains("invalid bpf_context access"));
        // Even unprivileged, a log means the verifier ran.
        assert!(matches!(
            classify(&load_error(libc::EACCES, LOG), false),
            Refusal::Rejected { .. }
        ));
        // Other load failures without a log (E2BIG, EINVAL) are rejections too.
        assert_eq!(
            classify(&load_error(libc::EINVAL, ""), true),
            Refusal::Rejected {
                errno: libc::EINVAL,
                log_tail: String::new()
            }
        );
    }

    #[test]
    fn eperm_at_load_means_not_privileged() {
        assert_eq!(
            classify(&load_error(libc::EPERM, ""), false),
            Refusal::NotPrivileged
        );
        assert_eq!(
            classify(&syscall_error("bpf_map_create", libc::EPERM), false),
            Refusal::NotPrivileged
        );
        let wrapped = anyhow::Error::new(io::Error::from_raw_os_error(libc::EPERM)).context("x");
        assert_eq!(classify(wrapped.as_ref(), true), Refusal::NotPrivileged);
    }

    #[test]
    fn eacces_from_perf_event_open_depends_on_privilege() {
        let err = syscall_error("perf_event_open", libc::EACCES);
        assert_eq!(classify(&err, false), Refusal::NotPrivileged);
        assert_eq!(classify(&err, true), Refusal::Other);
        // EACCES from anything else is never a privilege problem.
        assert_eq!(
            classify(&syscall_error("bpf_link_create", libc::EACCES), false),
            Refusal::Other
        );
        assert_eq!(
            classify(&syscall_error("perf_event_open", libc::ENOENT), false),
            Refusal::Other
        );
    }

    #[test]
    fn a_rejection_is_one_line_with_exit_5_and_the_log_under_v() {
        let err = kernel_refusal(load_error(libc::EACCES, LOG), "load mt_fault_minor");
        let failure = crate::error::failure_of(&err).expect("a Failure");
        assert_eq!(
            failure.exit_code(),
            crate::error::exit_code::KERNEL_UNSUPPORTED
        );
        let line = failure.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("verifier rejected mt_fault_minor") && !line.contains("root"),
            "{line}"
        );
        assert!(
            failure
                .details()
                .is_some_and(|d| d.contains("invalid bpf_context"))
        );
    }

    #[test]
    fn verifier_log_keeps_its_last_lines() {
        let log: String = (1..=50).map(|i| format!("line {i}\n\n")).collect();
        let tail = last_lines(&log, 3);
        assert_eq!(tail, "line 48\nline 49\nline 50");
        assert_eq!(last_lines("", 3), "");
    }
}
