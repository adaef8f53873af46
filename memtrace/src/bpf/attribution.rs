//! The `attribution` object: page faults counted per user stack in the kernel, stacks it does
//! not know yet sent whole over a ring buffer, and what userspace teaches it back
//! (`crate::stacks`).

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, MapData, RingBuf},
};
use memtrace_common::{
    DropSource, maps,
    stacks::{Recipe, SiteKey, StackKey},
};
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    Config, Loaded, Object,
    targets::{self, Filter},
    tracepoints::Tracepoints,
};
use crate::stacks::{KernelCounts, Teach};

/// What the object loses.
pub const LOSSES: [DropSource; 2] = [DropSource::StackRingFull, DropSource::TargetTableFull];

/// How the object is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub filter: Filter,
    /// Capacity of the recipe and counting tables.
    pub max_stacks: u32,
    /// Bytes of the snapshot ring (a power of two, at least a page).
    pub ring_bytes: u32,
}

/// Loads the object and attaches its programs to the fault events of every CPU (and the fork
/// follower when the filter follows forks).
pub fn load(options: &Options) -> anyhow::Result<Loaded> {
    let mut config = Config::default();
    options.filter.configure(&mut config)?;
    config
        .size(maps::STACK_RECIPES, options.max_stacks)
        .size(maps::STACK_COUNTS, options.max_stacks)
        .size(maps::STACK_SNAPSHOTS, options.ring_bytes);
    let mut ebpf = super::load(Object::Attribution, &config)?;
    super::forward_kernel_logs(&mut ebpf);
    super::faults::attach_fault_programs(&mut ebpf, "mt_attr_minor", "mt_attr_major")?;
    let mut tracepoints = Tracepoints::default();
    if options.filter == (Filter::Targets { follow_forks: true }) {
        targets::attach_fork_follower(&mut ebpf, &mut tracepoints)?;
    }
    Ok(Loaded { ebpf, tracepoints })
}

/// The tables userspace writes and the ring it reads, taken out of the object.
pub struct Tables {
    snapshots: AsyncFd<RingBuf<MapData>>,
    recipes: HashMap<MapData, SiteKey, Recipe>,
    counts: HashMap<MapData, StackKey, u64>,
    pending: HashMap<MapData, StackKey, u64>,
}

impl Tables {
    pub fn open(ebpf: &mut Ebpf) -> anyhow::Result<Tables> {
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the BPF object has no {name} map"))
        };
        let ring =
            RingBuf::try_from(take(ebpf, maps::STACK_SNAPSHOTS)?).context("STACK_SNAPSHOTS map")?;
        // SAFETY: the AsyncFd owns the ring buffer, and with it the map's descriptor, for its
        // whole life.
        let snapshots = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| err.into_parts().1)
            .context("watch the STACK_SNAPSHOTS ring buffer")?;
        Ok(Tables {
            snapshots,
            recipes: HashMap::try_from(take(ebpf, maps::STACK_RECIPES)?)
                .context("STACK_RECIPES map")?,
            counts: HashMap::try_from(take(ebpf, maps::STACK_COUNTS)?)
                .context("STACK_COUNTS map")?,
            pending: HashMap::try_from(take(ebpf, maps::STACK_PENDING)?)
                .context("STACK_PENDING map")?,
        })
    }

    /// Resolves when snapshots are waiting.
    pub async fn readable(&mut self) -> anyhow::Result<()> {
        let mut guard = self
            .snapshots
            .readable_mut()
            .await
            .context("wait for STACK_SNAPSHOTS")?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands every waiting snapshot to `each`, with the tables to teach; returns how many.
    pub fn drain(&mut self, mut each: impl FnMut(&[u8], &mut dyn Teach)) -> usize {
        let Tables {
            snapshots,
            recipes,
            counts,
            ..
        } = self;
        let mut teacher = Teacher { recipes, counts };
        let ring = snapshots.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            each(&item, &mut teacher);
            n += 1;
        }
        n
    }

    /// Everything the kernel counted per stack.
    pub fn counts(&self) -> anyhow::Result<KernelCounts> {
        Ok(KernelCounts {
            known: entries(&self.counts, maps::STACK_COUNTS)?,
            pending: entries(&self.pending, maps::STACK_PENDING)?,
        })
    }
}

/// Every entry of a table, skipping those deleted while it is read.
fn entries(
    table: &HashMap<MapData, StackKey, u64>,
    name: &str,
) -> anyhow::Result<Vec<(StackKey, u64)>> {
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

/// `BPF_NOEXIST`: create, never replace.
const BPF_NOEXIST: u64 = 1;

struct Teacher<'a> {
    recipes: &'a mut HashMap<MapData, SiteKey, Recipe>,
    counts: &'a mut HashMap<MapData, StackKey, u64>,
}

impl Teach for Teacher<'_> {
    fn recipe(&mut self, site: SiteKey, recipe: &Recipe) -> bool {
        self.recipes.insert(site, recipe, 0).is_ok()
    }

    fn confirm(&mut self, key: StackKey) -> bool {
        let created = self.counts.insert(key, 0, BPF_NOEXIST);
        // An existing counter (another kind's confirmation raced this one) is as good.
        created.is_ok() || self.counts.get(&key, 0).is_ok()
    }
}

/// Events the object could not attribute, per source.
pub fn drops(ebpf: &Ebpf) -> anyhow::Result<Vec<(DropSource, u64)>> {
    super::drops::read(ebpf, &LOSSES)
}
