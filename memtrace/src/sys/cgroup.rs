//! What cgroupfs tells about a memory cgroup: where the memory hierarchy is mounted (v1's
//! `memory` controller or v2's unified tree), which cgroup a process is in, and a cgroup's limit,
//! usage and OOM-kill count. Parsing is pure and unit-tested; reading is a thin layer on top.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{
    error::Failure,
    model::cgroup::{Limit, Version},
};

/// Where the memory controller's hierarchy is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryHierarchy {
    pub mount: PathBuf,
    pub version: Version,
}

/// One line of `/proc/self/mounts`, the fields memtrace needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub path: PathBuf,
    pub fstype: String,
    pub options: Vec<String>,
}

pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let _source = parts.next()?;
            // Spaces in mount points are escaped as \040.
            let path = parts.next()?.replace("\\040", " ");
            let fstype = parts.next()?.to_owned();
            let options = parts.next()?.split(',').map(str::to_owned).collect();
            Some(Mount {
                path: PathBuf::from(path),
                fstype,
                options,
            })
        })
        .collect()
}

/// Picks the memory hierarchy: a v1 mount with the `memory` option, else a v2 mount whose
/// `cgroup.controllers` (as `controllers_of` reads it) lists `memory`.
pub fn pick_memory_hierarchy(
    mounts: &[Mount],
    controllers_of: impl Fn(&Path) -> Option<String>,
) -> Option<MemoryHierarchy> {
    if let Some(v1) = mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == "memory"))
    {
        return Some(MemoryHierarchy {
            mount: v1.path.clone(),
            version: Version::V1,
        });
    }
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .find(|m| {
            controllers_of(&m.path)
                .is_some_and(|text| text.split_whitespace().any(|c| c == "memory"))
        })
        .map(|m| MemoryHierarchy {
            mount: m.path.clone(),
            version: Version::V2,
        })
}

/// The memory hierarchy of this machine.
pub fn memory_hierarchy() -> Option<MemoryHierarchy> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    pick_memory_hierarchy(&parse_mounts(&mounts), |dir| {
        fs::read_to_string(dir.join("cgroup.controllers")).ok()
    })
}

/// A process's cgroup in the memory hierarchy, from the text of `/proc/PID/cgroup`.
pub fn parse_proc_cgroup(text: &str, version: Version) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let matches = match version {
            Version::V1 => controllers.split(',').any(|c| c == "memory"),
            Version::V2 => id == "0" && controllers.is_empty(),
        };
        matches.then(|| path.to_owned())
    })
}

pub fn read_proc_cgroup(pid: u32, version: Version) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_proc_cgroup(&text, version)
}

/// A cgroup's memory figures; each is `None` when it could not be read (e.g. the cgroup is gone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub limit: Option<Limit>,
    pub usage_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
}

/// v1 reports "no limit" as the largest page-aligned counter value (PAGE_COUNTER_MAX pages).
const V1_UNLIMITED_FROM: u64 = 1 << 62;

/// `memory.max` (v2: `max` or bytes) or `memory.limit_in_bytes` (v1: bytes, huge = none).
pub fn parse_limit(text: &str) -> Option<Limit> {
    let text = text.trim();
    if text == "max" {
        return Some(Limit::Unlimited);
    }
    let bytes: u64 = text.parse().ok()?;
    Some(if bytes >= V1_UNLIMITED_FROM {
        Limit::Unlimited
    } else {
        Limit::Bytes(bytes)
    })
}

