//! Every row of the README's exit-code table, for every subcommand: bad input is exit 2 with one
//! line, before any privilege is needed; runtime failures have their own codes. Rows that need
//! the kernel (3 when privileged is simulated by dropping capabilities, 4, 126/127, a command's
//! status) need root; the usage rows run as anyone.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Output, Stdio},
};

use crate::common::{self, run_memtrace, unused_pid};

fn scratch(name: &str) -> PathBuf {
    common::scratch("cli", name)
}

/// memtrace's lines on stderr, less the warnings of what this kernel lacks (a kernel of the
/// matrix may warn before any failure).
fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|line| !line.starts_with("[WARN ] this kernel"))
        .map(str::to_owned)
        .collect()
}

/// Exit `code` with exactly one line on stderr, memtrace's own, containing `needle`.
#[track_caller]
fn assert_one_line(out: &Output, code: i32, needle: &str) {
    let lines = stderr_lines(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "one line expected: {lines:?}");
    assert!(
        lines[0].starts_with("memtrace: ") && lines[0].contains(needle),
        "expected `{needle}`: {lines:?}"
    );
}

/// Exit 2 from clap's own parser: its standard `error:` line first, with the offending flag.
#[track_caller]
fn assert_clap_usage(out: &Output, needle: &str) {
    let lines = stderr_lines(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {lines:?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "expected `{needle}` on the first line: {lines:?}"
    );
    assert!(out.stdout.is_empty());
}

/// memtrace without any capability, even when the test runs as root: an empty bounding set
/// leaves uid 0 with no capability after exec (and no CAP_DAC_OVERRIDE either).
fn unprivileged(args: &[&str]) -> Output {
    common::memtrace_without_capabilities()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run memtrace")
}

#[test]
fn usage_errors_found_by_the_parser_are_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "subcommand"),
        (&["nosuch"], "nosuch"),
        (&["faults", "--pid", "1", "--", "true"], "--pid"),
        (&["faults", "--comm", "x", "--pid", "1"], "--comm"),
        (&["faults", "--comm", "x", "--", "true"], "--comm"),
        (&["faults", "--pid", "0"], "--pid"),
        (&["faults", "--pid", "abc"], "--pid"),
        (&["faults", "--interval", "0"], "--interval"),
        (&["faults", "--interval", "-1"], "--interval"),
        (&["faults", "--duration", "-1"], "--duration"),
        (&["faults", "--duration", "abc"], "--duration"),
        (&["faults", "--duration", "inf"], "--duration"),
        (&["faults", "--top", "0"], "--top"),
        (&["faults", "--top", "3", "--pid", "1"], "--top"),
        (&["faults", "--nosuch"], "--nosuch"),
        (&["trace", "--pid", "1", "--", "true"], "--pid"),
        (&["trace", "--min-size", "-5"], "--min-size"),
        (&["trace", "--min-size", "lots"], "--min-size"),
        (&["trace", "--comm", "x"], "--comm"),
        (&["oom", "--count", "0"], "--count"),
        (&["oom", "--count", "-1"], "-1"),
        (&["oom", "--pid", "1"], "--pid"),
        (&["oom", "--history", "1.5"], "--history"),
        (&["oom", "--history", "7200"], "--history"),
        (&["serve", "--history", "10"], "required arguments"),
        (&["pressure", "--by", "thread"], "--by"),
        (&["pressure", "--pid", "1", "--", "true"], "--pid"),
        (&["pressure", "--interval", "0"], "--interval"),
        (&["faults", "--stacks", "--threads"], "--threads"),
        (&["faults", "--by", "nosuch"], "--by"),
        (&["faults", "--stacks", "--folded", "--json"], "--json"),
        (&["faults", "--stacks", "--max-stacks", "0"], "--max-stacks"),
        (&["trace", "--kernel-stack"], "required arguments"),
        (&["trace", "--max-stacks", "5"], "required arguments"),
        (
            &["leaks", "--sample", "10", "--pid", "1"],
            "required arguments",
        ),
        (
            &["leaks", "--malloc", "--sample", "0", "--pid", "1"],
            "--sample",
        ),
    ];
    for (args, needle) in cases {
        let out = unprivileged(args);
        assert_clap_usage(&out, needle);
    }
}

