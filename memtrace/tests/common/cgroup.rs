//! Memory cgroups for tests: created with a small limit, and emptied (SIGKILL) and removed when
//! the test ends, however it ends.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

pub const V1_MEMORY: &str = "/sys/fs/cgroup/memory";
pub const V2_ROOT: &str = "/sys/fs/cgroup/unified";
pub const MIB: u64 = 1 << 20;

/// A memory cgroup for one test: created with a limit, emptied (SIGKILL) and removed on drop.
pub struct TestCgroup {
    pub dir: PathBuf,
    /// Its path in the memory hierarchy, as memtrace reports it.
    pub path: String,
    pub v2: bool,
}

impl TestCgroup {
    pub fn v1(name: &str, limit: u64) -> TestCgroup {
        let path = format!("/memtrace-test-{name}-{}", std::process::id());
        let dir = Path::new(V1_MEMORY).join(&path[1..]);
        let cgroup = TestCgroup {
            dir,
            path,
            v2: false,
        };
        fs::create_dir(&cgroup.dir).expect("create the v1 test cgroup");
        cgroup.write("memory.limit_in_bytes", &limit.to_string());
        cgroup
    }

    pub fn write(&self, file: &str, value: &str) {
        fs::write(self.dir.join(file), value)
            .unwrap_or_else(|err| panic!("write {file} of {}: {err}", self.dir.display()));
    }

    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill ")
        } else {
            ("memory.oom_control", "oom_kill ")
        };
        let text = fs::read_to_string(self.dir.join(file)).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
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

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
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
    }
}
