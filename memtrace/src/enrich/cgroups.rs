//! A process's memory cgroup: `/proc/PID/cgroup` while it lives, else the one the kernel
//! recorded for it (the inode number of the cgroup's directory), found in the hierarchy.

use std::collections::HashMap;

use crate::sys::cgroup::{self, MemoryHierarchy};

pub struct CgroupResolver {
    hierarchy: Option<MemoryHierarchy>,
    /// Memory cgroups by directory inode (`MemoryHierarchy::paths_by_id`).
    by_id: HashMap<u64, String>,
    /// Whether `by_id` was listed during this reading.
    fresh: bool,
}

impl CgroupResolver {
    pub fn new(hierarchy: Option<MemoryHierarchy>) -> CgroupResolver {
        CgroupResolver {
            hierarchy,
            by_id: HashMap::new(),
            fresh: false,
        }
    }

    pub fn hierarchy(&self) -> Option<&MemoryHierarchy> {
        self.hierarchy.as_ref()
    }

    /// A new reading begins: the hierarchy may be listed again (at most once per reading).
    pub fn new_reading(&mut self) {
        self.fresh = false;
    }

    /// The memory cgroup of `pid`; `recorded` is the kernel's id for it, or 0.
    pub fn path_of(&mut self, pid: u32, recorded: u64) -> Option<String> {
        let hierarchy = self.hierarchy.as_ref()?;
        cgroup::read_proc_cgroup(pid, hierarchy.version).or_else(|| self.path_by_id(recorded))
    }

    /// The path of a cgroup the kernel recorded by its id; the hierarchy is listed again for an
    /// id not seen yet (a cgroup created since).
    fn path_by_id(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if !self.by_id.contains_key(&id) && !self.fresh {
            self.by_id = self.hierarchy.as_ref()?.paths_by_id();
            self.fresh = true;
        }
        self.by_id.get(&id).cloned()
    }
}