#[test]
fn usage_errors_found_by_memtrace_are_one_line_exit_2() {
    let long = "0123456789abcdef";
    let cases: &[(&[&str], &str)] = &[
        (&["faults", "--comm", ""], "--comm"),
        (&["faults", "--comm", long], "1 to 15 bytes"),
        (
            &["trace", "-e", "mmap,open"],
            "unknown syscall `open`; valid: brk",
        ),
        (&["trace", "-e", ""], "-e: no syscall named"),
        (&["trace", "-e", ","], "-e: no syscall named"),
        (&["trace", "-f"], "-f/--follow"),
        (&["faults", "--folded"], "add --stacks"),
        (&["leaks"], "leaks needs --pid PID or a COMMAND"),
        (&["faults", "--flamegraph", "x.svg"], "add --stacks"),
        (&["faults", "--pprof", "x.pb.gz"], "add --stacks"),
        (
            &["faults", "--by", "file", "--pprof", "x.pb.gz"],
            "add --stacks",
        ),
        (&["trace", "-k", "--pprof", "x.pb.gz"], "add -c --stack"),
        (&["trace", "-c", "--pprof", "x.pb.gz"], "add -c --stack"),
        (
            &["oom", "--cgroup", "/memtrace-no-such-cgroup"],
            "no such cgroup",
        ),
        // Its standard streams are pipes here, not a terminal.
        (
            &["top"],
            "memtrace top draws a live screen and needs a terminal",
        ),
    ];
    for (args, needle) in cases {
        // Without privileges: a usage error must not need them to be found.
        assert_one_line(&unprivileged(args), 2, needle);
    }
    // A regular file is not a cgroup.
    let file = scratch("not-a-cgroup");
    fs::write(&file, "").unwrap();
    let out = unprivileged(&["oom", "--cgroup", file.to_str().unwrap()]);
    assert_one_line(&out, 2, "no such cgroup");
}

#[test]
fn unwritable_output_is_exit_2_for_every_subcommand() {
    let missing_dir = scratch("no-such-dir/report");
    let _ = fs::remove_dir_all(missing_dir.parent().unwrap());
    let dir = scratch("a-directory");
    fs::create_dir_all(&dir).unwrap();
    let read_only = scratch("read-only");
    fs::write(&read_only, "keep").unwrap();
    fs::set_permissions(&read_only, fs::Permissions::from_mode(0o444)).unwrap();

    for subcommand in ["faults", "trace", "pressure", "oom"] {
        for target in [&missing_dir, &dir, &read_only] {
            let out = unprivileged(&[subcommand, "-o", target.to_str().unwrap()]);
            assert_one_line(&out, 2, &format!("cannot write to {}", target.display()));
        }
    }
    // The flame graph's and the profile's files are checked at start too, not after tracing.
    let missing = missing_dir.to_str().unwrap();
    for args in [
        &["faults", "--stacks", "--flamegraph", missing][..],
        &["faults", "--stacks", "--pprof", missing],
        &["trace", "-c", "-k", "--pprof", missing],
        &["leaks", "--pid", "1", "--pprof", missing],
        &["leaks", "--malloc", "--pid", "1", "--pprof", missing],
    ] {
        let out = unprivileged(args);
        assert_one_line(
            &out,
            2,
            &format!("cannot write to {}", missing_dir.display()),
        );
    }
    assert_eq!(fs::read_to_string(&read_only).unwrap(), "keep");
    assert!(!missing_dir.parent().unwrap().exists());
}

#[test]
fn not_privileged_is_exit_3_for_every_subcommand() {
    for args in [
        &["faults"][..],
        &["trace"],
        &["oom"],
        &["pressure"],
        &["faults", "--", "true"],
    ] {
        let out = unprivileged(args);
        assert_one_line(
            &out,
            3,
            "needs root, or the capabilities CAP_BPF and CAP_PERFMON",
        );
    }
}

