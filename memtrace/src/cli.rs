//! The command line: `Cli { command }` with one argument struct per subcommand. Doc comments are
//! the help text; each subcommand ends its help with examples.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
EXAMPLES:
  sudo memtrace faults                      # system-wide: busiest processes each second
  sudo memtrace faults --pid 4242           # one process, live
  sudo memtrace faults -- make -j2          # a command and all its descendants
  sudo memtrace faults --json --duration 10 # machine-readable, for 10 seconds";

const FAULTS_EXAMPLES: &str = "\
COLUMNS:
  TIME     local time of the interval's end
  PID      process id (TID: thread id, with --threads)
  COMM     command name
  MINOR/s  minor faults per second in the interval (page already in memory, or zero-filled)
  MAJOR/s  major faults per second in the interval (the page had to be read from storage)
  MINOR    minor faults since tracing began
  MAJOR    major faults since tracing began

EXAMPLES:
  sudo memtrace faults                          # whole system, top 10 by fault rate
  sudo memtrace faults --pid 4242 --pid 4243    # two running processes
  sudo memtrace faults --comm postgres          # every process named postgres
  sudo memtrace faults --threads --pid 4242     # per thread
  sudo memtrace faults --interval 5 --duration 60
  sudo memtrace faults --json -o faults.jsonl -- ./build.sh
  sudo memtrace faults --stacks -- ./myprog     # where: faults per user stack, at the end
  sudo memtrace faults --stacks --folded -o faults.folded --pid 4242
  sudo memtrace faults --stacks --flamegraph faults.svg -- ./myprog
  sudo memtrace faults --stacks --pprof faults.pb.gz -- ./myprog
  go tool pprof -top faults.pb.gz               # or -http :8080, Pyroscope, Parca, speedscope

STACKS (--stacks, --by stack): every fault is counted under its user stack, exactly. The stack
is unwound with the binaries' unwind tables (.eh_frame), so code built without frame pointers
is right too; frames are named from symbol tables, with file:line where debug information is
found. The first fault on each stack sends the stack to memtrace (16 KiB of it); memtrace
teaches the kernel which stack words tell that stack apart, and the kernel counts the next
faults on it by itself.

PPROF (--stacks --pprof): sample types faults/count (the default), minor_faults/count and
major_faults/count per stack.

Counts come from the kernel's minor-faults/major-faults perf events, which fire exactly where
the kernel increments each task's min_flt/maj_flt (/proc/PID/stat fields 10 and 12). Faults
taken on a process's behalf by get_user_pages (execve argument copying, MAP_POPULATE, mlock)
raise no such event and are not seen.";

/// memtrace: a Linux memory event tracer on eBPF.
///
/// Counts page faults per process in the kernel and reports them live. Needs root, or the
/// capabilities CAP_BPF and CAP_PERFMON.
#[derive(Debug, Parser)]
#[command(name = "memtrace", version, after_help = EXAMPLES, arg_required_else_help = false)]
pub struct Cli {
    /// Show diagnostics, including the kernel programs' own log (-vv: debug, -vvv: also the loader's)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Minor and major page-fault rates per process, live
    #[command(after_help = FAULTS_EXAMPLES)]
    Faults(FaultsArgs),
    /// Allocation syscalls (brk, mmap, munmap, ...) call by call, like strace
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),
    /// Every OOM kill, live: victim, triggering task and memory cgroup
    #[command(after_help = OOM_EXAMPLES)]
    Oom(OomArgs),
    /// Memory pressure, live: how long processes stall for memory (reclaim, compaction,
    /// throttling), and the kernel's pressure figures
    #[command(after_help = PRESSURE_EXAMPLES)]
    Pressure(PressureArgs),
    /// The node daemon: faults, allocation syscalls and OOM kills as Prometheus metrics
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// What processes have mapped and not unmapped (mmap, mremap, brk growth), or with
    /// --malloc allocated and not freed, by the stack that did it, with its age: on a running
    /// process, with no restart
    #[command(after_help = LEAKS_EXAMPLES)]
    Leaks(LeaksArgs),
    /// A live full-screen view of the machine's memory: RSS, its growth, fault, allocation and
    /// reclaim-stall rates per process or cgroup, PSI, and OOM kills as they happen
    #[command(after_help = TOP_EXAMPLES)]
    Top(TopArgs),
    /// Writes the man pages or the shell completions, generated from these very definitions
    /// (`cargo xtask docs` keeps the committed copies fresh; `cargo xtask install` installs them)
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to write
    #[arg(value_enum)]
    pub what: Generated,

    /// The directory to write into (created if missing)
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Generated {
    /// memtrace.1 and a page per subcommand (memtrace-faults.1, ...)
    Man,
    /// memtrace.bash, _memtrace (zsh) and memtrace.fish
    Completions,
}

