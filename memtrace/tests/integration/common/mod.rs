//! Shared harness for the integration tests: run the real `memtrace` binary against the real
//! kernel, build the C workloads, and read the kernel's own accounting to compare with.
//!
//! A test that cannot run never passes silently: it says why (`require_root!`, `require_tool!`,
//! `skip_on_this_host!`) and records itself where `cargo xtask test` reads it
//! (`MEMTRACE_TEST_SKIPS`), which then ends by counting the skipped tests and their reasons.
//! Under `cargo xtask test` as root (`MEMTRACE_TEST_MUST_RUN`), a test that lacks root or a tool
//! the set-up installs fails instead; only what the host itself lacks (cgroup v2's memory
//! controller, say) may still skip, by name, in that count.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod bpftrace;
pub mod cgroup;
pub mod reclaim;
pub mod schema;

/// The calling test's name (`faults::pid_totals_...`), for skip records.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn here() {}
        let path = std::any::type_name_of_val(&here).trim_end_matches("::here");
        path.strip_prefix("integration::").unwrap_or(path)
    }};
}

/// Returns early from a test that needs root, saying so (fails under `cargo xtask test` as root,
/// which cannot happen, but keeps the rule in one place).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            $crate::common::skip(
                $crate::test_name!(),
                "not root (the test loads BPF programs)",
                true,
            );
            return;
        }
    };
}

/// Returns early from a test whose tool is missing (`cargo xtask setup` installs it as root).
#[macro_export]
macro_rules! require_tool {
    ($tool:expr) => {
        if !$crate::common::has_tool($tool) {
            $crate::common::skip(
                $crate::test_name!(),
                &format!(
                    "{} is not installed (`cargo xtask setup` installs it as root)",
                    $tool
                ),
                true,
            );
            return;
        }
    };
}

/// Returns early from a test that only a kernel-matrix guest may run (one that exhausts the
/// machine's memory, swaps, or needs what only the guests have), saying why. The guests set
/// `MEMTRACE_TEST_GUEST` to their kernel's name, and there such a test must run.
#[macro_export]
macro_rules! require_guest {
    ($why:expr) => {
        if $crate::common::guest().is_none() {
            $crate::common::skip(
                $crate::test_name!(),
                &format!("runs in the kernel matrix's guests only: {}", $why),
                false,
            );
            return;
        }
    };
}

/// Returns early from a test that needs what this host lacks, saying what.
#[macro_export]
macro_rules! skip_on_this_host {
    ($reason:expr) => {{
        $crate::common::skip($crate::test_name!(), $reason, false);
        return;
    }};
}

