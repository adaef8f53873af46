//! The rows of the benchmark table (issue 6): which workload, at which size, under which
//! modes. The how-to-measure lives in `measure`; this module only says what.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result};
use clap::ValueEnum;

use super::{
    Suite,
    cgroup::BenchCgroup,
    measure, memory,
    runner::{self, Mode, Ready, Workload},
    stack_report, startup,
};

/// A row of the suite, as named by `--only`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Row {
    /// Minor faults, 1 thread (`faults --pid`) and 2 threads (`faults` system-wide)
    Faults,
    /// brk/mmap/munmap calls under `trace` (human, JSON, -c), strace, perf trace, bpftrace
    Trace,
    /// A `dd bs=1`-like storm of syscalls `trace` does not trace, while `trace` runs
    Untraced,
    /// `trace --json -o FILE` at increasing call rates: records/s and drops
    Storm,
    /// Start-up and teardown: whole runs on /bin/true beside strace, perf trace and bpftrace,
    /// until the kernel has released everything, and launch-to-ready of every command
    Startup,
    /// Kernel memory each command holds, here and computed for 64 and 192 CPUs
    Memory,
    /// `memtrace serve`: its own CPU and RSS idle, and the fault workload's cost while it runs
    Daemon,
    /// `memtrace pressure` on a reader reclaiming at its cgroup's limit, beside drsnoop
    Pressure,
    /// `memtrace oom` left waiting (sampling victims' histories) on the fault and allocation
    /// workloads, and its own CPU and RSS idle
    Oom,
    /// Minor faults (no frame pointers) counted per user stack (`faults --stacks --folded`), per
    /// mapping and per file, beside perf record's DWARF call graphs and bpftrace's ustack
    Stacks,
    /// brk/mmap/munmap calls under `trace --stack` beside `trace` and `trace -c`, and, on a
    /// workload small enough for it, beside `strace -k`
    TraceStacks,
    /// A report of 16384 distinct stacks (`faults --stacks --folded -o FILE -- COMMAND`): the
    /// time from the command's exit to memtrace's, beside perf record + perf script
    DistinctStacks,
    /// malloc/free churn under `leaks --malloc` beside empty uprobes on the same functions,
    /// heaptrack and valgrind; and memtrace's memory with 1M blocks outstanding
    Malloc,
    /// `memtrace top` beside htop, each redrawing every second in a tmux terminal: their own CPU
    /// share and RSS, idle and while the fault workload runs
    Top,
}

impl Row {
    pub fn run(self, suite: &Suite) -> Result<String> {
        match self {
            Row::Faults => faults(suite),
            Row::Trace => trace(suite),
            Row::Untraced => untraced(suite),
            Row::Storm => storm(suite),
            Row::Startup => startup(suite),
            Row::Memory => memory(suite),
            Row::Daemon => daemon(suite),
            Row::Pressure => pressure(suite),
            Row::Oom => oom(suite),
            Row::Stacks => stacks(suite),
            Row::TraceStacks => trace_stacks(suite),
            Row::DistinctStacks => distinct_stacks(suite),
            Row::Malloc => malloc(suite),
            Row::Top => top(suite),
        }
    }
}

fn faults(suite: &Suite) -> Result<String> {
    let faults: u64 = if suite.quick { 200_000 } else { 1_000_000 };
    let binary = suite.compile("fault_loop")?;
    let one = measure::overhead(
        suite,
        &format!("{faults} minor faults, 1 thread — memtrace faults --pid"),
        &Workload {
            binary: binary.clone(),
            args: vec![faults.to_string(), "1".into()],
        },
        &fault_modes(suite, &["faults", "--pid", "{pid}"]),
    )?;
    let two = measure::overhead(
        suite,
        &format!("{faults} minor faults, 2 threads — memtrace faults (system-wide)"),
        &Workload {
            binary,
            args: vec![faults.to_string(), "2".into()],
        },
        &fault_modes(suite, &["faults"]),
    )?;
    Ok(format!("{one}\n{two}"))
}

/// Untraced, memtrace, and the peers that count or trace page faults.
fn fault_modes(suite: &Suite, memtrace_args: &[&str]) -> Vec<Mode> {
    let mut memtrace_args = memtrace_args.to_vec();
    memtrace_args.extend(["-o", "/dev/null"]);
    vec![
        Mode::untraced(),
        Mode::traced(
            "memtrace",
            suite.memtrace(&memtrace_args),
            Ready::StderrLine("memtrace: counting"),
        ),
        Mode::traced(
            "perf stat -e minor-faults,major-faults (counting)",
            words(&[
                "perf",
                "stat",
                "-e",
                "minor-faults,major-faults",
                "-p",
                "{pid}",
            ]),
            Ready::After(Duration::from_millis(500)),
        ),
        empty_fault_program(),
        Mode::traced(
            "bpftrace software:minor-faults:1 count",
            words(&[
                "bpftrace",
                "-e",
                "BEGIN { printf(\"ready\\n\"); } software:minor-faults:1 /pid == {pid}/ { @[comm] = count(); }",
            ]),
            Ready::StdoutLine("ready"),
        ),
        Mode::traced(
            "perf trace -F min",
            words(&[
                "perf",
                "trace",
                "--no-syscalls",
                "-F",
                "min",
                "-p",
                "{pid}",
                "-o",
                "/dev/null",
            ]),
            // perf trace prints nothing when attached.
            Ready::After(Duration::from_millis(1500)),
        )
        .slow(),
    ]
}

/// The floor any tracer of page faults pays: bpftrace with an empty program on the perf
/// software event memtrace's fault programs run on.
fn empty_fault_program() -> Mode {
    Mode::traced(
        "floor: bpftrace, empty program on software:minor-faults:1",
        words(&[
            "bpftrace",
            "-e",
            "BEGIN { printf(\"ready\\n\"); } software:minor-faults:1 { }",
        ]),
        Ready::StdoutLine("ready"),
    )
}