const LEAKS_EXAMPLES: &str = "\
OUTPUT (every --interval, and at the end), one paragraph per stack, most bytes first:
  mappings: BYTES in N regions (RESIDENT resident, oldest AGE) in COMM[PID]
  --malloc: BYTES in N blocks (oldest AGE) in COMM[PID]
  then the stack that mapped or allocated them, innermost frame first. Only what was mapped or
  allocated since memtrace attached counts. For a COMMAND, the end is what was still mapped or
  allocated when it exited (heaptrack's \"leaked\").

TWO LEVELS:
  mappings (default)  mmap/munmap/mremap/brk, from their syscalls: large allocations (glibc
                      serves 128 KiB and more by mmap), arenas, heap growth, file mappings.
                      Cheap enough to leave on.
  --malloc            uprobes on the target's own allocator (malloc, calloc, realloc,
                      reallocarray, free, posix_memalign, aligned_alloc, memalign, valloc,
                      pvalloc of its libc, or of jemalloc/tcmalloc/mimalloc when it uses one):
                      every block, exact. Each call traps into the kernel (several us): on
                      allocation-heavy programs prefer the mapping level, or heaptrack if the
                      program can be restarted.

PPROF (--pprof): sample types bytes/bytes (the default) and regions/count (with --malloc:
blocks/count), outstanding per stack.

EXAMPLES:
  sudo memtrace leaks --pid 4242                   # a running service's mappings, every 5 s
  sudo memtrace leaks --malloc --pid 4242          # its malloc'ed blocks not yet freed
  sudo memtrace leaks --malloc --min-age 60 --pid 4242   # only blocks a minute old or more
  sudo memtrace leaks --malloc --sample 100 --pid 4242   # record 1 block in 100: a small table
  sudo memtrace leaks --malloc -- ./myprog         # what it had not freed at exit
  sudo memtrace leaks --folded -o maps.folded --pid 4242   # bytes per stack, for flame graphs
  sudo memtrace leaks --malloc --pprof heap.pb.gz -- ./myprog   # for go tool pprof, Pyroscope
  go tool pprof -top -sample_index=blocks heap.pb.gz        # blocks rather than bytes";

/// What processes have mapped (or allocated) and not released, by stack.
#[derive(Debug, Args)]
pub struct LeaksArgs {
    #[command(flatten)]
    pub targets: Targets,

    /// Seconds between reports (fractions allowed)
    #[arg(short, long, value_name = "SECS", default_value = "5", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub interval: Duration,

    /// Leave out regions mapped (or blocks allocated) less than SECS ago (memleak's -o)
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub min_age: Option<Duration>,

    /// Stacks per report, most bytes first (default 10)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub top: Option<u64>,

    #[command(flatten)]
    pub report: Report,

    #[command(flatten)]
    pub stack_files: StackFiles,

    /// Capacity of the kernel's stack tables (default 65536)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_stacks: Option<u32>,

