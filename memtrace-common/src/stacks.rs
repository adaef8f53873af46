//! User stacks: what the kernel sends of one, and how it recognises a stack it has sent before
//! without unwinding it.
//!
//! The kernel cannot unwind code built without frame pointers by itself. It copies the stack
//! (a [`Snapshot`]) and userspace unwinds it with the binaries' unwind tables. Userspace then
//! teaches the kernel, per place a stack starts (a [`SiteKey`]: process, instruction and stack
//! pointer), which stack words its unwinding read (a [`Recipe`]). The next event at that place
//! hashes just those words ([`hash_word`]): equal words unwind to the same frames, since every
//! step of an unwinding depends only on the registers and the words it has read so far. A hash
//! userspace has confirmed (an entry in the counting table) is counted in the kernel.
//!
//! Anything else is copied and hashed whole (every word within reach of unwinding): the first
//! copy with a given whole hash is sent, and until userspace has taught the kernel, events
//! whose copies hash the same are counted as pending under that hash (same bytes, same
//! stack). So a fault storm that begins before memtrace has learnt its stack costs one copy on
//! the ring, not one per fault, and no event is ever attributed to a stack it did not have.

/// Bytes of a memory page, the unit in which the kernel copies a stack.
pub const PAGE_BYTES: usize = 4096;

/// Pages a snapshot copies, starting at the one holding the stack pointer: at least
/// [`STACK_BYTES`] above it.
pub const SNAPSHOT_PAGES: usize = 5;

/// Bytes of stack above the stack pointer that unwinding may read (16 KiB, twice perf's
/// default): a deeper stack is shown cut short, and counted as such.
pub const STACK_BYTES: usize = 16384;

/// Stack words a recipe can check: twice the frames of the deepest stack counted in the kernel
/// (each frame reads its return address, and often a saved frame pointer).
pub const RECIPE_WORDS: usize = 128;

/// Default capacity of the recipe and counting tables (distinct places and stacks).
pub const MAX_STACKS: u32 = 65_536;

/// How the programs that take user stacks find and hash them, by what the kernel offers. Each
/// such program exists once per way; its name ends in the way's [`StackWay::suffix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackWay {
    /// `bpf_task_pt_regs` for the user registers, a `bpf_loop` to hash a copy (Linux 5.17+).
    Helpers,
    /// The registers read from the top of the task's kernel stack (through its offset in BTF),
    /// a bounded loop to hash a copy (Linux 5.8+).
    Reads,
}

impl StackWay {
    pub const fn suffix(self) -> &'static str {
        match self {
            StackWay::Helpers => "",
            StackWay::Reads => "_compat",
        }
    }
}

/// Sizes an x86-64 kernel stack has (16 KiB; twice that with KASAN), tried in turn by
/// [`StackWay::Reads`] to find the registers saved at its top (16 bytes below it with FRED).
pub const THREAD_SIZES: [u64; 2] = [16 << 10, 32 << 10];

/// The code and stack segments a 64-bit user context runs in (`__USER_CS`, `__USER_DS`):
/// registers found where the saved user context should be are trusted only with them.
pub const USER_CODE_SEGMENT: u64 = 0x33;
pub const USER_DATA_SEGMENT: u64 = 0x2b;

/// Where a stack starts: the registers of the user context, in a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ip: u64,
    pub sp: u64,
}

/// Which stack words identify the stacks starting at one [`SiteKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipe {
    /// How many entries of `words` are used.
    pub len: u32,
    /// Bytes to read from the stack pointer to hold every word: `8 * (max word + 1)`.
    pub window: u32,
    /// Non-zero when the frame pointer register takes part in the unwinding (it is hashed).
    pub uses_bp: u32,
    pub _pad: u32,
    /// Stack words, as indexes of 8-byte words above the stack pointer.
    pub words: [u16; RECIPE_WORDS],
}

/// One counted stack: a process, what happened there, and the stack's hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    pub tgid: u32,
    /// What is counted: an [`EventKind`] value.
    pub kind: u32,
    pub hash: u64,
}

