//! Hardening, proven against the real kernel: report files are private, a closed pipe is a quiet
//! end, tracefs is mounted when missing (or the user is told how), and a reused pid is reported
//! as the new process it is. Mount changes happen only in private mount namespaces.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::common::{self, Tracer, Workload, memtrace, run_memtrace, schema, summary, workload};

fn scratch(name: &str) -> PathBuf {
    common::scratch("reliability", name)
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Waits for a child, killing it if it outlives `timeout`.
fn wait_for(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("did not exit within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---- Files we write -------------------------------------------------------------------------

#[test]
fn report_files_are_created_0640_whatever_the_umask() {
    for subcommand in ["faults", "trace", "oom"] {
        let path = scratch(&format!("{subcommand}-mode.out"));
        let _ = fs::remove_file(&path);
        // Without capabilities memtrace stops with exit 3 right after opening its report, which
        // is enough here and needs no root; with root, capabilities are dropped the same way.
        let mut command = common::memtrace_without_capabilities();
        command.args([subcommand, "-o"]).arg(&path);
        // SAFETY: umask is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        let out = command.output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert_eq!(mode_of(&path), 0o640, "{subcommand}");
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn an_existing_report_file_is_truncated_and_rewritten() {
    require_root!();
    let path = scratch("existing.jsonl");
    fs::write(&path, "x".repeat(100_000)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let path_arg = path.to_str().unwrap();
    let out = run_memtrace(&["faults", "--json", "-o", path_arg, "--duration", "0.3"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = fs::read_to_string(&path).unwrap();
    assert!(!text.contains('x'), "old content left: {:.80}", text);
    let records = schema::records("faults", &text);
    assert_eq!(records[0]["type"], "start");
    assert_eq!(records.last().unwrap()["type"], "summary");
    // An existing file keeps its owner's choice of mode.
    assert_eq!(mode_of(&path), 0o600);
}

// ---- Broken pipe ----------------------------------------------------------------------------

/// `memtrace ARGS | head -1`: reads one line, closes the pipe, and returns exit code and stderr.
fn head_1(args: &[&str]) -> (Option<i32>, String) {
    let mut child = memtrace()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "{args:?}: no first line");
    drop(stdout);
    let mut stderr = child.stderr.take().unwrap();
    let status = wait_for(&mut child, common::patience(20));
    let mut text = String::new();
    stderr.read_to_string(&mut text).unwrap();
    (status.code(), text)
}

#[track_caller]
fn assert_quiet_end((code, stderr): (Option<i32>, String), what: &str) {
    assert_eq!(code, Some(0), "{what}: {stderr}");
    for bad in ["rror", "Broken pipe", "os error", "panicked"] {
        assert!(!stderr.contains(bad), "{what}: {stderr}");
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_closed_pipe_ends_quietly_with_exit_0() {
    require_root!();
    // Something that keeps making allocation syscalls and faults, for trace -f to follow.
    let mut busy = Command::new("sh")
        .args(["-c", "while :; do /bin/true; done"])
        .spawn()
        .unwrap();
    let busy_pid = busy.id().to_string();

    assert_quiet_end(head_1(&["faults", "--interval", "0.1"]), "faults");
    assert_quiet_end(
        head_1(&["faults", "--json", "--interval", "0.1"]),
        "faults --json",
    );
    assert_quiet_end(head_1(&["trace", "-f", "--pid", &busy_pid]), "trace");
    assert_quiet_end(
        head_1(&["trace", "--json", "-f", "--pid", &busy_pid]),
        "trace --json",
    );

    busy.kill().unwrap();
    busy.wait().unwrap();
}

// ---- tracefs --------------------------------------------------------------------------------

/// Runs a shell script in a private mount namespace (`unshare -m` makes every mount private),
/// so that nothing it mounts or unmounts is seen outside it.
fn in_private_mounts(script: &str) -> std::process::Output {
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("MEMTRACE", env!("CARGO_BIN_EXE_memtrace"))
        .stdin(Stdio::null())
        .output()
        .expect("unshare (util-linux)")
}

fn host_tracefs_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|line| line.contains("tracefs") || line.contains("/sys/kernel "))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn tracefs_is_mounted_when_nobody_did() {
    require_root!();
    let before = host_tracefs_mounts();
    let out = in_private_mounts(
        r#"set -e
        umount /sys/kernel/tracing 2>/dev/null || true
        umount /sys/kernel/debug 2>/dev/null || true
        test ! -e /sys/kernel/tracing/events
        "$MEMTRACE" trace --json -e brk -- true > /dev/null
        test -d /sys/kernel/tracing/events
        umount /sys/kernel/tracing
        "$MEMTRACE" faults --json -- true > /dev/null
        umount /sys/kernel/tracing
        timeout --preserve-status -s INT 3 "$MEMTRACE" oom --json > /dev/null
        echo all-ran"#,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all-ran"),
        "{out:?}"
    );
    assert_eq!(host_tracefs_mounts(), before, "the host's mounts changed");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn tracefs_that_cannot_be_mounted_is_exit_5_with_the_how_to() {
    require_root!();
    let before = host_tracefs_mounts();
    // A read-only, empty /sys/kernel: no tracefs, and no mount point to mount one on.
    let out = in_private_mounts(
        r#"mount -t tmpfs -o ro,size=4k memtrace-test /sys/kernel || exit 99
        for args in "trace -- true" "oom" "faults -- true"; do
            "$MEMTRACE" $args > /dev/null
            echo "exit $?"
        done"#,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["exit 5"; 3], "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "one line each: {stderr}");
    for line in lines {
        assert!(
            line.starts_with("memtrace: ")
                && line.contains("tracefs")
                && line.contains("mount -t tracefs nodev /sys/kernel/tracing"),
            "{line}"
        );
    }
    assert_eq!(host_tracefs_mounts(), before, "the host's mounts changed");
}

// ---- PID reuse ------------------------------------------------------------------------------

const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// Starts the workload with exactly pid `pid`, by setting the last pid the kernel handed out.
/// Other processes on the machine may take it first: then it tries again.
fn start_with_pid(binary: &Path, args: &[&str], pid: u32) -> Option<Workload> {
    for _ in 0..200 {
        if Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
        fs::write(NS_LAST_PID, (pid - 1).to_string()).ok()?;
        let workload = Workload::start(binary, args);
        if workload.pid() == pid {
            return Some(workload);
        }
        workload.finish();
    }
    None
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_reused_pid_is_reported_as_two_processes() {
    require_root!();
    let toucher = workload("touch_pages");
    let tracer = Tracer::start(&["faults", "--comm", "touch_pages", "--interval", "0.1"]);
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let last: u32 = fs::read_to_string(NS_LAST_PID)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // A pid comfortably ahead of the others, where nothing lives.
    let pid = (last + 500..pid_max)
        .chain(300..last)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();

    let mut first = start_with_pid(&toucher, &["2000", "1"], pid).expect("pid for the first");
    first.go();
    first.finish();
    // memtrace notices the exit at its next interval and retires the pid.
    thread::sleep(Duration::from_millis(500));
    let mut second = start_with_pid(&toucher, &["6000", "1"], pid).expect("pid for the second");
    second.go();
    second.finish();
    thread::sleep(Duration::from_millis(300));

    let (records, status) = tracer.interrupt();
    assert!(status.success());
    let summary = summary(&records);
    let mut minors: Vec<u64> = summary["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pid"] == pid)
        .map(|p| p["minor"].as_u64().unwrap())
        .collect();
    minors.sort_unstable();
    assert_eq!(minors.len(), 2, "pid {pid}: {summary}");
    assert!(
        (2000..6000).contains(&minors[0]) && (6000..10_000).contains(&minors[1]),
        "pid {pid}: {minors:?}"
    );
}