    /// Trace the allocator (malloc, free, ...) with uprobes instead of the mappings (a
    /// COMMAND's descendants: up to 8)
    #[arg(long)]
    pub malloc: bool,

    /// With --malloc: record one allocation in N, at random (default: every one)
    #[arg(long, value_name = "N", requires = "malloc",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub sample: Option<u32>,

    /// With --malloc: record only allocations of at least BYTES bytes
    #[arg(long, value_name = "BYTES", requires = "malloc")]
    pub min_size: Option<u64>,

    /// With --malloc: the library (or program) whose malloc and free to trace, instead of the
    /// one the target's own symbol lookup would find
    #[arg(long, value_name = "PATH", requires = "malloc")]
    pub allocator: Option<PathBuf>,

    /// With --malloc: live blocks the kernel's table holds at most (default 1048576; 16 bytes
    /// per block of capacity up front, about 100 more per live block; before Linux 6.1, which
    /// wants the whole table up front, 131072)
    #[arg(long, value_name = "N", requires = "malloc",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_allocations: Option<u32>,
}

const PRESSURE_EXAMPLES: &str = "\
COLUMNS (each a count of stalls and their time, in ms, in the interval):
  DIRECT    direct reclaim: free memory ran low and the task reclaimed pages itself
  MEMCG     reclaim at the memory cgroup's limit, by the task that charged the page
  COMPACT   compaction: moving pages to make contiguous ones (kcompactd shows as its own row)
  THROTTLE  reclaim made the task wait for writeback or congestion
  psi       the kernel's own figures (/proc/pressure/memory): percent of the last 10 s in which
            some, or all, tasks stalled for memory, and the stall time of the interval

EXAMPLES:
  sudo memtrace pressure                          # whole system: who stalls, each second
  sudo memtrace pressure --by cgroup              # the same, by memory cgroup
  sudo memtrace pressure --pid 4242 -H            # one process, with latency histograms
  sudo memtrace pressure --json -- ./load-test.sh # a command and its descendants

The stalls are timed in the kernel, paired per task at the vmscan and compaction tracepoints'
begin and end; they cost nothing while memory is plentiful.";

/// What `faults` counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultsBy {
    /// Per process (or thread)
    Process,
    /// Per process and user stack
    Stack,
    /// Per process and mapping: a file, [heap], [stack], anonymous memory, ...
    Mapping,
    /// Per file (major faults: which files are being paged in)
    File,
}

/// How `pressure` groups its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PressureBy {
    /// One row per process
    Process,
    /// One row per memory cgroup
    Cgroup,
}

/// Memory pressure: how long processes stall for memory, timed in the kernel.
///
/// With no target, reports the processes of the whole system that stalled in each interval.
#[derive(Debug, Args)]
pub struct PressureArgs {
    #[command(flatten)]
    pub targets: Targets,

    /// Trace every process with this command name (as in /proc/PID/comm, at most 15 bytes)
    #[arg(long, value_name = "NAME", conflicts_with_all = ["pids", "command"])]
    pub comm: Option<String>,

    /// Rows by process or by memory cgroup
    #[arg(long, value_enum, default_value = "process")]
    pub by: PressureBy,

    /// Also log2 histograms of the stalls' durations, in the summary
    #[arg(short = 'H', long)]
    pub histogram: bool,

    /// Seconds between reports (fractions allowed)
    #[arg(short, long, value_name = "SECS", default_value = "1", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub interval: Duration,

    /// Rows per interval (those that stalled longest; default 10). With --pid every target is
    /// shown
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..),
          conflicts_with = "pids")]
    pub top: Option<u64>,

    #[command(flatten)]
    pub report: Report,

    /// Capacity of the kernel's table of processes that stalled (default 8192); stalls beyond
    /// it are counted as dropped (stall_table_full)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_processes: Option<u32>,
}

