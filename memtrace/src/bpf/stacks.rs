//! The stack tables an object that identifies user stacks shares with userspace (the kernel
//! module `stacks` of the `attribution`, `syscalls` and `allocs` objects): recipes and confirmed
//! stacks that userspace writes, the counts it reads, and the ring stacks come whole over; and
//! which of the two ways of taking stacks this kernel's programs use.

use std::sync::OnceLock;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::ProgramType,
    sys::BpfHelper,
};
use memtrace_common::{
    globals, maps,
    stacks::{Recipe, SiteKey, StackKey, StackWay},
};

use super::{Config, ring::Ring};
use crate::{
    error::Failure,
    stacks::{KernelCounts, Teach},
};

/// Sizes an object's stack tables: `max_stacks` places and stacks, and a scratch copy per CPU;
/// and sets what the programs of `way` need to know to find the user registers.
pub fn configure(config: &mut Config, max_stacks: u32, way: StackWay) -> anyhow::Result<()> {
    configure_tables(config, max_stacks)?;
    if way == StackWay::Reads {
        config.u32(globals::TASK_STACK_OFFSET, task_stack_offset()?);
    }
    Ok(())
}

/// [`configure`] for programs that have the user registers in their context (uprobes): only
/// the tables.
pub fn configure_tables(config: &mut Config, max_stacks: u32) -> anyhow::Result<()> {
    config
        .size(maps::STACK_RECIPES, max_stacks)
        .size(maps::STACK_COUNTS, max_stacks)
        .size(maps::STACK_PENDING, max_stacks)
        .size(maps::STACK_SCRATCH, super::possible_cpus()?);
    Ok(())
}

/// The helpers [`StackWay::Helpers`] calls, all in Linux 5.17.
const HELPERS: [BpfHelper; 3] = [
    BpfHelper::BPF_FUNC_get_current_task_btf,
    BpfHelper::BPF_FUNC_task_pt_regs,
    BpfHelper::BPF_FUNC_loop,
];

/// How this kernel's programs take user stacks: with the helpers when it has them all (asked
/// of the kernel once, by loading a tiny program per helper), else by reads. The variable
/// `MEMTRACE_STACK_WAY=reads` forces the older way (to test it on a newer kernel).
pub fn way() -> StackWay {
    static WAY: OnceLock<StackWay> = OnceLock::new();
    *WAY.get_or_init(|| {
        if std::env::var_os("MEMTRACE_STACK_WAY").is_some_and(|way| way == "reads") {
            return StackWay::Reads;
        }
        let has = |helper| super::kernel::has_helper(ProgramType::TracePoint, helper);
        let way = if HELPERS.into_iter().all(has) {
            StackWay::Helpers
        } else {
            StackWay::Reads
        };
        log::debug!("user stacks taken the {way:?} way");
        way
    })
}

/// The name of a program that takes stacks, in this kernel's way.
pub fn program(base: &str) -> String {
    format!("{base}{}", way().suffix())
}

/// Where `task_struct` keeps its kernel stack, which the older way reads the user registers
/// from.
fn task_stack_offset() -> Result<u32, Failure> {
    let btf = crate::sys::btf::Btf::from_sys_fs().map_err(|err| Failure::KernelUnsupported {
        what: "BTF (/sys/kernel/btf/vmlinux)".into(),
        hint: format!("before Linux 5.17, user stacks are read through it ({err})"),
    })?;
    btf.member_offset("task_struct", "stack")
        .ok_or_else(|| Failure::KernelUnsupported {
            what: "task_struct.stack in its BTF".into(),
            hint: "before Linux 5.17, user stacks are read through it".into(),
        })
}

/// The tables, taken out of their object.
pub struct StackTables {
    recipes: HashMap<MapData, SiteKey, Recipe>,
    counts: HashMap<MapData, StackKey, u64>,
    pending: HashMap<MapData, StackKey, u64>,
}

