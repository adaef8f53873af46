//! Faults attributed in the kernel (`faults --by stack|mapping|file`): the `attribution`
//! object, what was learnt of the stacks (or the mappings' names), the per-process sums the
//! rates are made of, and the report at the end.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use memtrace_common::{
    faults::FaultKey,
    stacks::{EventKind, MappingCount, MappingKey},
};

use crate::{
    bpf::{
        self, Loaded,
        attribution::{self, By},
        faults::Sample,
        stacks::SnapshotTables,
        targets::{Filter, TargetTable as _},
    },
    error::Failure,
    model::{
        faults::Counts,
        stacks::{FileRow, MappingRow, StackLosses, StackRow},
    },
    output::{
        Sink, folded,
        mappings::{Files, Mappings},
        pprof::Profile,
        stacks::Stacks as StacksRecord,
    },
    stacks::{
        KernelCounts, Stacks,
        maps::{self, Mapping},
        symbols::Symbols,
    },
    sys::procfs,
};

/// What faults are attributed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    Stack,
    Mapping,
    File,
}

/// Bytes of the ring that carries stacks to memtrace: 32 MiB, about 1600 stacks in flight
/// while memtrace learns them (a program starting up meets thousands in its first second).
const SNAPSHOT_RING_BYTES: u32 = 32 << 20;

/// The object and what was learnt from it.
pub struct Attributed {
    pub loaded: Loaded,
    tables: SnapshotTables,
    by: Attribution,
    stacks: Stacks,
    /// Each process's mappings as last read, to name the mappings the kernel counted.
    mappings: HashMap<u32, Vec<Mapping>>,
    /// Names the kernel recorded when it counted (for processes that exited since).
    comms: HashMap<u32, String>,
    /// Processes retired from the rates (their faults stay for the report).
    retired: HashSet<u32>,
    /// Retired processes whose kernel entries are yet to be taken over and deleted.
    exited: Vec<u32>,
    /// Mappings of processes whose kernel entries were deleted.
    gone_mappings: Vec<(MappingKey, MappingCount)>,
    /// The kernel's counts as last read: the report at the end is made of the same reading as
    /// the summary's totals, so that the two agree while targets go on faulting.
    last: Reading,
}

/// One reading of the kernel's counts.
#[derive(Default)]
struct Reading {
    stacks: KernelCounts,
    mappings: Vec<(MappingKey, MappingCount)>,
}

impl Attributed {
    pub fn load(filter: Filter, by: Attribution, max_stacks: u32) -> anyhow::Result<Attributed> {
        let object_by = match by {
            Attribution::Stack => By::Stack,
            _ => By::Mapping(vma_layout()?),
        };
        let mut loaded = attribution::load(&attribution::Options {
            filter,
            by: object_by,
            max_stacks,
            ring_bytes: SNAPSHOT_RING_BYTES,
        })?;
        let tables = SnapshotTables::open(&mut loaded.ebpf)?;
        Ok(Attributed {
            loaded,
            tables,
            by,
            stacks: Stacks::default(),
            mappings: HashMap::new(),
            comms: HashMap::new(),
            retired: HashSet::new(),
            exited: Vec::new(),
            gone_mappings: Vec::new(),
            last: Reading::default(),
        })
    }

    /// Resolves when the kernel sent stacks (never when attributing to mappings).
    pub async fn readable(&mut self) -> anyhow::Result<()> {
        match self.by {
            Attribution::Stack => self.tables.readable().await,
            _ => std::future::pending().await,
        }
    }

    /// Unwinds the stacks waiting and teaches the kernel to recognise them.
    pub fn drain(&mut self) {
        let Attributed { tables, stacks, .. } = self;
        tables.drain(|record, kernel| {
            stacks.take(record, kernel);
        });
    }

    /// An exited process, read for the last time: out of the rates, and its kernel entries
    /// taken over at the next reading, so that the kernel's tables hold only live processes.
    pub fn retire(&mut self, pid: u32) -> anyhow::Result<()> {
        self.retired.insert(pid);
        if !procfs::is_alive(pid) {
            // Unregistered, so that a new process reusing the pid is not taken for it.
            self.loaded.ebpf.remove(pid)?;
            self.exited.push(pid);
        }
        Ok(())
    }