/// What a stack is attached to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    MinorFault = 0,
    MajorFault = 1,
    /// A traced syscall (`trace --stack`).
    Syscall = 2,
    /// An allocator call (`leaks --malloc`).
    Allocation = 3,
}

impl EventKind {
    pub fn from_u32(value: u32) -> Option<EventKind> {
        match value {
            0 => Some(EventKind::MinorFault),
            1 => Some(EventKind::MajorFault),
            2 => Some(EventKind::Syscall),
            3 => Some(EventKind::Allocation),
            _ => None,
        }
    }
}

/// The `kind` tag of a snapshot record, first in it: it shares `trace`'s ring with the
/// syscall records (`crate::syscalls::RECORD_SYSCALL`), which come after their stack.
pub const RECORD_STACK: u32 = 2;

/// How an event's stack is known, as a syscall record carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StackRef {
    /// A [`StackKey::hash`] under `how`; 0 with [`StackRef::NONE`].
    pub hash: u64,
    /// [`StackRef::NONE`], [`StackRef::KNOWN`] or [`StackRef::PENDING`].
    pub how: u32,
    /// The kernel stack's id in `KERNEL_STACKS` plus one (`trace --kernel-stack`), or 0.
    pub kernel: u32,
}

impl StackRef {
    /// No stack (not asked for, or it could not be copied).
    pub const NONE: u32 = 0;
    /// A stack userspace taught the kernel: the hash by its recipe.
    pub const KNOWN: u32 = 1;
    /// A stack sent whole: the whole copy's hash (its snapshot came first on the ring).
    pub const PENDING: u32 = 2;
}

/// The fixed part of a snapshot; the stack pages follow it in the ring record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Always [`RECORD_STACK`].
    pub record: u32,
    /// An [`EventKind`] value.
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Pages copied, from the one holding `sp`: fewer than [`SNAPSHOT_PAGES`] at the top of
    /// a stack.
    pub pages: u32,
    pub _pad: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The faulting address.
    pub addr: u64,
    /// The whole copy's hash, under which identical stacks are counted as pending until
    /// userspace knows this one (0: not counted so).
    pub pending: u64,
    pub comm: [u8; crate::COMM_LEN],
}

/// A snapshot as the kernel builds it before sending its used part.
#[repr(C)]
pub struct Snapshot {
    pub header: SnapshotHeader,
    pub pages: [u8; SNAPSHOT_PAGES * PAGE_BYTES],
}

/// The seed of a stack's hash: its registers (`bp` only when the recipe uses it, else 0).
#[inline(always)]
pub const fn hash_seed(ip: u64, sp: u64, bp: u64) -> u64 {
    hash_word(hash_word(hash_word(0x6d65_6d74_7261_6365, ip), sp), bp)
}

/// Folds one word into a stack's hash. Both sides compute it: it must stay the same.
#[inline(always)]
pub const fn hash_word(hash: u64, word: u64) -> u64 {
    (hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95)
}

const _: () = assert!(size_of::<SiteKey>() == 24);
const _: () = assert!(size_of::<Recipe>() == 16 + 2 * RECIPE_WORDS);
const _: () = assert!(size_of::<StackKey>() == 16);
const _: () = assert!(size_of::<SnapshotHeader>() == 80);
const _: () = assert!(size_of::<StackRef>() == 16);
const _: () = assert!(STACK_BYTES + PAGE_BYTES <= SNAPSHOT_PAGES * PAGE_BYTES);
const _: () = assert!(STACK_BYTES.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `repr(C)`, made only of integers and arrays of them, with no padding.
    unsafe impl aya::Pod for super::SiteKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Recipe {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StackKey {}
}

/// Where the kernel keeps what a mapping is, from its BTF (byte offsets), for `--by mapping`:
/// `vma->vm_start`, `vma->vm_flags`, `vma->vm_file->f_inode->{i_ino, i_sb->s_dev}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaLayout {
    pub vm_start: u32,
    pub vm_end: u32,
    /// `task->mm`.
    pub task_mm: u32,
    /// `mm->mm_lock_seq.sequence`: changes whenever any mapping of the process changes; 0
    /// where the kernel has none (before 6.4), and then nothing is cached.
    pub mm_lock_seq: u32,
    pub vm_flags: u32,
    pub vm_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    /// `file->f_path.dentry`.
    pub file_dentry: u32,
    /// `dentry->d_name.name`.
    pub dentry_name: u32,
    pub dentry_parent: u32,
}

