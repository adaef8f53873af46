//! The current task's memory cgroup, for the objects that record it with their counts (so that
//! a process gone before userspace reads /proc still gets its cgroup): the kernel's id of the
//! cgroup's directory, found through offsets userspace reads from the kernel's BTF.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
};
use memtrace_common::faults::MemcgLayout;

/// Set by userspace when it wants cgroups recorded (`serve`, `pressure --by cgroup`); off by
/// default, and then the verifier prunes the reads below.
#[unsafe(no_mangle)]
static MEMCG_LAYOUT: Global<MemcgLayout> = Global::new(MemcgLayout {
    enabled: 0,
    task_cgroups: 0,
    css_set_subsys: 0,
    memory_index: 0,
    css_cgroup: 0,
    cgroup_kn: 0,
    kn_id: 0,
    _pad: 0,
});

/// The current task's memory cgroup, as the kernel's id of its directory (the inode number
/// userspace finds it by), or 0 when not recorded or not readable:
/// `task->cgroups->subsys[memory]->cgroup->kn->id`, five reads of kernel memory.
#[inline(always)]
pub fn current() -> u64 {
    let layout = MEMCG_LAYOUT.load();
    if layout.enabled == 0 {
        return 0;
    }
    // SAFETY: no preconditions; the task pointer is only ever read through the helper.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let follow = |base: *const u8, offset: u64| -> Option<*const u8> {
        if base.is_null() {
            return None;
        }
        // SAFETY: a kernel address read by the helper, which fails cleanly on a bad one.
        unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<*const u8>()) }
            .ok()
    };
    let subsys = u64::from(layout.css_set_subsys) + 8 * u64::from(layout.memory_index);
    let Some(kn) = follow(task, u64::from(layout.task_cgroups))
        .and_then(|css_set| follow(css_set, subsys))
        .and_then(|css| follow(css, u64::from(layout.css_cgroup)))
        .and_then(|cgroup| follow(cgroup, u64::from(layout.cgroup_kn)))
    else {
        return 0;
    };
    if kn.is_null() {
        return 0;
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel(kn.wrapping_add(layout.kn_id as usize).cast::<u64>()) }
        .unwrap_or(0)
}