/// Faults attributed to their user stacks, mappings and files, against counting them alone, on
/// a workload built without frame pointers: its stacks can only be unwound from the call frame
/// information (`.eh_frame`), as memtrace does, as perf record does from the 8 KiB of stack it
/// copies per sample, and as bpftrace's `ustack` (frame pointers) cannot, past the first frame.
/// memtrace counts system-wide, as in the `faults` row; the peers follow the workload's pid.
fn stacks(suite: &Suite) -> Result<String> {
    let faults: u64 = if suite.quick { 200_000 } else { 1_000_000 };
    let binary = suite.compile_with("fault_loop", "fault_loop_nofp", &["-fomit-frame-pointer"])?;
    let workload = Workload {
        binary,
        args: vec![faults.to_string(), "2".into()],
    };
    let counting = |label: &str, args: &[&str]| {
        Mode::traced(
            label,
            suite.memtrace(&[&["faults"], args].concat()),
            Ready::StderrLine("memtrace: counting"),
        )
    };
    // Not `{out}`, which the runner reads back whole: a million faults with their stacks are
    // gigabytes of perf.data.
    let perf_data = suite.dir.join("stacks-perf.data");
    let perf_record = perf_record_dwarf(&perf_data);
    let modes = [
        Mode::untraced(),
        counting("memtrace faults (system-wide)", &["-o", "/dev/null"]),
        counting(
            "memtrace faults --stacks --folded -o FILE",
            &["--stacks", "--folded", "-o", "{out}"],
        ),
        counting(
            "memtrace faults --by mapping",
            &["--by", "mapping", "-o", "/dev/null"],
        ),
        counting(
            "memtrace faults --by file",
            &["--by", "file", "-o", "/dev/null"],
        ),
        empty_fault_program(),
        Mode::traced(
            "bpftrace software:page-faults:1 @[ustack] = count()",
            words(&[
                "bpftrace",
                "-e",
                "BEGIN { printf(\"ready\\n\"); } software:page-faults:1 /pid == {pid}/ { @[ustack] = count(); }",
            ]),
            Ready::StdoutLine("ready"),
        ),
        perf_record.clone(),
    ];
    let title = format!(
        "{faults} minor faults, 2 threads, no frame pointers — memtrace faults --stacks, --by \
         mapping, --by file (system-wide)"
    );
    let table = measure::overhead(suite, &title, &workload, &modes)?;

    // What perf record kept and wrote, in one more run: its stderr's last line (in `{out}`)
    // and its file's size.
    let run = runner::run_once(&workload, &perf_record, &suite.dir, None)
        .with_context(|| format!("{title}: perf.data size"))?;
    let bytes = std::fs::metadata(&perf_data).map(|meta| meta.len());
    let _ = std::fs::remove_file(&perf_data);
    let _ = std::fs::remove_file(perf_data.with_extension("data.old"));
    let samples = run
        .last_output_line
        .as_deref()
        .and_then(measure::parse_perf_record_samples);
    let kept = match (samples, run.count) {
        (Some(samples), Some(faults)) if faults > 0 => format!(
            "; it wrote {samples} samples for the workload's {faults} faults ({:.0} %), losing \
             the rest (its reader does not keep up)",
            samples as f64 / faults as f64 * 100.0
        ),
        _ => String::new(),
    };
    let size = match bytes {
        Ok(bytes) => format!("{:.0} MB", bytes as f64 / 1e6),
        Err(err) => format!("unknown ({err})"),
    };
    Ok(format!(
        "{table}\nperf record's perf.data, in one more run: {size}{kept}.\n"
    ))
}

/// `perf record` sampling every page fault with its user stack copied for DWARF unwinding,
/// writing to `data` (any earlier file, and perf's `.old` copy of it, removed first); its stderr
/// goes to `{out}`, whose last line says how many samples it wrote.
fn perf_record_dwarf(data: &std::path::Path) -> Mode {
    Mode::traced(
        "perf record -c 1 -e page-faults --call-graph dwarf",
        words(&[
            "sh",
            "-c",
            "rm -f \"$1\" \"$1.old\"; exec perf record -c 1 -e page-faults --call-graph dwarf \
             -p \"$2\" -o \"$1\" 2>\"$3\"",
            "sh",
            &data.to_string_lossy(),
            "{pid}",
            "{out}",
        ]),
        // perf record prints nothing when attached.
        Ready::After(Duration::from_millis(1500)),
    )
}

/// The allocation syscalls `alloc_loop` makes, as the peers name them.
const ALLOC_SYSCALLS: &str = "brk,mmap,munmap";

/// The syscalls `memtrace trace` traces by default.
const DEFAULT_SYSCALLS: &str = "brk,mmap,munmap,mremap,mprotect,madvise";

/// The floor any tracer of `syscalls` on their tracepoints pays: bpftrace with empty programs
/// on each one's `sys_enter_*` and `sys_exit_*` (the pairing memtrace needs for latency).
fn empty_syscall_programs(syscalls: &str) -> Mode {
    let probes = empty_syscall_probes(syscalls);
    Mode::traced(
        "floor: bpftrace, empty programs on sys_enter_*/sys_exit_*",
        words(&[
            "bpftrace",
            "-e",
            &format!("BEGIN {{ printf(\"ready\\n\"); }} {probes} {{ }}"),
        ]),
        Ready::StdoutLine("ready"),
    )
}