const SERVE_EXAMPLES: &str = "\
ENDPOINTS:
  /metrics   Prometheus text format (OpenMetrics): memtrace_page_faults_total,
             memtrace_alloc_syscalls_total, memtrace_alloc_syscall_errors_total,
             memtrace_alloc_bytes_total, memtrace_oom_kills_total,
             memtrace_reclaim_stalls_total, memtrace_reclaim_stall_seconds_total (kind: direct,
             memcg, compaction, throttled), memtrace_events_dropped_total,
             memtrace_bpf_program_run_time_seconds_total, memtrace_bpf_program_runs_total
             (with --bpf-stats),
             process_cpu_seconds_total, process_resident_memory_bytes (the daemon's own);
             memtrace_node_* (the same counts summed over the node, at 0 from the start)
  /healthz   200 while the kernel counters are being read, 503 otherwise
  /debug/pprof/faults?seconds=N   (with --profiles) the machine's page faults of the next N
             seconds (default 10, at most 300) by user stack, as a gzipped pprof profile: what
             Parca's and Grafana Alloy's (Pyroscope's) scrapers pull as a delta profile

EXAMPLES:
  sudo memtrace serve                                  # 127.0.0.1:9633, labels comm and cgroup
  sudo memtrace serve --listen 0.0.0.0:9633            # reachable from the network (logged)
  sudo memtrace serve --by cgroup --max-series 500     # one series per cgroup, at most 500
  sudo memtrace serve --by comm,cgroup,pod,container   # Kubernetes names, from the cgroup
  sudo memtrace serve --events /var/log/memtrace/oom-kills.jsonl   # OOM kills as JSON lines,
                                                       # each with the victim's last 30 s
  sudo memtrace serve --profiles                       # and fault profiles for a profiler
  go tool pprof -top 'http://127.0.0.1:9633/debug/pprof/faults?seconds=5'

SIGTERM or SIGINT stop it (exit 0); SIGHUP reopens the --events file (for log rotation).";

/// Which label identifies a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum SeriesLabel {
    /// The command name
    Comm,
    /// The memory cgroup (path in the memory hierarchy)
    Cgroup,
    /// The process id (series of exited processes are removed)
    Pid,
    /// The container, from the cgroup path: `container_id="containerd://ID"` (as
    /// kube-state-metrics writes it), empty outside containers
    Container,
    /// The Kubernetes pod, from the cgroup path: `pod_uid` (join on kube_pod_info's `uid`)
    Pod,
    /// The pod's QoS class, from the cgroup path: `qos_class` (guaranteed, burstable,
    /// besteffort)
    Qos,
    /// The systemd unit, from the cgroup path, outside containers: `systemd_unit`
    Unit,
}

/// The node daemon: counts page faults, allocation syscalls and OOM kills of the whole machine in
/// the kernel, and serves them as Prometheus metrics.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve /metrics and /healthz on (a non-loopback address is logged)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9633")]
    pub listen: std::net::SocketAddr,

    /// Labels of each series, comma-separated: comm, cgroup, pid, and, read from the cgroup
    /// path, container, pod, qos, unit
    #[arg(
        long,
        value_name = "LABEL[,LABEL]",
        value_delimiter = ',',
        default_value = "comm,cgroup"
    )]
    pub by: Vec<SeriesLabel>,

    /// At most this many label sets; further ones are folded into comm="other" (and so on)
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_series: u64,

    /// Also append each OOM kill as a JSON line to FILE (created mode 0640; `-` for stdout)
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

    /// With --events, how many seconds of each victim's memory its record shows before the kill
    /// (0: none), as `memtrace oom --history`
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_history,
          requires = "events")]
    pub history: Duration,

    /// Seconds between readings of the kernel's counters
    #[arg(short, long, value_name = "SECS", default_value = "1", value_parser = parse_seconds)]
    pub interval: Duration,

    /// Capacity of the kernel's per-process tables: processes for faults (default 16384), and
    /// twice as many (process, syscall) pairs. Counts beyond them are counted as dropped
    /// (fault_table_full, syscall_proc_full)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_processes: Option<u32>,

    /// Export the kernel's run time and run count of memtrace's BPF programs. Switching the
    /// kernel's BPF statistics on adds two clock reads to every BPF program run on the machine
    /// (about 25 % more cost per page fault here), so it is off by default; needs CAP_SYS_ADMIN
    #[arg(long)]
    pub bpf_stats: bool,

    /// Serve /debug/pprof/faults: each request attaches `faults --stacks` to every process for
    /// the seconds it asks, then detaches (one profile at a time; the others wait). The daemon
    /// then keeps its capabilities rather than dropping them: it attaches programs at each
    /// request, and reads other users' /proc/PID/maps and files to unwind their stacks
    #[arg(long)]
    pub profiles: bool,

    /// With --profiles: capacity of the kernel's stack tables for a profile (distinct stacks);
    /// faults on stacks beyond it are counted as lost, never silently
    #[arg(long, value_name = "N", default_value_t = 16_384,
          value_parser = clap::value_parser!(u32).range(64..=1_048_576), requires = "profiles")]
    pub profile_stacks: u32,
}

