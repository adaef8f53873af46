# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_memtrace_global_optspecs
    string join \n v/verbose h/help V/version
end

function __fish_memtrace_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_memtrace_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_memtrace_using_subcommand
    set -l cmd (__fish_memtrace_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c memtrace -n "__fish_memtrace_needs_command" -s v -l verbose -d 'Show diagnostics, including the kernel programs\' own log (-vv: debug, -vvv: also the loader\'s)'
complete -c memtrace -n "__fish_memtrace_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c memtrace -n "__fish_memtrace_needs_command" -s V -l version -d 'Print version'
complete -c memtrace -n "__fish_memtrace_needs_command" -f -a "faults" -d 'Minor and major page-fault rates per process, live'
complete -c memtrace -n "__fish_memtrace_needs_command" -f -a "trace" -d 'Allocation syscalls (brk, mmap, munmap, ...) call by call, like strace'
complete -c memtrace -n "__fish_memtrace_needs_command" -f -a "oom" -d 'Every OOM kill, live: victim, triggering task and memory cgroup'
complete -c memtrace -n "__fish_memtrace_needs_command" -f -a "pressure" -d 'Memory pressure, live: how long processes stall for memory (reclaim, compaction, throttling), and the kernel\'s pressure figures'
complete -c memtrace -n "__fish_memtrace_needs_command" -f -a "serve" -d 'The node daemon: faults, allocation syscalls and OOM kills as Prometheus metrics'
complete -c memtrace -n "__fish_memtrace_needs_command" -f -a "leaks" -d 'What processes have mapped and not unmapped (mmap, mremap, brk growth), or with --malloc allocated and not freed, by the stack that did it, with its age: on a running process, with no restart'
complete -c memtrace -n "__fish_memtrace_needs_command" -f -a "top" -d 'A live full-screen view of the machine\'s memory: RSS, its growth, fault, allocation and reclaim-stall rates per process or cgroup, PSI, and OOM kills as they happen'
complete -c memtrace -n "__fish_memtrace_needs_command" -f -a "generate" -d 'Writes the man pages or the shell completions, generated from these very definitions (`cargo xtask docs` keeps the committed copies fresh; `cargo xtask install` installs them)'
complete -c memtrace -n "__fish_memtrace_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -s p -l pid -d 'Trace this running process (repeat for several)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -s d -l duration -d 'Stop after this many seconds (default: until Ctrl-C, or until every target has exited)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -l comm -d 'Trace every process with this command name (as in /proc/PID/comm, at most 15 bytes)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -s i -l interval -d 'Seconds between reports (fractions allowed)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -l top -d 'Rows per interval when tracing the whole system, by name or a command (busiest first; default 10). With --pid every target is shown' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -s o -l output -d 'Write the report to FILE instead of standard output' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -l max-processes -d 'Capacity of the kernel\'s counting table, in processes (threads with --threads; default 16384). Faults of processes beyond it are counted as dropped (fault_table_full). Not used with --pid, whose processes perf\'s own counters count' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -l by -d 'What to count faults by: process (rates each interval); stack, mapping or file (each process\'s faults per user stack, per mapping, or per file, reported at the end, beside the rates)' -r -f -a "process\t'Per process (or thread)'
stack\t'Per process and user stack'
mapping\t'Per process and mapping: a file, [heap], [stack], anonymous memory, ...'
file\t'Per file (major faults: which files are being paged in)'"
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -l flamegraph -d 'Also draw the final report\'s flame graph into FILE (SVG)' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -l pprof -d 'Also write the final report\'s stacks as a pprof profile into FILE (gzipped profile.proto), for `go tool pprof -top FILE` (or `-http :8080 FILE`), Pyroscope, Parca or speedscope: labels pid and comm, mappings with the files\' build ids, and the sample types under PPROF below' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -l max-stacks -d 'With --stacks: capacity of the kernel\'s stack tables (distinct stacks and places; default 65536). Stacks beyond it are still counted, each sent whole to memtrace' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -s t -l threads -d 'Count per thread instead of per process'
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -l vsz -d 'Also show each process\'s virtual size (VSZ) beside its resident memory (RSS), as `pidstat -r` does; JSON always has both'
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -l json -d 'One JSON object per line instead of text (JSON Schemas: docs/schemas/)'
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -l stacks -d 'Same as --by stack'
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -l folded -d 'Write only the final report, as folded stacks (`comm;outermost;...;innermost VALUE`, one line per distinct stack), for flamegraph.pl, inferno or speedscope'
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -s v -l verbose -d 'Show diagnostics, including the kernel programs\' own log (-vv: debug, -vvv: also the loader\'s)'
complete -c memtrace -n "__fish_memtrace_using_subcommand faults" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -s p -l pid -d 'Trace this running process (repeat for several)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -s d -l duration -d 'Stop after this many seconds (default: until Ctrl-C, or until every target has exited)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -s e -l syscalls -d 'Trace these syscalls instead of the default set (comma-separated, repeatable)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -l min-size -d 'Show only calls about at least BYTES bytes (length argument, or the brk growth)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -l pprof -d 'With -c --stack: also write the calls per stack as a pprof profile into FILE (gzipped profile.proto), for `go tool pprof -top FILE` (or `-http :8080 FILE`), Pyroscope, Parca or speedscope. Its sample types: calls/count (the default) and bytes/bytes (the length argument, or the break\'s movement) per syscall and user stack; labels syscall, pid and comm; mappings with the files\' build ids' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -l max-stacks -d 'With --stack: capacity of the kernel\'s stack tables (distinct stacks and places; default 65536)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -s o -l output -d 'Write the report to FILE instead of standard output' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -l max-threads -d 'Capacity of the kernel\'s table of traced threads (default 16384 system-wide, 4096 with targets). Calls of threads beyond it are counted as lost (syscall_pending_full)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -s f -l follow -d 'Also trace the processes the --pid targets create from now on (always on with COMMAND)'
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -l failed -d 'Show only calls that failed'
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -s c -l summary -d 'Count per syscall in the kernel and print only a summary table at the end (with --stack: calls and bytes per syscall and user stack, busiest first)'
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -s k -l stack -d 'Show each call\'s user stack under it, one frame a line, as strace -k does: `> module(function+0xoff) [0xoffset] file:line`. Unwound with the binaries\' unwind tables, so code without frame pointers is right too'
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -l kernel-stack -d 'With --stack: also show the kernel\'s frames of each call (from /proc/kallsyms), above the user frames'
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -l json -d 'One JSON object per line instead of text (JSON Schemas: docs/schemas/)'
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -s v -l verbose -d 'Show diagnostics, including the kernel programs\' own log (-vv: debug, -vvv: also the loader\'s)'
complete -c memtrace -n "__fish_memtrace_using_subcommand trace" -s h -l help -d 'Print help'
complete -c memtrace -n "__fish_memtrace_using_subcommand oom" -l cgroup -d 'Only kills of processes in this memory cgroup or below it (a directory under the memory cgroup mount, or a path in its hierarchy such as /system.slice)' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand oom" -s o -l output -d 'Write the report to FILE instead of standard output' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand oom" -s d -l duration -d 'Stop after this many seconds (default: until Ctrl-C, or --count kills)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand oom" -s n -l count -d 'Exit after N kills' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand oom" -l history -d 'How many seconds of each victim\'s memory to show before its kill (0: none). Only the likely victims are sampled each second: the biggest processes of the machine and of each limited memory cgroup, new processes, and those stalling in reclaim' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand oom" -l json -d 'One JSON object per line instead of text (JSON Schemas: docs/schemas/)'
complete -c memtrace -n "__fish_memtrace_using_subcommand oom" -s v -l verbose -d 'Show diagnostics, including the kernel programs\' own log (-vv: debug, -vvv: also the loader\'s)'
complete -c memtrace -n "__fish_memtrace_using_subcommand oom" -s h -l help -d 'Print help'
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -s p -l pid -d 'Trace this running process (repeat for several)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -s d -l duration -d 'Stop after this many seconds (default: until Ctrl-C, or until every target has exited)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -l comm -d 'Trace every process with this command name (as in /proc/PID/comm, at most 15 bytes)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -l by -d 'Rows by process or by memory cgroup' -r -f -a "process\t'One row per process'
cgroup\t'One row per memory cgroup'"
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -s i -l interval -d 'Seconds between reports (fractions allowed)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -l top -d 'Rows per interval (those that stalled longest; default 10). With --pid every target is shown' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -s o -l output -d 'Write the report to FILE instead of standard output' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -l max-processes -d 'Capacity of the kernel\'s table of processes that stalled (default 8192); stalls beyond it are counted as dropped (stall_table_full)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -s H -l histogram -d 'Also log2 histograms of the stalls\' durations, in the summary'
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -l json -d 'One JSON object per line instead of text (JSON Schemas: docs/schemas/)'
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -s v -l verbose -d 'Show diagnostics, including the kernel programs\' own log (-vv: debug, -vvv: also the loader\'s)'
complete -c memtrace -n "__fish_memtrace_using_subcommand pressure" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -l listen -d 'Address to serve /metrics and /healthz on (a non-loopback address is logged)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -l by -d 'Labels of each series, comma-separated: comm, cgroup, pid, and, read from the cgroup path, container, pod, qos, unit' -r -f -a "comm\t'The command name'
cgroup\t'The memory cgroup (path in the memory hierarchy)'
pid\t'The process id (series of exited processes are removed)'
container\t'The container, from the cgroup path: `container_id="containerd://ID"` (as kube-state-metrics writes it), empty outside containers'
pod\t'The Kubernetes pod, from the cgroup path: `pod_uid` (join on kube_pod_info\'s `uid`)'
qos\t'The pod\'s QoS class, from the cgroup path: `qos_class` (guaranteed, burstable, besteffort)'
unit\t'The systemd unit, from the cgroup path, outside containers: `systemd_unit`'"
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -l max-series -d 'At most this many label sets; further ones are folded into comm="other" (and so on)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -l events -d 'Also append each OOM kill as a JSON line to FILE (created mode 0640; `-` for stdout)' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -l history -d 'With --events, how many seconds of each victim\'s memory its record shows before the kill (0: none), as `memtrace oom --history`' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -s i -l interval -d 'Seconds between readings of the kernel\'s counters' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -l max-processes -d 'Capacity of the kernel\'s per-process tables: processes for faults (default 16384), and twice as many (process, syscall) pairs. Counts beyond them are counted as dropped (fault_table_full, syscall_proc_full)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -l profile-stacks -d 'With --profiles: capacity of the kernel\'s stack tables for a profile (distinct stacks); faults on stacks beyond it are counted as lost, never silently' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -l bpf-stats -d 'Export the kernel\'s run time and run count of memtrace\'s BPF programs. Switching the kernel\'s BPF statistics on adds two clock reads to every BPF program run on the machine (about 25 % more cost per page fault here), so it is off by default; needs CAP_SYS_ADMIN'
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -l profiles -d 'Serve /debug/pprof/faults: each request attaches `faults --stacks` to every process for the seconds it asks, then detaches (one profile at a time; the others wait). The daemon then keeps its capabilities rather than dropping them: it attaches programs at each request, and reads other users\' /proc/PID/maps and files to unwind their stacks'
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -s v -l verbose -d 'Show diagnostics, including the kernel programs\' own log (-vv: debug, -vvv: also the loader\'s)'
complete -c memtrace -n "__fish_memtrace_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -s p -l pid -d 'Trace this running process (repeat for several)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -s d -l duration -d 'Stop after this many seconds (default: until Ctrl-C, or until every target has exited)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -s i -l interval -d 'Seconds between reports (fractions allowed)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l min-age -d 'Leave out regions mapped (or blocks allocated) less than SECS ago (memleak\'s -o)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l top -d 'Stacks per report, most bytes first (default 10)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -s o -l output -d 'Write the report to FILE instead of standard output' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l flamegraph -d 'Also draw the final report\'s flame graph into FILE (SVG)' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l pprof -d 'Also write the final report\'s stacks as a pprof profile into FILE (gzipped profile.proto), for `go tool pprof -top FILE` (or `-http :8080 FILE`), Pyroscope, Parca or speedscope: labels pid and comm, mappings with the files\' build ids, and the sample types under PPROF below' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l max-stacks -d 'Capacity of the kernel\'s stack tables (default 65536)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l sample -d 'With --malloc: record one allocation in N, at random (default: every one)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l min-size -d 'With --malloc: record only allocations of at least BYTES bytes' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l allocator -d 'With --malloc: the library (or program) whose malloc and free to trace, instead of the one the target\'s own symbol lookup would find' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l max-allocations -d 'With --malloc: live blocks the kernel\'s table holds at most (default 1048576; 16 bytes per block of capacity up front, about 100 more per live block; before Linux 6.1, which wants the whole table up front, 131072)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l json -d 'One JSON object per line instead of text (JSON Schemas: docs/schemas/)'
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l folded -d 'Write only the final report, as folded stacks (`comm;outermost;...;innermost VALUE`, one line per distinct stack), for flamegraph.pl, inferno or speedscope'
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -l malloc -d 'Trace the allocator (malloc, free, ...) with uprobes instead of the mappings (a COMMAND\'s descendants: up to 8)'
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -s v -l verbose -d 'Show diagnostics, including the kernel programs\' own log (-vv: debug, -vvv: also the loader\'s)'
complete -c memtrace -n "__fish_memtrace_using_subcommand leaks" -s h -l help -d 'Print help'
complete -c memtrace -n "__fish_memtrace_using_subcommand top" -s p -l pid -d 'Show only this process and its descendants (repeat for several); ends when all exit' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand top" -l comm -d 'Show only processes with this command name (as /proc/PID/comm has it)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand top" -l cgroup -d 'Show only processes in this memory cgroup or below it (a directory under the memory cgroup mount, or a path in its hierarchy such as /system.slice)' -r -F
complete -c memtrace -n "__fish_memtrace_using_subcommand top" -s i -l interval -d 'Seconds between readings' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand top" -s d -l duration -d 'Stop after this many seconds (default: until q, Ctrl-C, or every --pid has exited)' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand top" -l max-processes -d 'Capacity of the kernel\'s per-process tables (default 16384); counts beyond them are counted as lost and shown' -r
complete -c memtrace -n "__fish_memtrace_using_subcommand top" -l stacks -d 'In a process\'s detail (Enter), also its busiest page-fault stacks: while the detail is open, `faults --stacks`\'s programs count that process\'s faults by user stack (attached to it alone, detached when the detail closes)'
complete -c memtrace -n "__fish_memtrace_using_subcommand top" -s v -l verbose -d 'Show diagnostics, including the kernel programs\' own log (-vv: debug, -vvv: also the loader\'s)'
complete -c memtrace -n "__fish_memtrace_using_subcommand top" -s h -l help -d 'Print help'
complete -c memtrace -n "__fish_memtrace_using_subcommand generate" -s v -l verbose -d 'Show diagnostics, including the kernel programs\' own log (-vv: debug, -vvv: also the loader\'s)'
complete -c memtrace -n "__fish_memtrace_using_subcommand generate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c memtrace -n "__fish_memtrace_using_subcommand help; and not __fish_seen_subcommand_from faults trace oom pressure serve leaks top generate help" -f -a "faults" -d 'Minor and major page-fault rates per process, live'
complete -c memtrace -n "__fish_memtrace_using_subcommand help; and not __fish_seen_subcommand_from faults trace oom pressure serve leaks top generate help" -f -a "trace" -d 'Allocation syscalls (brk, mmap, munmap, ...) call by call, like strace'
complete -c memtrace -n "__fish_memtrace_using_subcommand help; and not __fish_seen_subcommand_from faults trace oom pressure serve leaks top generate help" -f -a "oom" -d 'Every OOM kill, live: victim, triggering task and memory cgroup'
complete -c memtrace -n "__fish_memtrace_using_subcommand help; and not __fish_seen_subcommand_from faults trace oom pressure serve leaks top generate help" -f -a "pressure" -d 'Memory pressure, live: how long processes stall for memory (reclaim, compaction, throttling), and the kernel\'s pressure figures'
complete -c memtrace -n "__fish_memtrace_using_subcommand help; and not __fish_seen_subcommand_from faults trace oom pressure serve leaks top generate help" -f -a "serve" -d 'The node daemon: faults, allocation syscalls and OOM kills as Prometheus metrics'
complete -c memtrace -n "__fish_memtrace_using_subcommand help; and not __fish_seen_subcommand_from faults trace oom pressure serve leaks top generate help" -f -a "leaks" -d 'What processes have mapped and not unmapped (mmap, mremap, brk growth), or with --malloc allocated and not freed, by the stack that did it, with its age: on a running process, with no restart'
complete -c memtrace -n "__fish_memtrace_using_subcommand help; and not __fish_seen_subcommand_from faults trace oom pressure serve leaks top generate help" -f -a "top" -d 'A live full-screen view of the machine\'s memory: RSS, its growth, fault, allocation and reclaim-stall rates per process or cgroup, PSI, and OOM kills as they happen'
complete -c memtrace -n "__fish_memtrace_using_subcommand help; and not __fish_seen_subcommand_from faults trace oom pressure serve leaks top generate help" -f -a "generate" -d 'Writes the man pages or the shell completions, generated from these very definitions (`cargo xtask docs` keeps the committed copies fresh; `cargo xtask install` installs them)'
complete -c memtrace -n "__fish_memtrace_using_subcommand help; and not __fish_seen_subcommand_from faults trace oom pressure serve leaks top generate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