#[test]
fn help_and_version_are_exit_0() {
    for args in [
        &["--help"][..],
        &["--version"],
        &["faults", "--help"],
        &["trace", "-h"],
        &["oom", "--help"],
        &["pressure", "--help"],
    ] {
        let out = run_memtrace(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(out.stderr.is_empty() && !out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn no_such_process_is_exit_4() {
    require_root!();
    let pid = unused_pid().to_string();
    for subcommand in ["faults", "trace"] {
        let out = run_memtrace(&[subcommand, "--pid", &pid]);
        assert_one_line(&out, 4, &format!("no such process: {pid}"));
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_command_that_cannot_run_is_exit_126_or_127() {
    require_root!();
    let not_executable = scratch("not-executable");
    fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&not_executable, fs::Permissions::from_mode(0o644)).unwrap();
    for subcommand in ["faults", "trace", "leaks --malloc"] {
        let subcommand: Vec<&str> = subcommand.split(' ').collect();
        let run = |command: &str| {
            let mut args = subcommand.clone();
            args.extend(["--", command]);
            run_memtrace(&args)
        };
        let out = run("/memtrace/no/such/command");
        assert_one_line(&out, 127, "cannot run `/memtrace/no/such/command`");
        let out = run(not_executable.to_str().unwrap());
        assert_one_line(&out, 126, "Permission denied");
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_command_s_status_is_memtrace_s_and_a_normal_end_is_exit_0() {
    require_root!();
    for subcommand in ["faults", "trace"] {
        let out = run_memtrace(&[subcommand, "--json", "--", "sh", "-c", "exit 7"]);
        assert_eq!(
            out.status.code(),
            Some(7),
            "{subcommand}: {:?}",
            stderr_lines(&out)
        );
        let out = run_memtrace(&[subcommand, "--json", "--", "sh", "-c", "kill -9 $$"]);
        assert_eq!(out.status.code(), Some(128 + 9), "{subcommand}");
        let out = run_memtrace(&[subcommand, "--json", "--", "true"]);
        assert_eq!(out.status.code(), Some(0), "{subcommand}");
        assert!(stderr_lines(&out).is_empty(), "{:?}", stderr_lines(&out));
    }
    let out = run_memtrace(&["faults", "--json", "--duration", "0.2"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", stderr_lines(&out));
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_failure_while_running_is_exit_1_with_one_line() {
    require_root!();
    // /dev/full opens, then refuses every write (ENOSPC): an unexpected runtime failure.
    for args in [
        &["faults", "--json", "-o", "/dev/full", "--duration", "0.3"][..],
        &["trace", "--json", "-o", "/dev/full", "--", "true"],
        &["oom", "--json", "-o", "/dev/full"],
    ] {
        let out = run_memtrace(args);
        assert_one_line(&out, 1, "write the report: No space left on device");
    }
}

#[test]
fn man_pages_render_without_warnings_and_completions_parse() {
    require_tool!("groff");
    let dir = scratch("generated");
    let _ = fs::remove_dir_all(&dir);
    for what in ["man", "completions"] {
        let output = common::memtrace()
            .args(["generate", what])
            .arg(dir.join(what))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let mut pages = 0;
    for page in fs::read_dir(dir.join("man")).unwrap() {
        let page = page.unwrap().path();
        let output = std::process::Command::new("groff")
            .args(["-man", "-ww", "-z"])
            .arg(&page)
            .output()
            .unwrap();
        let warnings = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && warnings.is_empty(),
            "{page:?}: {warnings}"
        );
        pages += 1;
    }
    // memtrace(1) and one page per subcommand (faults, trace, oom, pressure, serve, leaks, top).
    assert_eq!(pages, 8);
    let bash = std::process::Command::new("bash")
        .arg("-n")
        .arg(dir.join("completions/memtrace.bash"))
        .output()
        .unwrap();
    assert!(bash.status.success(), "{bash:?}");
}