/// Records a skipped test. `required`: under `cargo xtask test` as root, the test must run, so
/// skipping it fails it.
pub fn skip(test: &str, reason: &str, required: bool) {
    if required && std::env::var_os("MEMTRACE_TEST_MUST_RUN").is_some() {
        panic!("{test} cannot run here, but must: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("MEMTRACE_TEST_SKIPS") {
        let line = format!("{test}\t{reason}\n");
        let written = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(err) = written {
            panic!("cannot record the skip of {test} in {path:?}: {err}");
        }
    }
}

/// `secs` seconds, stretched by how much slower than the host this machine runs
/// (`MEMTRACE_TEST_TIME_SCALE`, which the kernel matrix's emulated guests set): for deadlines
/// and timeouts only, never for what a test measures.
pub fn patience(secs: u64) -> Duration {
    let scale = std::env::var("MEMTRACE_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1u64);
    Duration::from_secs(secs * scale.max(1))
}

/// A path for a test's file `name` in the test build's scratch directory `module/`.
pub fn scratch(module: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(module);
    fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Waits for `child` to exit; past `timeout` kills it and fails the test naming `what`, so a
/// hang shows where it is rather than ending in the harness's per-test timeout.
pub fn wait_child(child: &mut Child, what: &str, timeout: Duration) -> ExitStatus {
    if let Some(status) = exit_within(child, timeout) {
        return status;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what} did not exit within {timeout:?}");
}

/// `child`'s exit status if it exits within `timeout`.
pub fn exit_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The running kernel's (major, minor) version, from its release.
pub fn kernel_version() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The kernel-matrix guest this runs in (its kernel's name), if any.
pub fn guest() -> Option<String> {
    std::env::var("MEMTRACE_TEST_GUEST").ok()
}

/// Whether a program is on PATH.
pub fn has_tool(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn memtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memtrace"))
}

/// memtrace with no capability at all: as root, through setpriv (util-linux), which leaves uid 0
/// but clears the inheritable and bounding sets, so nothing survives the exec; unprivileged, as
/// is. Either way memtrace lacks CAP_BPF and CAP_PERFMON (and CAP_DAC_OVERRIDE).
pub fn memtrace_without_capabilities() -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
            .arg(env!("CARGO_BIN_EXE_memtrace"));
        command
    } else {
        memtrace()
    }
}

/// Runs memtrace to completion and returns its output.
pub fn run_memtrace(args: &[&str]) -> Output {
    memtrace()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run memtrace")
}

/// Runs memtrace (with `--json` among `args`) to its end, which must be a success: its records,
/// each valid by its command's schema, and what it (and its command) wrote on stderr.
pub fn json_run(args: &[&str]) -> (Vec<Value>, String) {
    let output = memtrace().args(args).output().expect("run memtrace");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "memtrace failed: {stderr}");
    let records = schema::records(
        schema::command_of(args),
        &String::from_utf8_lossy(&output.stdout),
    );
    (records, stderr)
}

/// Builds `workloads/NAME.c` once per test run.
pub fn workload(name: &str) -> PathBuf {
    workload_built(name, "", &[])
}

/// Builds `workloads/NAME.c` (`NAME.rs` when `flags` start with `rustc`) with extra
/// compiler flags, as the binary `NAME` + `variant`.
pub fn workload_built(name: &str, variant: &str, flags: &[&str]) -> PathBuf {
    let rust = flags.first() == Some(&"rustc");
    let extension = if rust { "rs" } else { "c" };
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../workloads/{name}.{extension}"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workloads");
    fs::create_dir_all(&dir).unwrap();
    let binary = dir.join(format!("{name}{variant}"));
    let fresh = |b: &Path| {
        let built = fs::metadata(b).and_then(|m| m.modified());
        let src = fs::metadata(&source).and_then(|m| m.modified());
        matches!((built, src), (Ok(b), Ok(s)) if b >= s)
    };
    if !fresh(&binary) {
        let mut compiler = if rust {
            let mut rustc = Command::new("rustc");
            rustc.args(["--edition", "2024"]).args(&flags[1..]);
            rustc
        } else {
            let mut cc = Command::new("cc");
            cc.args(["-O2", "-Wall", "-pthread"]).args(flags);
            cc
        };
        let status = compiler
            .arg("-o")
            .arg(&binary)
            .arg(&source)
            .status()
            .expect("run the compiler");
        assert!(status.success(), "building {name}.{extension} failed");
    }
    binary
}

/// A directory on a real disk (not tmpfs), for files that must be evicted from the page cache.
pub fn disk_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("files");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The kernel's own counters from `/proc/PID/stat`: (minflt, majflt).
pub fn proc_faults(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let after = &text[text.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    (fields[7].parse().unwrap(), fields[9].parse().unwrap())
}

/// Loaded BPF programs, by id and name, as bpftool lists them.
pub fn loaded_programs() -> Vec<(u64, String)> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool is installed by `cargo xtask setup`");
    assert!(out.status.success(), "bpftool failed");
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .collect()
}

/// Ids of the BPF programs a process holds file descriptors for (`prog_id:` in fdinfo). This
/// attributes programs to one memtrace instance, so tests stay exact with others running.
pub fn programs_held_by(pid: u32) -> Vec<u64> {
    bpf_ids_held_by(pid, "prog_id:")
}

/// Ids of the BPF maps a process holds file descriptors for (`map_id:` in fdinfo).
pub fn maps_held_by(pid: u32) -> Vec<u64> {
    bpf_ids_held_by(pid, "map_id:")
}