    /// Takes over the exited processes' counts and deletes their kernel entries: a process that
    /// has exited faults no more.
    fn absorb_exited(&mut self) -> anyhow::Result<()> {
        if self.exited.is_empty() {
            return Ok(());
        }
        let exited: HashSet<u32> = self.exited.drain(..).collect();
        if self.by == Attribution::Stack {
            let all = self.tables.counts()?;
            for &pid in &exited {
                let theirs = KernelCounts {
                    known: all
                        .known
                        .iter()
                        .filter(|(k, _)| k.tgid == pid)
                        .copied()
                        .collect(),
                    pending: all
                        .pending
                        .iter()
                        .filter(|(k, _)| k.tgid == pid)
                        .copied()
                        .collect(),
                };
                let sites = self.stacks.absorb(pid, &theirs);
                self.tables.stacks.forget(&theirs, &sites)?;
            }
        } else {
            let theirs: Vec<(MappingKey, MappingCount)> =
                attribution::mapping_counts(&self.loaded.ebpf)?
                    .into_iter()
                    .filter(|(key, _)| exited.contains(&key.tgid))
                    .collect();
            let keys: Vec<MappingKey> = theirs.iter().map(|(key, _)| *key).collect();
            attribution::forget_mappings(&mut self.loaded.ebpf, &keys)?;
            self.gone_mappings.extend(theirs);
        }
        Ok(())
    }

    /// Every mapping counted: the kernel's, and those of exited processes taken over.
    fn mapping_counts(&self) -> anyhow::Result<Vec<(MappingKey, MappingCount)>> {
        let mut counts = attribution::mapping_counts(&self.loaded.ebpf)?;
        counts.extend(self.gone_mappings.iter().copied());
        Ok(counts)
    }

    /// Each process's faults, every stack or mapping together.
    pub fn samples(&mut self) -> anyhow::Result<Vec<Sample>> {
        self.absorb_exited()?;
        let mut sums: HashMap<u32, Counts> = HashMap::new();
        if self.by == Attribution::Stack {
            self.last.stacks = self.tables.counts()?;
            for process in self.stacks.report(&self.last.stacks) {
                let sum = sums.entry(process.pid).or_default();
                for (_, [minor, major]) in process.stacks {
                    sum.minor += minor;
                    sum.major += major;
                }
            }
        } else {
            self.last.mappings = self.mapping_counts()?;
            for &(key, value) in &self.last.mappings {
                let sum = sums.entry(key.tgid).or_default();
                match EventKind::from_u32(key.kind) {
                    Some(EventKind::MajorFault) => sum.major += value.count,
                    _ => sum.minor += value.count,
                }
                self.comms
                    .entry(key.tgid)
                    .or_insert_with(|| procfs::comm_from_bytes(&value.comm));
            }
            self.read_mappings(sums.keys().copied());
        }
        Ok(sums
            .into_iter()
            .filter(|(pid, _)| !self.retired.contains(pid))
            .map(|(pid, counts)| Sample {
                key: FaultKey { tgid: pid, tid: 0 },
                counts,
                comm: self.comm(pid),
                memcg: 0,
            })
            .collect())
    }

    fn comm(&self, pid: u32) -> String {
        self.stacks
            .comm(pid)
            .map(str::to_owned)
            .or_else(|| self.comms.get(&pid).cloned())
            .unwrap_or_default()
    }

    /// Reads the mappings (and names) of the processes still alive, to name what they fault on
    /// after they have gone.
    fn read_mappings(&mut self, pids: impl Iterator<Item = u32>) {
        for pid in pids {
            if let Ok(mappings) = maps::read(pid)
                && !mappings.is_empty()
            {
                self.mappings.insert(pid, mappings);
                if let Some(comm) = procfs::read_comm(pid, None) {
                    self.comms.insert(pid, comm);
                }
            }
        }
    }

    /// Writes the report (stacks, mappings or files), draws its flame graph and writes the
    /// stacks' profile (of the session's `duration`) if asked.
    pub fn report(
        &mut self,
        sink: &mut Sink,
        flamegraph: Option<&Path>,
        pprof: Option<&Path>,
        duration: Duration,
    ) -> anyhow::Result<()> {
        let (lines, title) = match self.by {
            Attribution::Stack => {
                let report = self.stack_report()?;
                sink.emit(&report)?;
                if let Some(path) = pprof {
                    report.profile().ending_now(duration).write(path)?;
                }
                (report.folded_lines(), "Page faults by stack")
            }
            Attribution::File => {
                let report = self.file_report()?;
                sink.emit(&report)?;
                (report.folded_lines(), "Page faults by file")
            }
            _ => {
                let report = self.mapping_report()?;
                sink.emit(&report)?;
                (report.folded_lines(), "Page faults by mapping")
            }
        };
        if let Some(path) = flamegraph {
            folded::flamegraph(&lines, title, "faults", path)
                .with_context(|| format!("draw the flame graph into {}", path.display()))?;
        }
        Ok(())
    }