const TOP_EXAMPLES: &str = "\
COLUMNS (per second, over the last interval):
  RSS         resident memory (/proc/PID/stat); GROW/s its change
  MINFLT/s, MAJFLT/s   page faults, counted in the kernel (major: the page was read in)
  ALLOC/s     brk, mmap, munmap, mremap, mprotect and madvise calls
  STALLms/s   milliseconds its tasks stalled in direct reclaim, compaction or throttling
  cgroups (c) sum their processes, those that exited during the interval included
HEADER: memory used (total less MemAvailable), swap, PSI memory some/full over the last interval
  with its sparkline, and the events the kernel could not record (never hidden)
KEYS: q quit, c processes/cgroups, < > sort, I reverse, / filter, p pause, Enter a process's
  detail (its fault and RSS history, its biggest mappings), x dismiss an OOM kill, ? help

EXAMPLES:
  sudo memtrace top                         # every process on the machine
  sudo memtrace top --cgroup /system.slice  # processes of one cgroup subtree
  sudo memtrace top -p 4242                 # one process and its descendants; ends with them
  sudo memtrace top --stacks                # Enter on a process also shows its fault stacks
  NO_COLOR=1 sudo memtrace top -i 2         # no colours, a reading every 2 seconds";

/// A live full-screen view of the machine's memory, per process and cgroup.
///
/// Counts in the kernel what it shows (nothing per event reaches memtrace): page faults,
/// allocation syscalls, reclaim stalls and OOM kills, and reads RSS and PSI from /proc.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Show only this process and its descendants (repeat for several); ends when all exit
    #[arg(short, long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,

    /// Show only processes with this command name (as /proc/PID/comm has it)
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,

    /// Show only processes in this memory cgroup or below it (a directory under the memory
    /// cgroup mount, or a path in its hierarchy such as /system.slice)
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Seconds between readings
    #[arg(short, long, value_name = "SECS", default_value = "1", value_parser = parse_seconds)]
    pub interval: Duration,

    /// Stop after this many seconds (default: until q, Ctrl-C, or every --pid has exited)
    #[arg(short, long, value_name = "SECS", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub duration: Option<Duration>,

    /// Capacity of the kernel's per-process tables (default 16384); counts beyond them are
    /// counted as lost and shown
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_processes: Option<u32>,

    /// In a process's detail (Enter), also its busiest page-fault stacks: while the detail is
    /// open, `faults --stacks`'s programs count that process's faults by user stack (attached
    /// to it alone, detached when the detail closes)
    #[arg(long)]
    pub stacks: bool,
}