/// A value from a flat-keyed file (`memory.events`, `memory.oom_control`): `key value` lines.
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl MemoryHierarchy {
    /// The directory of a cgroup given by its path in the hierarchy (`/a/b`).
    pub fn dir(&self, cgroup: &str) -> PathBuf {
        self.mount.join(cgroup.trim_start_matches('/'))
    }

    /// Reads a cgroup's limit, usage and OOM-kill count.
    pub fn stats(&self, cgroup: &str) -> Stats {
        let dir = self.dir(cgroup);
        let read = |name: &str| fs::read_to_string(dir.join(name)).ok();
        let version = self.version;
        Stats {
            limit: read(version.limit_file()).and_then(|t| parse_limit(&t)),
            usage_bytes: read(version.usage_file()).and_then(|t| t.trim().parse().ok()),
            oom_kills: read(version.events_file()).and_then(|t| parse_keyed(&t, "oom_kill")),
        }
    }

    /// Every cgroup of the hierarchy by the inode number of its directory (the id the kernel's
    /// programs record), as paths in the hierarchy.
    pub fn paths_by_id(&self) -> std::collections::HashMap<u64, String> {
        use std::os::unix::fs::MetadataExt as _;
        self.subtree("/")
            .into_iter()
            .filter_map(|(dir, path)| Some((fs::metadata(dir).ok()?.ino(), path)))
            .collect()
    }

    /// A cgroup and every cgroup below it: directories, and paths in the hierarchy.
    pub fn subtree(&self, cgroup: &str) -> Vec<(PathBuf, String)> {
        let mut found = Vec::new();
        let mut pending = vec![(self.dir(cgroup), normalise(cgroup))];
        while let Some((dir, path)) = pending.pop() {
            let entries = fs::read_dir(&dir);
            found.push((dir, path.clone()));
            let Ok(entries) = entries else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let child = if path == "/" {
                        format!("/{name}")
                    } else {
                        format!("{path}/{name}")
                    };
                    pending.push((entry.path(), child));
                }
            }
        }
        found
    }

    /// Turns `--cgroup PATH` into a path in the hierarchy: PATH may be a directory under the
    /// mount point, or a path in the hierarchy itself (`/a/b`). It must exist.
    pub fn resolve(&self, path: &Path) -> Result<String, Failure> {
        let relative = match path.strip_prefix(&self.mount) {
            Ok(rest) => rest.to_path_buf(),
            Err(_) => path
                .strip_prefix("/")
                .map_or_else(|_| path.to_path_buf(), Path::to_path_buf),
        };
        let text = relative
            .to_str()
            .ok_or_else(|| Failure::Usage(format!("--cgroup {}: not UTF-8", path.display())))?;
        let cgroup = format!("/{}", text.trim_end_matches('/'));
        if !self.dir(&cgroup).is_dir() {
            return Err(Failure::Usage(format!(
                "no such cgroup: {} (looked in {})",
                path.display(),
                self.mount.display()
            )));
        }
        Ok(normalise(&cgroup))
    }
}