    /// Every fault counted so far, by stack, as a pprof profile of the last `duration`.
    pub fn stacks_profile(&mut self, duration: Duration) -> anyhow::Result<Profile> {
        self.samples()?;
        Ok(self.stack_report()?.profile().ending_now(duration))
    }

    /// The `n` busiest stacks counted so far, symbolized, with what could not be unwound.
    pub fn busiest_stacks(&mut self, n: usize) -> anyhow::Result<(Vec<StackRow>, StackLosses)> {
        self.samples()?;
        let mut report = self.stack_report()?;
        report.stacks.truncate(n);
        Ok((report.stacks, report.losses))
    }

    /// The stacks, symbolized, busiest first.
    fn stack_report(&self) -> anyhow::Result<StacksRecord> {
        let processes = self.stacks.report(&self.last.stacks);
        let mut symbols = Symbols::default();
        symbols.resolve(
            self.stacks.modules(),
            processes
                .iter()
                .flat_map(|p| &p.stacks)
                .flat_map(|(id, _)| &self.stacks.stack(*id).frames),
        );
        let mut rows: Vec<StackRow> = processes
            .iter()
            .flat_map(|process| {
                process.stacks.iter().map(|&(id, [minor, major])| StackRow {
                    pid: process.pid,
                    comm: process.comm.clone(),
                    minor,
                    major,
                    stack: self
                        .stacks
                        .stack(id)
                        .frames
                        .iter()
                        .map(|frame| symbols.named(frame))
                        .collect(),
                    complete: self.stacks.stack(id).complete,
                })
            })
            .collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.total()));
        Ok(StacksRecord {
            stacks: rows,
            losses: self.stacks.losses,
            unnamed_frames: symbols.unnamed,
        })
    }

    /// Faults per process and mapping, busiest first.
    fn mapping_report(&mut self) -> anyhow::Result<Mappings> {
        let counts = std::mem::take(&mut self.last.mappings);
        self.read_mappings(counts.iter().map(|(key, _)| key.tgid));
        let mut rows: BTreeMap<(u32, u64, u64, u32, u32), MappingRow> = BTreeMap::new();
        for (key, value) in counts {
            let n = value.count;
            let row = rows
                .entry((key.tgid, key.start, key.ino, key.dev, key.flags))
                .or_insert_with(|| MappingRow {
                    pid: key.tgid,
                    comm: procfs::comm_from_bytes(&value.comm),
                    mapping: self.name(&key, &value),
                    file: key.ino != 0,
                    start: key.start,
                    minor: 0,
                    major: 0,
                });
            match EventKind::from_u32(key.kind) {
                Some(EventKind::MajorFault) => row.major += n,
                _ => row.minor += n,
            }
        }
        let mut rows: Vec<MappingRow> = rows.into_values().collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.minor + row.major));
        Ok(Mappings { mappings: rows })
    }

    /// Faults per file (every process and mapping of it together), most major faults first.
    fn file_report(&mut self) -> anyhow::Result<Files> {
        let counts = std::mem::take(&mut self.last.mappings);
        self.read_mappings(counts.iter().map(|(key, _)| key.tgid));
        let mut rows: BTreeMap<(u32, u64), (FileRow, HashSet<u32>)> = BTreeMap::new();
        let mut anonymous = (0, 0);
        for (key, value) in counts {
            let n = value.count;
            let major = EventKind::from_u32(key.kind) == Some(EventKind::MajorFault);
            if key.ino == 0 {
                if major {
                    anonymous.1 += n;
                } else {
                    anonymous.0 += n;
                }
                continue;
            }
            let (row, pids) = rows.entry((key.dev, key.ino)).or_insert_with(|| {
                (
                    FileRow {
                        path: self.name(&key, &value),
                        inode: key.ino,
                        device: device_name(key.dev),
                        minor: 0,
                        major: 0,
                        processes: 0,
                    },
                    HashSet::new(),
                )
            });
            if major {
                row.major += n;
            } else {
                row.minor += n;
            }
            pids.insert(key.tgid);
        }
        let mut files: Vec<FileRow> = rows
            .into_values()
            .map(|(mut row, pids)| {
                row.processes = pids.len();
                row
            })
            .collect();
        files.sort_by_key(|row| (std::cmp::Reverse(row.major), std::cmp::Reverse(row.minor)));
        Ok(Files {
            files,
            anonymous_minor: anonymous.0,
            anonymous_major: anonymous.1,
        })
    }

    /// What a counted mapping is: its path or kernel name while its process was seen alive;
    /// else the path the kernel recorded (see [`kernel_path`]).
    fn name(&self, key: &MappingKey, value: &MappingCount) -> String {
        if key.flags & MappingKey::UNKNOWN != 0 {
            return "[unknown]".into();
        }
        let seen = self.mappings.get(&key.tgid).and_then(|mappings| {
            // The same start and file: what is mapped there may have changed since.
            mappings
                .iter()
                .find(|m| m.start == key.start && m.inode == key.ino)
        });
        match seen {
            Some(mapping) if !mapping.path.is_empty() => mapping.path.clone(),
            _ if key.ino != 0 => kernel_path(key, value)
                .unwrap_or_else(|| format!("[inode {} on {}]", key.ino, device_name(key.dev))),
            _ if key.flags & MappingKey::GROWS_DOWN != 0 => "[stack]".into(),
            _ => "[anonymous]".into(),
        }
    }
}