const OOM_EXAMPLES: &str = "\
FIELDS (unknown values are shown as ?; JSON null):
  group       OOM invocation id, shared by every victim of one memory.oom.group kill
  victim      pid (comm), uid, total-vm, anon/file/shmem RSS and page tables (KiB), oom_score_adj
  trigger     the task that ran the OOM killer (pid and comm)
  cgroup      the victim's memory cgroup, as a path in the memory hierarchy
  scope       cgroup (a memory cgroup's limit was hit) or system
  domain      the cgroup whose limit was hit
  limit, usage, oom_kill   the victim cgroup's memory limit, usage and OOM-kill count, read
              when the kill is reported
  pod, qos, container, unit   read from the cgroup path where it names them: the Kubernetes
              pod's UID and QoS class, the container (runtime://id), or the systemd unit

WHAT LED TO IT (under each kill, unless --history 0):
  T           seconds before the kill the victim was sampled (about once a second)
  RSS, VSZ    its resident memory and virtual size then
  MINOR, MAJOR   page faults since the sample before
  ALLOC       growth of its mapped memory since the sample before (brk, mmap less munmap)
  STALL-ms    time its tasks stalled in reclaim, compaction or throttling since then
  top memory users   the biggest processes of its cgroup when the kill was reported

EXAMPLES:
  sudo memtrace oom                                  # every OOM kill on the machine
  sudo memtrace oom --cgroup /sys/fs/cgroup/memory/db # kills inside one cgroup subtree
  sudo memtrace oom --cgroup /system.slice --count 1  # wait for the next kill there, then exit
  sudo memtrace oom --json -o oom.jsonl              # JSON lines to a file";

/// Every OOM kill, live, from the `oom:mark_victim` tracepoint.
///
/// One record per victim, printed as the kernel marks it; the victims of a memory.oom.group kill
/// share a group id.
#[derive(Debug, Args)]
pub struct OomArgs {
    /// Only kills of processes in this memory cgroup or below it (a directory under the memory
    /// cgroup mount, or a path in its hierarchy such as /system.slice)
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    #[command(flatten)]
    pub report: Report,

    /// Stop after this many seconds (default: until Ctrl-C, or --count kills)
    #[arg(short, long, value_name = "SECS", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub duration: Option<Duration>,

    /// Exit after N kills
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// How many seconds of each victim's memory to show before its kill (0: none). Only the
    /// likely victims are sampled each second: the biggest processes of the machine and of each
    /// limited memory cgroup, new processes, and those stalling in reclaim
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_history)]
    pub history: Duration,
}

/// Minor and major page-fault rates per process, counted in the kernel.
///
/// With no target, reports the busiest processes of the whole system each interval.
#[derive(Debug, Args)]
pub struct FaultsArgs {
    #[command(flatten)]
    pub targets: Targets,

    /// Trace every process with this command name (as in /proc/PID/comm, at most 15 bytes)
    #[arg(long, value_name = "NAME", conflicts_with_all = ["pids", "command"])]
    pub comm: Option<String>,

    /// Seconds between reports (fractions allowed)
    #[arg(short, long, value_name = "SECS", default_value = "1", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub interval: Duration,

    /// Count per thread instead of per process
    #[arg(short, long)]
    pub threads: bool,

    /// Also show each process's virtual size (VSZ) beside its resident memory (RSS), as
    /// `pidstat -r` does; JSON always has both
    #[arg(long)]
    pub vsz: bool,

    /// Rows per interval when tracing the whole system, by name or a command (busiest first;
    /// default 10). With --pid every target is shown
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..),
          conflicts_with = "pids")]
    pub top: Option<u64>,

    #[command(flatten)]
    pub report: Report,

    /// Capacity of the kernel's counting table, in processes (threads with --threads; default
    /// 16384). Faults of processes beyond it are counted as dropped (fault_table_full). Not used
    /// with --pid, whose processes perf's own counters count
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_processes: Option<u32>,

    /// What to count faults by: process (rates each interval); stack, mapping or file (each
    /// process's faults per user stack, per mapping, or per file, reported at the end, beside
    /// the rates)
    #[arg(
        long,
        value_enum,
        default_value = "process",
        conflicts_with = "threads"
    )]
    pub by: FaultsBy,

    /// Same as --by stack
    #[arg(long, conflicts_with_all = ["by", "threads"])]
    pub stacks: bool,

    #[command(flatten)]
    pub stack_files: StackFiles,

    /// With --stacks: capacity of the kernel's stack tables (distinct stacks and places;
    /// default 65536). Stacks beyond it are still counted, each sent whole to memtrace
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_stacks: Option<u32>,
}

