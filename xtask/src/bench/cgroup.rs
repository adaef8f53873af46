//! A memory cgroup with a small limit for the reclaim row: its workload reclaims at that limit,
//! contained, while the rest of the machine sees no pressure. Removed when dropped.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub struct BenchCgroup {
    pub dir: PathBuf,
}

impl BenchCgroup {
    /// `memtrace-bench-NAME` in the memory controller's hierarchy (v1's, or v2's where it owns
    /// the controller), limited to `limit` bytes, without swap.
    pub fn new(name: &str, limit: u64) -> Result<BenchCgroup> {
        let (root, v1) = memory_root()?;
        let dir = root.join(format!("memtrace-bench-{name}"));
        if !dir.exists() {
            fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let cgroup = BenchCgroup { dir };
        let (limit_file, swap) = if v1 {
            ("memory.limit_in_bytes", ("memory.swappiness", "0"))
        } else {
            ("memory.max", ("memory.swap.max", "0"))
        };
        cgroup.write(limit_file, &limit.to_string())?;
        if cgroup.dir.join(swap.0).exists() {
            cgroup.write(swap.0, swap.1)?;
        }
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value).with_context(|| format!("write {value} to {}", path.display()))
    }
}

/// The root of the memory controller's hierarchy, and whether it is v1's.
fn memory_root() -> Result<(PathBuf, bool)> {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        return Ok((v1.to_path_buf(), true));
    }
    for v2 in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let controllers = fs::read_to_string(Path::new(v2).join("cgroup.controllers"));
        if controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
            let control = Path::new(v2).join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&control).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "memory") {
                fs::write(&control, "+memory").context("enable the memory controller")?;
            }
            return Ok((PathBuf::from(v2), false));
        }
    }
    bail!("no memory cgroup controller is mounted")
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        // Its workloads have exited; their page cache is moved to the parent on removal.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        if self.dir.exists() {
            eprintln!("bench: could not remove {}", self.dir.display());
        }
    }
}
