//! memtrace's kernel objects, embedded in this binary: loading one with its configuration set
//! before load (globals the verifier sees as constants, table sizes chosen by the command),
//! attaching its programs, reading its maps and rings (`ring`: one type for every ring buffer).
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
pub mod ring;
pub mod stacks;
pub mod syscalls;
pub mod targets;
pub mod tracepoints;

use std::io;

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader};
use log::LevelFilter;
use memtrace_common::objects;
use tokio::io::{Interest, unix::AsyncFd};

use crate::sys::refusal::kernel_refusal;

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