const TRACE_EXAMPLES: &str = "\
OUTPUT:
  TIME COMM[PID/TID] SYSCALL(ARGS) = RETURN <LATENCY>, one line per completed call; brk also
  shows how far the break moved, failures the errno name. Syscalls: brk, mmap, munmap, mremap,
  mprotect, madvise (default), mlock, munlock, mlockall, munlockall, msync, shmat, shmdt.

EXAMPLES:
  sudo memtrace trace -- ./myprog                  # a command and its descendants, from birth
  sudo memtrace trace --pid 4242 -f                # a running process, and what it forks
  sudo memtrace trace -e mmap,munmap --min-size 1048576 --pid 4242
  sudo memtrace trace --failed -- ./myprog         # only calls that failed
  sudo memtrace trace -c -- make -j2               # per-syscall counts, latencies and bytes
  sudo memtrace trace -c --duration 30             # the same for the whole system, for 30 s
  sudo memtrace trace --json -o calls.jsonl -- ./myprog
  sudo memtrace trace -k -e mmap -- ./myprog       # each call with its user stack
  sudo memtrace trace -c -k -- ./myprog            # calls and bytes per stack
  sudo memtrace trace -c -k --pprof calls.pb.gz -- ./myprog   # the same, for go tool pprof";

/// Allocation syscalls call by call, paired and filtered in the kernel.
///
/// With no target, traces every process on the system (except memtrace itself).
#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub targets: Targets,

    /// Also trace the processes the --pid targets create from now on (always on with COMMAND)
    #[arg(short, long)]
    pub follow: bool,

    /// Trace these syscalls instead of the default set (comma-separated, repeatable)
    #[arg(short = 'e', long = "syscalls", value_name = "SYSCALL[,SYSCALL...]")]
    pub syscalls: Vec<String>,

    /// Show only calls that failed
    #[arg(long)]
    pub failed: bool,

    /// Show only calls about at least BYTES bytes (length argument, or the brk growth)
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    pub min_size: Option<u64>,

    /// Count per syscall in the kernel and print only a summary table at the end (with
    /// --stack: calls and bytes per syscall and user stack, busiest first)
    #[arg(short = 'c', long)]
    pub summary: bool,

    /// Show each call's user stack under it, one frame a line, as strace -k does:
    /// `> module(function+0xoff) [0xoffset] file:line`. Unwound with the binaries' unwind
    /// tables, so code without frame pointers is right too
    #[arg(short = 'k', long)]
    pub stack: bool,

    /// With --stack: also show the kernel's frames of each call (from /proc/kallsyms), above
    /// the user frames
    #[arg(long, requires = "stack")]
    pub kernel_stack: bool,

    /// With -c --stack: also write the calls per stack as a pprof profile into FILE (gzipped
    /// profile.proto), for `go tool pprof -top FILE` (or `-http :8080 FILE`), Pyroscope, Parca
    /// or speedscope. Its sample types: calls/count (the default) and bytes/bytes (the length
    /// argument, or the break's movement) per syscall and user stack; labels syscall, pid and
    /// comm; mappings with the files' build ids
    #[arg(long, value_name = "FILE.pb.gz")]
    pub pprof: Option<PathBuf>,

    /// With --stack: capacity of the kernel's stack tables (distinct stacks and places;
    /// default 65536)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..),
          requires = "stack")]
    pub max_stacks: Option<u32>,

    #[command(flatten)]
    pub report: Report,

    /// Capacity of the kernel's table of traced threads (default 16384 system-wide, 4096 with
    /// targets). Calls of threads beyond it are counted as lost (syscall_pending_full)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_threads: Option<u32>,
}