fn trace(suite: &Suite) -> Result<String> {
    // 810k calls take ~1.8 s untraced here; strace then takes over a minute, so --quick is
    // smaller and runs strace and perf trace once.
    let calls: u64 = if suite.quick { 100_000 } else { 810_000 };
    let exits = ALLOC_SYSCALLS
        .split(',')
        .map(|name| format!("tracepoint:syscalls:sys_exit_{name}"))
        .collect::<Vec<_>>()
        .join(", ");
    let bpftrace_printf = format!(
        "BEGIN {{ printf(\"ready\\n\"); }} {exits} /pid == {{pid}}/ {{ printf(\"%s %d %s = %d\\n\", comm, tid, probe, args->ret); }}"
    );
    let bpftrace_count = format!(
        "BEGIN {{ printf(\"ready\\n\"); }} {exits} /pid == {{pid}}/ {{ @[probe] = count(); }}"
    );
    let modes = [
        Mode::untraced(),
        Mode::traced(
            "memtrace trace (every call printed, human)",
            suite.memtrace(&["trace", "--pid", "{pid}", "-o", "/dev/null"]),
            Ready::StderrLine("memtrace: tracing"),
        ),
        Mode::traced(
            "memtrace trace --json -o FILE",
            suite.memtrace(&["trace", "--json", "--pid", "{pid}", "-o", "{out}"]),
            Ready::OutputFileLine(JSON_START),
        ),
        Mode::traced(
            "memtrace trace -c (counting)",
            suite.memtrace(&["trace", "-c", "--pid", "{pid}", "-o", "/dev/null"]),
            Ready::StderrLine("memtrace: tracing"),
        ),
        empty_syscall_programs(ALLOC_SYSCALLS),
        Mode::traced(
            "bpftrace printf per call (stdout drained)",
            words(&["bpftrace", "-e", &bpftrace_printf]),
            Ready::StdoutLine("ready"),
        ),
        Mode::traced(
            "bpftrace count",
            words(&["bpftrace", "-e", &bpftrace_count]),
            Ready::StdoutLine("ready"),
        ),
        Mode::traced(
            format!("strace -f -e trace={ALLOC_SYSCALLS}"),
            words(&[
                "strace",
                "-f",
                "-e",
                &format!("trace={ALLOC_SYSCALLS}"),
                "-p",
                "{pid}",
                "-o",
                "/dev/null",
            ]),
            Ready::StderrLine("strace: Process"),
        )
        .slow(),
        Mode::traced(
            format!("perf trace -e {ALLOC_SYSCALLS}"),
            words(&[
                "perf",
                "trace",
                "-e",
                ALLOC_SYSCALLS,
                "-p",
                "{pid}",
                "-o",
                "/dev/null",
            ]),
            Ready::After(Duration::from_millis(1500)),
        )
        .slow(),
    ];
    measure::overhead(
        suite,
        &format!("{calls} brk/mmap/munmap calls — memtrace trace --pid"),
        &Workload {
            binary: suite.compile("alloc_loop")?,
            args: vec![calls.to_string()],
        },
        &modes,
    )
}

/// Each allocation call with its user stack, against the same calls without: two tables, as
/// `strace -k` (~900× untraced here: its unwinding reads the tracee's memory through ptrace)
/// cannot run on the `trace` row's workload. The first, at the `trace` row's size, for memtrace's
/// own modes; the second at a size where strace -k takes about 20 s, for the peers.
fn trace_stacks(suite: &Suite) -> Result<String> {
    let binary = suite.compile("alloc_loop")?;
    let workload = |calls: u64| Workload {
        binary: binary.clone(),
        args: vec![calls.to_string()],
    };
    let tracing = |label: &str, args: &[&str]| {
        Mode::traced(
            label,
            suite.memtrace(&[&["trace", "--pid", "{pid}", "-o", "/dev/null"], args].concat()),
            Ready::StderrLine("memtrace: tracing"),
        )
    };
    let stack = || tracing("memtrace trace --stack (every call printed)", &["--stack"]);
    let calls: u64 = if suite.quick { 100_000 } else { 810_000 };
    let own = measure::overhead(
        suite,
        &format!("{calls} brk/mmap/munmap calls — memtrace trace --stack --pid"),
        &workload(calls),
        &[
            Mode::untraced(),
            tracing("memtrace trace -c (counting)", &["-c"]),
            tracing("memtrace trace (every call printed, human)", &[]),
            stack(),
            Mode::traced(
                "memtrace leaks (mapping level, report every 5 s)",
                suite.memtrace(&["leaks", "--pid", "{pid}", "-o", "/dev/null"]),
                Ready::StderrLine("memtrace: watching"),
            ),
            empty_syscall_programs(ALLOC_SYSCALLS),
        ],
    )?;
    // strace -k: ~0.7 ms a call here, so 27,000 calls take ~19 s (9,000 with --quick).
    let calls: u64 = if suite.quick { 9_000 } else { 27_000 };
    let strace = |label: String, stacks: bool| {
        let mut argv = words(&["strace"]);
        if stacks {
            argv.push("-k".into());
        }
        argv.extend(words(&[
            "-f",
            "-e",
            &format!("trace={ALLOC_SYSCALLS}"),
            "-p",
            "{pid}",
            "-o",
            "/dev/null",
        ]));
        Mode::traced(label, argv, Ready::StderrLine("strace: Process"))
    };
    let peers = measure::overhead(
        suite,
        &format!("{calls} brk/mmap/munmap calls — memtrace trace --stack --pid beside strace -k"),
        &workload(calls),
        &[
            Mode::untraced(),
            stack(),
            strace(format!("strace -f -e trace={ALLOC_SYSCALLS}"), false),
            strace(format!("strace -k -f -e trace={ALLOC_SYSCALLS}"), true).slow(),
        ],
    )?;
    Ok(format!("{own}\n{peers}"))
}

/// The allocator functions `leaks --malloc` puts uprobes on (glibc's `memalign` is
/// `aligned_alloc`'s address: one breakpoint), and those it also puts uretprobes on.
const ALLOCATOR_FUNCTIONS: [&str; 9] = [
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "posix_memalign",
    "aligned_alloc",
    "valloc",
    "pvalloc",
    "free",
];

