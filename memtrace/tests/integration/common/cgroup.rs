//! Memory cgroups for tests: created with a small limit in whichever hierarchy holds the memory
//! controller (v1 on the development machine, v2 on current distributions), and emptied
//! (SIGKILL) and removed when the test ends, however it ends. Which files each hierarchy uses
//! is memtrace's own knowledge (`memtrace::sys::cgroup::Version`), unit-tested there on literal
//! cgroupfs trees.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use memtrace::{
    model::cgroup::Version,
    sys::cgroup::{MemoryHierarchy, memory_hierarchy, parse_keyed},
};

pub const MIB: u64 = 1 << 20;

/// A memory cgroup for one test: created with a limit, emptied (SIGKILL) and removed on drop.
pub struct TestCgroup {
    pub dir: PathBuf,
    /// Its path in the memory hierarchy, as memtrace reports it.
    pub path: String,
    pub version: Version,
    /// Directories created above it, removed after it (deepest first).
    parents: Vec<PathBuf>,
}

/// The memory hierarchy of this machine (tests that use cgroups need one).
pub fn hierarchy() -> MemoryHierarchy {
    memory_hierarchy().expect("a mounted memory cgroup hierarchy (v1 or v2)")
}

impl TestCgroup {
    /// A child of the hierarchy's root, limited to `limit` bytes (and no swap on v2).
    pub fn new(name: &str, limit: u64) -> TestCgroup {
        TestCgroup::nested(name, &[], limit)
    }

    /// A cgroup at `/memtrace-test-NAME-PID/BELOW...` (as container managers nest theirs),
    /// limited to `limit` bytes.
    pub fn nested(name: &str, below: &[&str], limit: u64) -> TestCgroup {
        let hierarchy = hierarchy();
        let version = hierarchy.version;
        let top = format!("memtrace-test-{name}-{}", std::process::id());
        let levels: Vec<&str> = std::iter::once(top.as_str())
            .chain(below.iter().copied())
            .collect();
        let mut path = String::new();
        let mut parents = Vec::new();
        for level in &levels {
            if version == Version::V2 {
                enable_memory_controller(&hierarchy.dir(&path));
            }
            path = format!("{path}/{level}");
            let dir = hierarchy.dir(&path);
            fs::create_dir(&dir).expect("create the test cgroup");
            parents.push(dir);
        }
        let dir = parents.pop().expect("at least the cgroup itself");
        let cgroup = TestCgroup {
            dir,
            path,
            version,
            parents,
        };
        cgroup.write(version.limit_file(), &limit.to_string());
        // No swap: the limit is reached, and the OOM killer acts, whether the host swaps or not.
        if version == Version::V2 && cgroup.dir.join("memory.swap.max").exists() {
            cgroup.write("memory.swap.max", "0");
        }
        if version == Version::V1 {
            cgroup.write("memory.swappiness", "0");
        }
        cgroup
    }

    pub fn write(&self, file: &str, value: &str) {
        fs::write(self.dir.join(file), value)
            .unwrap_or_else(|err| panic!("write {file} of {}: {err}", self.dir.display()));
    }

    /// The cgroup's own count of its OOM kills.
    pub fn oom_kills(&self) -> u64 {
        let file = self.version.events_file();
        let text = fs::read_to_string(self.dir.join(file)).unwrap();
        parse_keyed(&text, "oom_kill").unwrap_or_else(|| panic!("no oom_kill in {file}"))
    }

    /// Starts `binary args` inside this cgroup (it joins before `exec`).
    pub fn spawn(&self, binary: &Path, args: &[&str]) -> std::process::Child {
        Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.dir)
            .arg(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start workload")
    }
}

/// On v2, a child gets the memory controller only if its parent enables it for its children.
fn enable_memory_controller(root: &Path) {
    let control = root.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "memory") {
        fs::write(&control, "+memory").expect("enable the memory controller for children");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + super::patience(5);
        loop {
            let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
            for &pid in &pids {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if (pids.is_empty() && fs::remove_dir(&self.dir).is_ok()) || Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if self.dir.exists() {
            eprintln!("could not remove the test cgroup {}", self.dir.display());
        }
        for parent in self.parents.iter().rev() {
            if fs::remove_dir(parent).is_err() {
                eprintln!("could not remove the test cgroup {}", parent.display());
            }
        }
    }
}