/// What to trace and for how long: the targets of every tracing command.
#[derive(Debug, Args)]
pub struct Targets {
    /// Trace this running process (repeat for several)
    #[arg(short, long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,

    /// Stop after this many seconds (default: until Ctrl-C, or until every target has exited)
    #[arg(short, long, value_name = "SECS", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub duration: Option<Duration>,

    /// Start COMMAND and trace it with all its descendants; memtrace exits with its status
    #[arg(last = true, value_name = "COMMAND", conflicts_with = "pids")]
    pub command: Vec<String>,
}

/// The files a report of stacks can also be written as, at the end (faults: with --stacks, or
/// --by mapping|file for the folded lines and the flame graph).
#[derive(Debug, Args)]
pub struct StackFiles {
    /// Write only the final report, as folded stacks (`comm;outermost;...;innermost VALUE`, one
    /// line per distinct stack), for flamegraph.pl, inferno or speedscope
    #[arg(long, conflicts_with = "json")]
    pub folded: bool,

    /// Also draw the final report's flame graph into FILE (SVG)
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<PathBuf>,

    /// Also write the final report's stacks as a pprof profile into FILE (gzipped
    /// profile.proto), for `go tool pprof -top FILE` (or `-http :8080 FILE`), Pyroscope, Parca
    /// or speedscope: labels pid and comm, mappings with the files' build ids, and the sample
    /// types under PPROF below
    #[arg(long, value_name = "FILE.pb.gz")]
    pub pprof: Option<PathBuf>,
}

/// Where the report goes, and whether for machines.
#[derive(Debug, Args)]
pub struct Report {
    /// One JSON object per line instead of text (JSON Schemas: docs/schemas/)
    #[arg(long)]
    pub json: bool,

    /// Write the report to FILE instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// A strictly positive, finite number of seconds.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("`{text}` must be a positive number of seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|err| err.to_string())
}

/// `--history`: whole seconds, 0 to turn it off, at most an hour (samples are kept in memory).
pub fn parse_history(text: &str) -> Result<Duration, String> {
    let secs: u64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of seconds"))?;
    if secs > 3600 {
        return Err(format!("`{text}`: at most 3600 seconds"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn history_is_whole_seconds_zero_for_none() {
        assert_eq!(parse_history("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_history("0"), Ok(Duration::ZERO));
        assert!(parse_history("1.5").is_err());
        assert!(parse_history("-1").is_err());
        assert!(parse_history("3601").is_err());
    }

    #[test]
    fn seconds_must_be_positive_and_finite() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn targets_exclude_each_other() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(parse(&["memtrace", "faults", "--pid", "1", "--", "true"]).is_err());
        assert!(parse(&["memtrace", "faults", "--comm", "x", "--pid", "1"]).is_err());
        assert!(parse(&["memtrace", "faults", "--pid", "0"]).is_err());
        assert!(parse(&["memtrace", "faults", "--pid", "1", "--pid", "2"]).is_ok());
        assert!(parse(&["memtrace", "faults", "--", "ls", "-l"]).is_ok());
        assert!(parse(&["memtrace", "faults", "--top", "3", "--pid", "1"]).is_err());
        assert!(parse(&["memtrace", "faults", "--top", "3", "--comm", "x"]).is_ok());
    }

    #[test]
    fn negative_numbers_reach_the_value_check() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied()).unwrap_err();
        for args in [
            &["memtrace", "faults", "--duration", "-1"][..],
            &["memtrace", "faults", "--interval", "-0.5"],
            &["memtrace", "trace", "--min-size", "-5"],
        ] {
            let err = parse(args);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
        }
    }
}