/// The path the kernel recorded: names up to the file's filesystem root. It is the file's
/// path if that path, from where its filesystem is mounted (the root, or another mount of its
/// device), leads to the same inode; else (deeper than recorded, or not mounted where this
/// process sees it) the path is shown as a tail, `…/dir/file`.
fn kernel_path(key: &MappingKey, value: &MappingCount) -> Option<String> {
    let parts: Vec<String> = value
        .path
        .iter()
        .map(|part| procfs::comm_from_bytes(part))
        .take_while(|part| !part.is_empty())
        .collect();
    let (root, names) = match parts.split_last()? {
        (last, names) if last == "/" => (true, names),
        _ => (false, &parts[..]),
    };
    let tail: Vec<&str> = names.iter().rev().map(String::as_str).collect();
    let path = format!("/{}", tail.join("/"));
    let is_it = |candidate: &str| {
        std::fs::metadata(candidate)
            .is_ok_and(|meta| std::os::unix::fs::MetadataExt::ino(&meta) == key.ino)
    };
    if root {
        if is_it(&path) {
            return Some(path);
        }
        let mounted = procfs::mounts_of_device(key.dev >> 20, key.dev & 0xf_ffff)
            .into_iter()
            .filter_map(|(mount_root, point)| {
                let inside = path.strip_prefix(mount_root.trim_end_matches('/'))?;
                let inside = inside.strip_prefix('/').unwrap_or(inside);
                Some(format!("{}/{inside}", point.trim_end_matches('/')))
            })
            .find(|candidate| is_it(candidate));
        if mounted.is_some() {
            return mounted;
        }
    }
    Some(format!("…{path}"))
}

/// `major:minor` of a kernel `dev_t` (20 bits of minor).
fn device_name(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

/// Where the kernel keeps what a mapping is, from its BTF: needed for `--by mapping|file`, with
/// the helper that finds a fault's mapping.
fn vma_layout() -> anyhow::Result<memtrace_common::stacks::VmaLayout> {
    use aya::{programs::ProgramType, sys::BpfHelper};
    if !bpf::kernel::has_helper(ProgramType::PerfEvent, BpfHelper::BPF_FUNC_find_vma) {
        return Err(Failure::KernelUnsupported {
            what: format!(
                "the BPF helper bpf_find_vma (Linux 5.17; this is {})",
                bpf::kernel::release()
            ),
            hint: "--by mapping and --by file find each fault's mapping with it; use --by \
                   stack, or plain faults"
                .into(),
        }
        .into());
    }
    let btf = crate::sys::btf::Btf::from_sys_fs().map_err(|err| Failure::KernelUnsupported {
        what: "BTF (/sys/kernel/btf/vmlinux)".into(),
        hint: format!(
            "--by mapping and --by file read the kernel's mapping layout from it ({err})"
        ),
    })?;
    attribution::vma_layout(&btf).ok_or_else(|| {
        Failure::KernelUnsupported {
            what: "a field of its mappings in BTF (vm_area_struct, file, inode)".into(),
            hint: "use --by stack, or plain faults".into(),
        }
        .into()
    })
}

impl Attributed {
    /// Releases the object.
    pub fn release(self) {
        self.loaded.release(bpf::tracepoints::Release::Background);
    }
}