fn normalise(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// The processes directly in a cgroup (its `cgroup.procs`).
pub fn procs_in(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|line| line.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether `cgroup` is `root` or inside its subtree.
pub fn is_within(cgroup: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    root.is_empty()
        || cgroup == root
        || cgroup
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,cpu,cpuacct 0 0
";

    #[test]
    fn v1_memory_controller_wins() {
        let mounts = parse_mounts(MOUNTS);
        assert_eq!(mounts.len(), 4);
        let found = pick_memory_hierarchy(&mounts, |_| Some("memory".into())).unwrap();
        assert_eq!(found.mount, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(found.version, Version::V1);
    }

    #[test]
    fn v2_needs_memory_in_its_controllers() {
        let mounts = parse_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n");
        assert_eq!(
            pick_memory_hierarchy(&mounts, |_| Some("hugetlb".into())),
            None
        );
        let found = pick_memory_hierarchy(&mounts, |_| Some("cpu io memory pids".into()));
        assert_eq!(found.unwrap().version, Version::V2);
    }

    #[test]
    fn proc_cgroup_lines() {
        let text = "12:memory:/oomexp/sub\n5:cpu,cpuacct:/\n0::/user.slice\n";
        assert_eq!(
            parse_proc_cgroup(text, Version::V1).as_deref(),
            Some("/oomexp/sub")
        );
        assert_eq!(
            parse_proc_cgroup(text, Version::V2).as_deref(),
            Some("/user.slice")
        );
        assert_eq!(parse_proc_cgroup("1:cpu:/\n", Version::V1), None);
        assert_eq!(parse_proc_cgroup("", Version::V2), None);
    }

    #[test]
    fn limits_v1_and_v2() {
        assert_eq!(parse_limit("33554432\n"), Some(Limit::Bytes(33_554_432)));
        assert_eq!(parse_limit("9223372036854771712\n"), Some(Limit::Unlimited));
        assert_eq!(parse_limit("max\n"), Some(Limit::Unlimited));
        assert_eq!(parse_limit("lots"), None);
    }

    #[test]
    fn keyed_files() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_keyed(oom_control, "oom_kill"), Some(3));
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 1\n";
        assert_eq!(parse_keyed(events, "oom_kill"), Some(2));
        assert_eq!(parse_keyed(events, "oom"), Some(2));
        assert_eq!(parse_keyed("", "oom_kill"), None);
    }

    /// A directory tree laid out as cgroupfs lays out a v2 hierarchy (plain files here).
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Tree {
            let root =
                std::env::temp_dir().join(format!("memtrace-cgroup-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            Tree(root)
        }

        fn file(&self, path: &str, text: &str) {
            let path = self.0.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_v2_tree_is_found_and_read() {
        let tree = Tree::new("v2");
        tree.file(
            "cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        tree.file("system.slice/db.service/memory.max", "50331648\n");
        tree.file("system.slice/db.service/memory.current", "50200576\n");
        tree.file(
            "system.slice/db.service/memory.events",
            "low 0\nhigh 0\nmax 97\noom 2\noom_kill 2\noom_group_kill 0\n",
        );
        tree.file("user.slice/memory.max", "max\n");
        let mounts = format!("cgroup2 {} cgroup2 rw,nosuid 0 0\n", tree.0.display());
        let hierarchy = pick_memory_hierarchy(&parse_mounts(&mounts), |dir| {
            fs::read_to_string(dir.join("cgroup.controllers")).ok()
        })
        .expect("a v2 hierarchy with memory");
        assert_eq!(hierarchy.version, Version::V2);
        assert_eq!(
            hierarchy.stats("/system.slice/db.service"),
            Stats {
                limit: Some(Limit::Bytes(50_331_648)),
                usage_bytes: Some(50_200_576),
                oom_kills: Some(2),
            }
        );
        assert_eq!(hierarchy.stats("/user.slice").limit, Some(Limit::Unlimited));
        assert_eq!(hierarchy.stats("/gone"), Stats::default());
        // --cgroup as a path in the hierarchy or as a directory under the mount.
        assert_eq!(
            hierarchy
                .resolve(Path::new("/system.slice/db.service/"))
                .unwrap(),
            "/system.slice/db.service"
        );
        assert_eq!(
            hierarchy.resolve(&tree.0.join("system.slice")).unwrap(),
            "/system.slice"
        );
        assert!(hierarchy.resolve(Path::new("/nope")).is_err());
    }

    #[test]
    fn cgroups_are_found_by_the_inode_of_their_directory() {
        use std::os::unix::fs::MetadataExt as _;
        let tree = Tree::new("ids");
        tree.file("kubepods/burstable/pod1/memory.max", "max\n");
        let hierarchy = MemoryHierarchy {
            mount: tree.0.clone(),
            version: Version::V2,
        };
        let paths = hierarchy.paths_by_id();
        let inode = |path: &str| fs::metadata(tree.0.join(path)).unwrap().ino();
        assert_eq!(paths[&inode("")], "/");
        assert_eq!(
            paths[&inode("kubepods/burstable/pod1")],
            "/kubepods/burstable/pod1"
        );
        assert_eq!(paths.len(), 4);
    }

    #[test]
    fn a_v1_tree_is_read_with_its_own_files() {
        let tree = Tree::new("v1");
        tree.file("oomexp/memory.limit_in_bytes", "33554432\n");
        tree.file("oomexp/memory.usage_in_bytes", "33550336\n");
        tree.file(
            "oomexp/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        let hierarchy = MemoryHierarchy {
            mount: tree.0.clone(),
            version: Version::V1,
        };
        assert_eq!(
            hierarchy.stats("/oomexp"),
            Stats {
                limit: Some(Limit::Bytes(33_554_432)),
                usage_bytes: Some(33_550_336),
                oom_kills: Some(1),
            }
        );
    }

    #[test]
    fn subtrees() {
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(is_within("/a", "/"));
        assert!(!is_within("/ab", "/a"));
        assert!(!is_within("/b/a", "/a"));
        assert_eq!(normalise("//a//b/"), "/a/b");
    }
}