/// The ids after `key` in the fdinfo of a process's descriptors, sorted, each once.
fn bpf_ids_held_by(pid: u32, key: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in entries.flatten() {
        let info = fs::read_to_string(entry.path()).unwrap_or_default();
        ids.extend(
            info.lines()
                .filter_map(|line| line.strip_prefix(key))
                .filter_map(|id| id.trim().parse::<u64>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Which of `ids` bpftool still lists once the kernel has had `timeout` to release them: it
/// frees programs of an exited process asynchronously, after an RCU grace period (~20 ms here).
pub fn still_loaded_after(ids: &[u64], timeout: Duration) -> Vec<(u64, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<_> = loaded_programs()
            .into_iter()
            .filter(|(id, _)| ids.contains(id))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A workload speaking the ready/go/done/exit line protocol on its stdin/stdout.
pub struct Workload {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    /// Starts it and waits for "ready".
    pub fn start(binary: &Path, args: &[&str]) -> Workload {
        Workload::spawn(Command::new(binary).args(args).arg("wait"))
    }

    /// Starts it inside a cgroup (it joins before `exec`) and waits for "ready".
    pub fn start_in(cgroup: &Path, binary: &Path, args: &[&str]) -> Workload {
        Workload::spawn(
            Command::new("sh")
                .arg("-c")
                .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
                .arg(cgroup)
                .arg(binary)
                .args(args)
                .arg("wait"),
        )
    }

    fn spawn(command: &mut Command) -> Workload {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start workload");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut workload = Workload {
            child,
            stdin,
            stdout,
        };
        assert_eq!(workload.line(), "ready");
        workload
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read workload");
        line.trim().to_owned()
    }

    /// Lets it do its work and waits until it has.
    pub fn go(&mut self) {
        writeln!(self.stdin, "go").unwrap();
        assert!(self.line().starts_with("done"));
    }

    /// Lets it exit.
    pub fn finish(mut self) {
        writeln!(self.stdin, "exit").unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

/// A running `memtrace ... --json`, read line by line.
pub struct Tracer {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Whose schema its records are validated by.
    command: &'static str,
}

impl Tracer {
    /// Starts memtrace with `--json` after the subcommand (so before any `--`), and waits for
    /// its `start` record.
    pub fn start(args: &[&str]) -> Tracer {
        Tracer::start_with_record(args).0
    }

    /// [`Tracer::start`], with the `start` record.
    pub fn start_with_record(args: &[&str]) -> (Tracer, Value) {
        let (subcommand, rest) = args.split_first().expect("a subcommand");
        let mut child = memtrace()
            .arg(subcommand)
            .arg("--json")
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start memtrace");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tracer = Tracer {
            child,
            lines,
            command: schema::command_of(&[subcommand]),
        };
        let start = tracer.next_record(patience(10)).expect("a start record");
        assert_eq!(start["type"], "start", "{start}");
        (tracer, start)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The ids and names of the BPF programs this memtrace holds, as bpftool names them.
    pub fn programs(&self) -> Vec<(u64, String)> {
        let ids = programs_held_by(self.pid());
        loaded_programs()
            .into_iter()
            .filter(|(id, _)| ids.contains(id))
            .collect()
    }

    /// The next record (valid by its command's schema), if one comes within `timeout`.
    pub fn next_record(&mut self, timeout: Duration) -> Option<Value> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        Some(schema::record(self.command, &line))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits for memtrace to exit by itself and returns its records and status.
    pub fn wait(mut self, timeout: Duration) -> (Vec<Value>, ExitStatus) {
        self.collect(timeout)
    }

    fn collect(&mut self, timeout: Duration) -> (Vec<Value>, ExitStatus) {
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => records.push(schema::record(self.command, &line)),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("memtrace did not exit within {timeout:?}");
                }
            }
        }
        (records, self.child.wait().unwrap())
    }

    /// Ctrl-C, then the records and exit status.
    pub fn interrupt(self) -> (Vec<Value>, ExitStatus) {
        self.signal(libc::SIGINT);
        self.wait(patience(10))
    }
}

impl Drop for Tracer {
    /// A failed test must not leave memtrace running, holding programs that later tests count.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The one `summary` record, which must come last.
pub fn summary(records: &[Value]) -> &Value {
    let last = records.last().expect("some records");
    assert_eq!(last["type"], "summary", "last record: {last}");
    last
}

/// A process's (minor, major) totals in a summary.
pub fn totals_of(summary: &Value, pid: u32) -> (u64, u64) {
    let processes = summary["processes"].as_array().unwrap();
    let found: Vec<&Value> = processes.iter().filter(|p| p["pid"] == pid).collect();
    let minor = found.iter().map(|p| p["minor"].as_u64().unwrap()).sum();
    let major = found.iter().map(|p| p["major"].as_u64().unwrap()).sum();
    (minor, major)
}

/// A pid no process has right now.
pub fn unused_pid() -> u32 {
    let max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (1..max)
        .rev()
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .unwrap()
}