impl StackTables {
    pub fn open(ebpf: &mut Ebpf) -> anyhow::Result<StackTables> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the BPF object has no {name} map"))
        };
        Ok(StackTables {
            recipes: HashMap::try_from(take(maps::STACK_RECIPES)?).context("STACK_RECIPES map")?,
            counts: HashMap::try_from(take(maps::STACK_COUNTS)?).context("STACK_COUNTS map")?,
            pending: HashMap::try_from(take(maps::STACK_PENDING)?).context("STACK_PENDING map")?,
        })
    }

    /// Everything the kernel counted per stack.
    pub fn counts(&self) -> anyhow::Result<KernelCounts> {
        Ok(KernelCounts {
            known: super::entries_of(&self.counts, maps::STACK_COUNTS)?,
            pending: super::entries_of(&self.pending, maps::STACK_PENDING)?,
        })
    }
}

impl StackTables {
    /// Deletes what the kernel holds for an exited process: its counts (`counts`, already
    /// taken over by userspace) and its places' recipes.
    pub fn forget(&mut self, counts: &KernelCounts, sites: &[SiteKey]) -> anyhow::Result<()> {
        for (key, _) in &counts.known {
            super::deleted(self.counts.remove(key)).context("delete from STACK_COUNTS")?;
        }
        for (key, _) in &counts.pending {
            super::deleted(self.pending.remove(key)).context("delete from STACK_PENDING")?;
        }
        for site in sites {
            super::deleted(self.recipes.remove(site)).context("delete from STACK_RECIPES")?;
        }
        Ok(())
    }
}

/// The ring an object sends stacks over and the tables userspace writes, taken out of it.
pub struct SnapshotTables {
    snapshots: Ring,
    pub stacks: StackTables,
}

impl SnapshotTables {
    pub fn open(ebpf: &mut Ebpf) -> anyhow::Result<SnapshotTables> {
        Ok(SnapshotTables {
            snapshots: Ring::open(ebpf, maps::STACK_SNAPSHOTS)?,
            stacks: StackTables::open(ebpf)?,
        })
    }

    /// Resolves when snapshots are waiting.
    pub async fn readable(&mut self) -> anyhow::Result<()> {
        self.snapshots.readable().await
    }

    /// Hands every waiting snapshot to `each`, with the tables to teach; returns how many.
    pub fn drain(&mut self, mut each: impl FnMut(&[u8], &mut dyn Teach)) -> usize {
        let stacks = &mut self.stacks;
        self.snapshots.drain(usize::MAX, |item| each(item, stacks))
    }

    /// Everything the kernel counted per stack.
    pub fn counts(&self) -> anyhow::Result<KernelCounts> {
        self.stacks.counts()
    }
}

/// `BPF_NOEXIST`: create, never replace.
const BPF_NOEXIST: u64 = 1;

impl Teach for StackTables {
    fn recipe(&mut self, site: SiteKey, recipe: &Recipe) -> bool {
        self.recipes.insert(site, recipe, 0).is_ok()
    }

    fn confirm(&mut self, key: StackKey) -> bool {
        let created = self.counts.insert(key, 0, BPF_NOEXIST);
        // An existing counter (a confirmation that raced this one) is as good.
        created.is_ok() || self.counts.get(&key, 0).is_ok()
    }
}

/// Kernel stacks by id (`KERNEL_STACKS`, filled by `bpf_get_stackid`), named from kallsyms.
pub struct KernelStacks {
    map: aya::maps::StackTraceMap<MapData>,
    symbols: crate::stacks::symbols::KernelSymbols,
    named: std::collections::HashMap<u32, Vec<crate::model::stacks::Named>>,
}

impl KernelStacks {
    pub fn open(ebpf: &mut Ebpf) -> anyhow::Result<KernelStacks> {
        let map = ebpf
            .take_map(maps::KERNEL_STACKS)
            .context("the BPF object has no KERNEL_STACKS map")?;
        Ok(KernelStacks {
            map: aya::maps::StackTraceMap::try_from(map).context("KERNEL_STACKS map")?,
            symbols: crate::stacks::symbols::KernelSymbols::default(),
            named: std::collections::HashMap::new(),
        })
    }

    /// The frames of stack `id`, named, innermost first; none if it cannot be read.
    pub fn frames(&mut self, id: u32) -> Vec<crate::model::stacks::Named> {
        if let Some(named) = self.named.get(&id) {
            return named.clone();
        }
        let addresses: Vec<u64> = match self.map.get(&id, 0) {
            Ok(stack) => stack.frames().iter().map(|frame| frame.ip).collect(),
            Err(_) => return Vec::new(),
        };
        let named = self.symbols.name(&addresses);
        self.named.insert(id, named.clone());
        named
    }
}