/// The C library this process maps (the workloads map the same one).
fn libc_path() -> Result<String> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("/libc.so"))
        .map(str::to_owned)
        .context("no libc.so in /proc/self/maps")
}

/// The floor of any uprobe-based allocator tracer: bpftrace with empty programs on the same
/// uprobes and uretprobes as `leaks --malloc`, for the one process.
fn empty_allocator_probes(libc: &str) -> Mode {
    let on = |kind: &str, functions: &[&str]| {
        functions
            .iter()
            .map(|f| format!("{kind}:{libc}:{f}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let entries = on("uprobe", &ALLOCATOR_FUNCTIONS);
    let returns = on("uretprobe", &ALLOCATOR_FUNCTIONS[..8]);
    Mode::traced(
        "floor: bpftrace, empty uprobes + uretprobes on the same functions",
        words(&[
            "bpftrace",
            "-p",
            "{pid}",
            "-e",
            &format!("BEGIN {{ printf(\"ready\\n\"); }} {entries} {{ }} {returns} {{ }}"),
        ]),
        Ready::StdoutLine("ready"),
    )
}

/// `leaks --malloc` on a malloc/free churn, beside the floor and the tools that need the
/// program restarted under them; then its memory with a million blocks outstanding.
fn malloc(suite: &Suite) -> Result<String> {
    let binary = suite.compile("malloc_loop")?;
    let calls: u64 = if suite.quick { 200_000 } else { 1_000_000 };
    let workload = Workload {
        binary: binary.clone(),
        args: vec![calls.to_string()],
    };
    let libc = libc_path()?;
    let leaks = |label: &str, extra: &[&str]| {
        Mode::traced(
            label,
            suite.memtrace(
                &[
                    &["leaks", "--malloc", "--pid", "{pid}", "-o", "/dev/null"],
                    extra,
                ]
                .concat(),
            ),
            Ready::StderrLine("memtrace: watching"),
        )
    };
    let churn = measure::overhead(
        suite,
        &format!("{calls} malloc/free calls — memtrace leaks --malloc --pid"),
        &workload,
        &[
            Mode::untraced(),
            empty_allocator_probes(&libc),
            leaks("memtrace leaks --malloc (report every 5 s)", &[]),
            leaks("memtrace leaks --malloc --sample 100", &["--sample", "100"]),
            Mode::wrapped(
                "heaptrack (LD_PRELOAD: program restarted under it)",
                words(&["heaptrack", "-o", "{out}"]),
            ),
            Mode::wrapped(
                "valgrind memcheck (program restarted under it)",
                words(&["valgrind", "-q", "--leak-check=full"]),
            ),
        ],
    )?;
    let memory = million_outstanding(suite, &binary)?;
    Ok(format!("{churn}\n{memory}"))
}

/// memtrace's own RSS and the kernel's table with 1M blocks outstanding, and how long its last
/// report (reading and summing them all) takes once told to stop.
fn million_outstanding(suite: &Suite, binary: &std::path::Path) -> Result<String> {
    use std::io::{BufRead as _, Write as _};
    const KEEP: u64 = 1_000_000;
    if !suite.runs(Some(&suite.memtrace(&[]))) {
        return Ok(String::new());
    }
    let mut work = std::process::Command::new(binary);
    let mut work = runner::dies_with_bench(&mut work, libc::SIGKILL)
        .args(["0", &KEEP.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut lines = std::io::BufReader::new(work.stdout.take().context("workload stdout")?);
    let mut line = String::new();
    lines.read_line(&mut line)?;
    let out = suite.dir.join("malloc-million.json");
    let _ = std::fs::remove_file(&out);
    let argv = suite.memtrace(&[
        "leaks",
        "--malloc",
        "--json",
        "--pid",
        "{pid}",
        "-o",
        "{out}",
        "--interval",
        "2",
        "--max-allocations",
        "2000000",
    ]);
    let tracer = runner::start(
        &runner::expand(&argv, work.id(), &out),
        Ready::OutputFileLine("{"),
        &out,
    )?;
    let stdin = work.stdin.as_mut().context("workload stdin")?;
    writeln!(stdin, "go")?;
    line.clear();
    lines.read_line(&mut line)?;
    // Two interval reports, each reading the whole table.
    std::thread::sleep(Duration::from_millis(4500));
    let (_, rss) = usage(tracer.id())?;
    let hwm = std::fs::read_to_string(format!("/proc/{}/status", tracer.id()))?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .unwrap_or(0);
    let asked = std::time::Instant::now();
    runner::stop(tracer)?;
    let last_report = asked.elapsed();
    writeln!(work.stdin.as_mut().context("workload stdin")?, "exit")?;
    work.wait()?;
    let text = std::fs::read_to_string(&out)?;
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))?;
    let blocks = last["total_blocks"].as_u64().unwrap_or(0);
    let table = last["malloc"]["table_bytes"].as_u64().unwrap_or(0);
    Ok(format!(
        "### 1M blocks outstanding — memtrace leaks --malloc --pid\n\n\
         | blocks seen | memtrace RSS | memtrace peak RSS | kernel table (memlock) | final report after Ctrl-C |\n\
         |---|---|---|---|---|\n\
         | {blocks} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} s |\n",
        rss as f64 / 1024.0 / 1024.0,
        hwm as f64 / 1024.0,
        table as f64 / 1024.0 / 1024.0,
        last_report.as_secs_f64(),
    ))
}

/// Symbolizing a report of many distinct stacks: a workload whose 16384 call paths (14 levels
/// of two functions each) each take one fault, built -O2 -g without frame pointers, run to its
/// end under each tool, which then has 16384 distinct stacks to symbolize and write.
fn distinct_stacks(suite: &Suite) -> Result<String> {
    let binary = suite.compile_with(
        "distinct_stacks",
        "distinct_stacks",
        &["-g", "-fomit-frame-pointer"],
    )?;
    let workload = binary.to_string_lossy().into_owned();
    let command = |tool: &[&str]| {
        let mut argv = words(tool);
        argv.extend([workload.clone(), "{stamp}".into()]);
        argv
    };
    let tools = [
        stack_report::Tool {
            label: "untraced".into(),
            argv: command(&[]),
            stacks: stack_report::Stacks::None,
        },
        stack_report::Tool {
            label: "memtrace faults --stacks --folded -o FILE -- COMMAND".into(),
            argv: [
                suite.memtrace(&["faults", "--stacks", "--folded", "-o", "{out}", "--"]),
                command(&[]),
            ]
            .concat(),
            stacks: stack_report::Stacks::Folded,
        },
        stack_report::Tool {
            label: "perf record -c 1 -e page-faults --call-graph dwarf, then perf script".into(),
            argv: command(&[
                "perf",
                "record",
                "-q",
                "-c",
                "1",
                "-e",
                "page-faults",
                "--call-graph",
                "dwarf",
                "-o",
                "{data}",
                "--",
            ]),
            stacks: stack_report::Stacks::PerfScript,
        },
    ];
    stack_report::table(
        suite,
        "16384 distinct stacks, one fault each — memtrace faults --stacks --folded",
        &tools,
        "touch_page",
    )
}

/// What memtrace trace --json writes first, once attached.
const JSON_START: &str = "{\"type\":\"start\"";

fn untraced(suite: &Suite) -> Result<String> {
    // dd bs=1 count=1M: 1M reads and 1M writes, ~0.5 s untraced, so --quick keeps the size.
    let steps: u64 = 1 << 20;
    measure::overhead(
        suite,
        &format!(
            "{} syscalls memtrace does not trace (dd bs=1 count={steps}) — memtrace trace system-wide",
            2 * steps
        ),
        &Workload {
            binary: suite.compile("syscall_storm")?,
            args: vec![steps.to_string()],
        },
        &[
            Mode::untraced(),
            Mode::traced(
                "memtrace trace (system-wide)",
                suite.memtrace(&["trace", "-o", "/dev/null"]),
                Ready::StderrLine("memtrace: tracing"),
            ),
            empty_syscall_programs(DEFAULT_SYSCALLS),
        ],
    )
}

fn storm(suite: &Suite) -> Result<String> {
    let binary = suite.compile("paced_calls")?;
    let (rates, seconds): (&[Option<u64>], &str) = if suite.quick {
        (&[Some(100_000), None], "1")
    } else {
        (
            &[
                Some(50_000),
                Some(100_000),
                Some(200_000),
                Some(400_000),
                Some(800_000),
                None,
            ],
            "3",
        )
    };
    let threads = "2";
    let levels: Vec<(Option<u64>, Workload)> = rates
        .iter()
        .map(|&rate| {
            let workload = Workload {
                binary: binary.clone(),
                args: vec![
                    rate.unwrap_or(0).to_string(),
                    seconds.into(),
                    threads.into(),
                ],
            };
            (rate, workload)
        })
        .collect();
    measure::storm(
        suite,
        "Event storm — memtrace trace --json --pid -o FILE",
        &format!(
            "{threads} threads making mmap+munmap pairs at each target rate for {seconds} s, \
             one run per rate; records and drops from memtrace's JSON summary (records also count \
             the few calls made outside the timed loop, for thread stacks); \
             \"unaccounted\" = calls − records − dropped (must be 0)"
        ),
        &Mode::traced(
            "memtrace trace --json -o FILE",
            suite.memtrace(&["trace", "--json", "--pid", "{pid}", "-o", "{out}"]),
            Ready::OutputFileLine(JSON_START),
        ),
        &levels,
    )
}

/// The enter and exit tracepoints of `syscalls` (`trace`'s hooks), as bpftrace names them.
fn empty_syscall_probes(syscalls: &str) -> String {
    syscalls
        .split(',')
        .flat_map(|name| {
            [
                format!("tracepoint:syscalls:sys_enter_{name}"),
                format!("tracepoint:syscalls:sys_exit_{name}"),
            ]
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn startup(suite: &Suite) -> Result<String> {
    let runs = if suite.quick { 5 } else { 11 };
    let whole = |label: &str, argv: Vec<String>| startup::Whole {
        label: label.into(),
        argv,
    };
    let probes = empty_syscall_probes(DEFAULT_SYSCALLS);
    let memtrace_trace = whole(
        "memtrace trace -- /bin/true",
        suite.memtrace(&["trace", "-o", "/dev/null", "--", "/bin/true"]),
    );
    let tools = [
        whole("memtrace trace -- /bin/true", memtrace_trace.argv.clone()),
        whole(
            "memtrace trace -c -- /bin/true",
            suite.memtrace(&["trace", "-c", "-o", "/dev/null", "--", "/bin/true"]),
        ),
        whole(
            "memtrace faults -- /bin/true",
            suite.memtrace(&["faults", "-o", "/dev/null", "--", "/bin/true"]),
        ),
        whole(
            "memtrace oom --duration 0.05",
            suite.memtrace(&["oom", "-o", "/dev/null", "--duration", "0.05"]),
        ),
        whole(
            "memtrace pressure --duration 0.05",
            suite.memtrace(&["pressure", "-o", "/dev/null", "--duration", "0.05"]),
        ),
        whole(
            "strace -f -e trace=%memory /bin/true",
            words(&[
                "strace",
                "-f",
                "-o",
                "/dev/null",
                "-e",
                "trace=%memory",
                "/bin/true",
            ]),
        ),
        whole(
            &format!("perf trace -e {DEFAULT_SYSCALLS} -- /bin/true"),
            words(&[
                "perf",
                "trace",
                "-o",
                "/dev/null",
                "-e",
                DEFAULT_SYSCALLS,
                "--",
                "/bin/true",
            ]),
        ),
        whole(
            "floor: bpftrace, empty programs on trace's 12 tracepoints, -c /bin/true",
            words(&[
                "bpftrace",
                "-e",
                &format!("{probes} {{ }}"),
                "-c",
                "/bin/true",
            ]),
        ),
        whole(
            "floor: bpftrace, empty program on oom:mark_victim, -c 'sleep 0.05'",
            words(&[
                "bpftrace",
                "-e",
                "tracepoint:oom:mark_victim { }",
                "-c",
                "/bin/sleep 0.05",
            ]),
        ),
    ];
    let mut whole_table = startup::whole_runs(
        "Start-up and teardown — whole runs",
        &format!(
            "{runs} runs each, interleaved; milliseconds from exec until the command has exited \
             (the prompt is back), and until the kernel has released everything it attached \
             (memtrace hands the slow part, ~40 ms per tracepoint event, to a helper that \
             outlives it). The runs wait for each other's release, except in the last row."
        ),
        &tools,
        runs,
    )?;
    whole_table.push_str(&startup::back_to_back(&memtrace_trace, 5)?);

    // Launch to ready, against a process that only waits.
    let mut sleeper = sleeper()?;
    let pid = sleeper.id().to_string();
    let listen = format!("--listen=127.0.0.1:{}", free_port()?);
    let ready_tools = [
        (
            "memtrace trace --json --pid PID (to its start record)".to_owned(),
            suite.memtrace(&["trace", "--json", "--pid", &pid]),
            Ready::StdoutLine(JSON_START),
        ),
        (
            "memtrace faults --json --pid PID".to_owned(),
            suite.memtrace(&["faults", "--json", "--pid", &pid]),
            Ready::StdoutLine(JSON_START),
        ),
        (
            "memtrace faults --json (system-wide)".to_owned(),
            suite.memtrace(&["faults", "--json"]),
            Ready::StdoutLine(JSON_START),
        ),
        (
            "memtrace oom --json".to_owned(),
            suite.memtrace(&["oom", "--json"]),
            Ready::StdoutLine(JSON_START),
        ),
        (
            "memtrace oom --json --history 0".to_owned(),
            suite.memtrace(&["oom", "--json", "--history", "0"]),
            Ready::StdoutLine(JSON_START),
        ),
        (
            "memtrace pressure --json".to_owned(),
            suite.memtrace(&["pressure", "--json"]),
            Ready::StdoutLine(JSON_START),
        ),
        (
            "memtrace serve (to its \"serving\" line)".to_owned(),
            suite.memtrace(&["serve", &listen]),
            Ready::StderrLine("memtrace: serving"),
        ),
        (
            "bpftrace, trace's 12 tracepoints (to BEGIN's output)".to_owned(),
            words(&[
                "bpftrace",
                "-e",
                &format!("BEGIN {{ printf(\"ready\\n\"); }} {probes} {{ }}"),
            ]),
            Ready::StdoutLine("ready"),
        ),
        (
            "bpftrace tracepoint:oom:mark_victim (to BEGIN's output)".to_owned(),
            words(&[
                "bpftrace",
                "-e",
                "BEGIN { printf(\"ready\\n\"); } tracepoint:oom:mark_victim { printf(\"%d\\n\", args->pid); }",
            ]),
            Ready::StdoutLine("ready"),
        ),
    ];
    let ready_table = measure::readiness(
        "Start-up — launch to ready",
        &format!("{runs} launches each, interleaved; milliseconds from exec to the ready signal"),
        &ready_tools,
        runs,
        &suite.dir,
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    Ok(format!("{whole_table}\n{}", ready_table?))
}

/// A process that only waits, for `--pid` targets.
fn sleeper() -> Result<std::process::Child> {
    let mut sleeper = std::process::Command::new("sleep");
    Ok(runner::dies_with_bench(&mut sleeper, libc::SIGKILL)
        .arg("3600")
        .spawn()?)
}

fn memory(suite: &Suite) -> Result<String> {
    let mut sleeper = sleeper()?;
    let pid = sleeper.id().to_string();
    let listen = format!("--listen=127.0.0.1:{}", free_port()?);
    let case = |label: &str, args: &[&str], target: &'static str| memory::Case {
        label: label.into(),
        argv: suite.memtrace(args),
        ready: Ready::StderrLine("memtrace:"),
        target,
    };
    let cases = [
        case(
            "faults --pid PID",
            &["faults", "--pid", &pid, "-o", "/dev/null"],
            "≤ 2 MiB",
        ),
        case("faults (system-wide)", &["faults", "-o", "/dev/null"], ""),
        case(
            "faults -- COMMAND",
            &["faults", "-o", "/dev/null", "--", "sleep", "30"],
            "",
        ),
        case(
            "trace --pid PID",
            &["trace", "--pid", &pid, "-o", "/dev/null"],
            "",
        ),
        case("trace (system-wide)", &["trace", "-o", "/dev/null"], ""),
        case("trace -c", &["trace", "-c", "-o", "/dev/null"], ""),
        case("pressure", &["pressure", "-o", "/dev/null"], ""),
        case("oom", &["oom", "-o", "/dev/null"], "≤ 1 MiB"),
        case(
            "oom --history 0",
            &["oom", "--history", "0", "-o", "/dev/null"],
            "",
        ),
        case(
            "serve",
            &["serve", &listen],
            "≤ 12 MiB; ≤ 32 MiB at 192 CPUs",
        ),
    ];
    let table = memory::table("Kernel memory per command", &cases, &suite.dir);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    table
}

fn words(words: &[&str]) -> Vec<String> {
    words.iter().map(|&word| word.to_owned()).collect()
}

/// The daemon's footprint: the fault workload with `serve` running (interleaved with untraced
/// runs, as every row), then the daemon alone, idle, for a while: its CPU share and RSS.
fn daemon(suite: &Suite) -> Result<String> {
    let faults: u64 = if suite.quick { 200_000 } else { 1_000_000 };
    let listen = format!("--listen=127.0.0.1:{}", free_port()?);
    let serve = suite.memtrace(&["serve", &listen]);
    let serve_stats = suite.memtrace(&["serve", "--bpf-stats", &listen]);
    let under_load = measure::overhead(
        suite,
        &format!("{faults} minor faults, 1 thread — memtrace serve running (system-wide)"),
        &Workload {
            binary: suite.compile("fault_loop")?,
            args: vec![faults.to_string(), "1".into()],
        },
        &[
            Mode::untraced(),
            Mode::traced(
                "memtrace serve",
                serve.clone(),
                Ready::StderrLine("memtrace: serving"),
            ),
            // The kernel's BPF statistics add clock reads to every program run.
            Mode::traced(
                "memtrace serve --bpf-stats",
                serve_stats,
                Ready::StderrLine("memtrace: serving"),
            ),
        ],
    )?;
    let idle_for = Duration::from_secs(if suite.quick { 5 } else { 60 });
    let idle = idle_footprint("memtrace serve", &serve, idle_for)?;
    Ok(format!("{under_load}\n{idle}"))
}

/// A reader of a file 8 times its cgroup's limit: it reclaims its own page cache at the limit
/// all along (memcg reclaim; direct reclaim would need the whole machine short of memory).
fn pressure(suite: &Suite) -> Result<String> {
    let mib: u64 = if suite.quick { 128 } else { 512 };
    let file = big_file(suite, mib)?;
    let cgroup = BenchCgroup::new("reclaim", (mib / 8) << 20)?;
    let hooks = [
        "mm_vmscan_direct_reclaim_begin",
        "mm_vmscan_direct_reclaim_end",
        "mm_vmscan_memcg_reclaim_begin",
        "mm_vmscan_memcg_reclaim_end",
    ]
    .map(|name| format!("tracepoint:vmscan:{name}"))
    .join(", ");
    let reader = "/pid == {pid}/";
    let table = measure::overhead(
        suite,
        &format!(
            "Reading {mib} MiB through a {} MiB cgroup — memtrace pressure",
            mib / 8
        ),
        &Workload {
            binary: suite.compile("reclaim_loop")?,
            args: vec![
                file.to_string_lossy().into_owned(),
                cgroup.dir.to_string_lossy().into_owned(),
            ],
        },
        &[
            Mode::untraced(),
            Mode::traced(
                "memtrace pressure (system-wide)",
                suite.memtrace(&["pressure", "-o", "/dev/null"]),
                Ready::StderrLine("memtrace: timing"),
            ),
            Mode::traced(
                "memtrace pressure -H --by cgroup",
                suite.memtrace(&["pressure", "-H", "--by", "cgroup", "-o", "/dev/null"]),
                Ready::StderrLine("memtrace: timing"),
            ),
            Mode::traced(
                "floor: bpftrace, empty programs on the vmscan begin/end tracepoints",
                words(&[
                    "bpftrace",
                    "-e",
                    &format!("BEGIN {{ printf(\"ready\\n\"); }} {hooks} {{ }}"),
                ]),
                Ready::StdoutLine("ready"),
            ),
            Mode::traced(
                "bpftrace count of the reader's memcg reclaims",
                words(&[
                    "bpftrace",
                    "-e",
                    &format!(
                        "BEGIN {{ printf(\"ready\\n\"); }} \
                         tracepoint:vmscan:mm_vmscan_memcg_reclaim_begin {reader} {{ @[pid] = count(); }}"
                    ),
                ]),
                Ready::StdoutLine("ready"),
            ),
            // Direct reclaim only: it sees none of a cgroup's reclaim at its limit.
            Mode::traced(
                "libbpf-tools drsnoop (direct reclaim only)",
                words(&["stdbuf", "-oL", "drsnoop"]),
                Ready::StdoutLine("Tracing direct reclaim"),
            ),
        ],
    )?;
    drop(cgroup);
    Ok(table)
}

/// A file of `mib` MiB on the bench directory's disk, written once.
fn big_file(suite: &Suite, mib: u64) -> Result<std::path::PathBuf> {
    use std::io::Write as _;
    let path = suite.dir.join(format!("reclaim-{mib}.bin"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == mib << 20) {
        return Ok(path);
    }
    let mut file = std::fs::File::create(&path)?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for _ in 0..mib {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(path)
}

/// `memtrace oom` waits for weeks: what it costs the machine's work meanwhile (it samples the
/// likely victims each second for their histories, and new and fast-growing ones ten times a
/// second), and its own CPU and RSS.
fn oom(suite: &Suite) -> Result<String> {
    let faults: u64 = if suite.quick { 200_000 } else { 1_000_000 };
    let calls: u64 = if suite.quick { 100_000 } else { 810_000 };
    let oom = suite.memtrace(&["oom", "-o", "/dev/null"]);
    let modes = |label: &str| {
        [
            Mode::untraced(),
            Mode::traced(label, oom.clone(), Ready::StderrLine("memtrace: waiting")),
        ]
    };
    let fault_row = measure::overhead(
        suite,
        &format!("{faults} minor faults, 1 thread — memtrace oom waiting"),
        &Workload {
            binary: suite.compile("fault_loop")?,
            args: vec![faults.to_string(), "1".into()],
        },
        &modes("memtrace oom (history on)"),
    )?;
    let alloc_row = measure::overhead(
        suite,
        &format!("{calls} brk/mmap/munmap calls — memtrace oom waiting"),
        &Workload {
            binary: suite.compile("alloc_loop")?,
            args: vec![calls.to_string()],
        },
        &modes("memtrace oom (history on)"),
    )?;
    // Each exec wakes the sampler for the new program's first sample, and a young program is
    // sampled again 100 ms later: the row that pays for fast histories.
    let spawns: u64 = if suite.quick { 500 } else { 3_000 };
    let exec_row = measure::overhead(
        suite,
        &format!("{spawns} programs started one after another — memtrace oom waiting"),
        &Workload {
            binary: suite.compile("exec_loop")?,
            args: vec![spawns.to_string(), "/bin/true".into()],
        },
        &modes("memtrace oom (history on)"),
    )?;
    let idle_for = Duration::from_secs(if suite.quick { 5 } else { 60 });
    let idle = idle_footprint("memtrace oom", &oom, idle_for)?;
    Ok(format!("{fault_row}\n{alloc_row}\n{exec_row}\n{idle}"))
}

/// Starts a long-running command, lets it settle, and measures its CPU time and RSS over
/// `window`.
fn idle_footprint(name: &str, command: &[String], window: Duration) -> Result<String> {
    let mut daemon = std::process::Command::new(&command[0]);
    let mut daemon = runner::dies_with_bench(&mut daemon, libc::SIGTERM)
        .args(&command[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = daemon.id();
    std::thread::sleep(Duration::from_secs(2));
    let (cpu_before, rss_before) = usage(pid)?;
    std::thread::sleep(window);
    let (cpu_after, rss_after) = usage(pid)?;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    daemon.wait()?;
    let share = (cpu_after - cpu_before) / window.as_secs_f64() * 100.0;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    Ok(format!(
        "### {name}, idle\n\nOver {} s with nothing to report: **{share:.2} % of one core**; \
         RSS {:.1} MiB at the start of the window, {:.1} MiB at its end.\n",
        window.as_secs(),
        mib(rss_before),
        mib(rss_after)
    ))
}

/// `memtrace top` and htop at one update a second, in a terminal of 100×30 (tmux): what each
/// costs itself, idle and while the fault workload runs beside it (the cost of memtrace's
/// programs to the workload is the `daemon` row's: `top` attaches what `serve` attaches).
fn top(suite: &Suite) -> Result<String> {
    let window = Duration::from_secs(if suite.quick { 5 } else { 30 });
    let fault_loop = suite.compile("fault_loop")?;
    let views = [
        ("memtrace top", format!("{} top", suite.memtrace.display())),
        ("htop -d 10", "htop -d 10".to_owned()),
    ];
    let mut table = format!(
        "### The live view's own cost, at 1 s updates\n\nEach in a tmux terminal of 100×30, \
         over {} s; busy: the fault workload (1M minor faults, 1 thread) runs again and again \
         beside it.\n\n| view | idle: % of one core | busy: % of one core | RSS |\n|---|---|---|---|\n",
        window.as_secs()
    );
    for (name, command) in views {
        let (idle, _) = in_terminal(&command, window, None)?;
        let (busy, rss) = in_terminal(&command, window, Some(&fault_loop))?;
        let mib = rss as f64 / f64::from(1 << 20);
        writeln!(
            table,
            "| {name} | {idle:.2} % | {busy:.2} % | {mib:.1} MiB |"
        )?;
    }
    Ok(table)
}

/// Runs `command` in a tmux session for `window` (the fault workload looping beside it when
/// given), and returns its CPU share (percent of one core) and its RSS at the end.
fn in_terminal(
    command: &str,
    window: Duration,
    workload: Option<&std::path::Path>,
) -> Result<(f64, u64)> {
    let session = format!("memtrace-bench-{}", std::process::id());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", "memtrace-bench"])
            .args(args)
            .output()
    };
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "30",
        command,
    ])?;
    anyhow::ensure!(started.status.success(), "tmux could not start `{command}`");
    let measured = (|| {
        // Loaded, attached and drawing by then.
        std::thread::sleep(Duration::from_secs(3));
        let pane = tmux(&["display-message", "-p", "-t", &session, "#{pane_pid}"])?;
        let shell: u32 = String::from_utf8_lossy(&pane.stdout).trim().parse()?;
        let pid = view_pid(shell, command)?;
        let (cpu_before, _) = usage(pid)?;
        let until = std::time::Instant::now() + window;
        while std::time::Instant::now() < until {
            match workload {
                Some(binary) => {
                    let mut run = std::process::Command::new(binary)
                        .args(["1000000", "1"])
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::null())
                        .spawn()?;
                    if let Some(stdin) = run.stdin.as_mut() {
                        std::io::Write::write_all(stdin, b"go\n")?;
                    }
                    run.wait()?;
                }
                None => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        let (cpu_after, rss) = usage(pid)?;
        let share = (cpu_after - cpu_before) / window.as_secs_f64() * 100.0;
        Ok((share, rss))
    })();
    let _ = tmux(&["kill-session", "-t", &session]);
    measured
}

/// The view's pid: the pane's process itself, or its child (where tmux's shell forks).
fn view_pid(pane: u32, command: &str) -> Result<u32> {
    let name = std::path::Path::new(command.split_whitespace().next().unwrap_or_default())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let comm = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim().to_owned())
    };
    if comm(pane)? == name {
        return Ok(pane);
    }
    let children = std::fs::read_to_string(format!("/proc/{pane}/task/{pane}/children"))?;
    children
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .find(|&pid| comm(pid).is_ok_and(|c| c == name))
        .ok_or_else(|| anyhow::anyhow!("`{command}` is not running in its terminal"))
}

/// A process's CPU time (user + system, seconds) and resident memory (bytes), from /proc.
fn usage(pid: u32) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 1)..]
        .split_whitespace()
        .collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat"))
    };
    // utime and stime (fields 14, 15) in clock ticks, rss (24) in pages; index 0 is field 3.
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let cpu = (field(11)? + field(12)?) as f64 / ticks.max(1) as f64;
    Ok((cpu, field(21)? * page.max(1) as u64))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