impl VmaLayout {
    /// The layout as the bytes of the `VMA_LAYOUT` global.
    pub fn to_ne_bytes(&self) -> [u8; size_of::<VmaLayout>()] {
        let words = [
            self.vm_start,
            self.vm_end,
            self.task_mm,
            self.mm_lock_seq,
            self.vm_flags,
            self.vm_file,
            self.file_inode,
            self.inode_ino,
            self.inode_sb,
            self.sb_dev,
            self.file_dentry,
            self.dentry_name,
            self.dentry_parent,
        ];
        let mut bytes = [0; size_of::<VmaLayout>()];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        bytes
    }
}

/// One counted mapping: a process, the fault's kind, and the mapping holding the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingKey {
    pub tgid: u32,
    /// An [`EventKind`] value.
    pub kind: u32,
    /// The mapping's first address (0: the kernel could not look it up).
    pub start: u64,
    /// The mapped file's inode number, 0 for anonymous memory.
    pub ino: u64,
    /// The file's device (the kernel's `dev_t`).
    pub dev: u32,
    /// [`MappingKey::GROWS_DOWN`] (a stack) or 0.
    pub flags: u32,
}

impl MappingKey {
    /// The mapping grows down: a stack.
    pub const GROWS_DOWN: u32 = 1;
    /// The kernel could not look the mapping up (its lock was taken for writing).
    pub const UNKNOWN: u32 = 2;
}

/// Names of a mapped file's directories the kernel records, innermost first (the file's own
/// name, its directory's, ...): enough to name the file after its process has gone.
pub const PATH_PARTS: usize = 12;
/// Bytes kept of each name (NUL-padded; longer ones are cut).
pub const PATH_PART_BYTES: usize = 40;

/// A mapping's faults, and what the kernel recorded of it when it first counted it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingCount {
    pub count: u64,
    /// The process's name.
    pub comm: [u8; crate::COMM_LEN],
    /// The file's path, one name per part, innermost first, up to its filesystem's root.
    pub path: [[u8; PATH_PART_BYTES]; PATH_PARTS],
}

/// A process's 2 MiB region of addresses: the key of the kernel's cache of the mapping last
/// found there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionKey {
    pub tgid: u32,
    pub _pad: u32,
    /// The address shifted right by [`REGION_SHIFT`].
    pub region: u64,
}

/// Bits of address a cached region spans (2 MiB).
pub const REGION_SHIFT: u32 = 21;

/// The mapping last found in a region, valid while the process's mappings have not changed
/// (its `mm_lock_seq` is the same) and for addresses inside it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedMapping {
    pub start: u64,
    pub end: u64,
    pub ino: u64,
    pub dev: u32,
    pub flags: u32,
    pub seq: u32,
    pub _pad: u32,
}

/// `VM_GROWSDOWN` in `vm_flags`.
pub const VM_GROWSDOWN: u64 = 0x100;

const _: () = assert!(size_of::<VmaLayout>() == 52);
const _: () = assert!(size_of::<MappingCount>() == 24 + PATH_PARTS * PATH_PART_BYTES);
const _: () = assert!(size_of::<MappingKey>() == 32);

#[cfg(feature = "user")]
mod mapping_pod {
    // SAFETY: `repr(C)`, integers only, no padding.
    unsafe impl aya::Pod for super::MappingKey {}
    // SAFETY: as above (byte arrays).
    unsafe impl aya::Pod for super::MappingCount {}
}
