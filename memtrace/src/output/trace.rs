//! Rendering `memtrace trace`: one strace-like line (or JSON object) per completed call, and the
//! closing summary (a `-c` table for people; a `summary` record for machines). Output is
//! buffered and flushed once per batch of calls, never per call.

use std::io::{self, BufWriter, Write};

use memtrace_common::{DropSource, syscalls::SyscallStats};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Timestamp, round_secs};
use crate::{
    aggregate::syscalls::{avg_ns, grand_total},
    spawn::CommandExit,
    syscalls::{
        Syscall,
        record::Call,
        render::{self, latency},
    },
};

/// What is traced, told once at the start.
pub struct Start<'a> {
    /// `"system"`, `"pids"` or `"command"`.
    pub mode: &'static str,
    pub description: &'a str,
    pub pids: &'a [u32],
    pub syscalls: &'a [Syscall],
}

pub struct Summary {
    pub duration_s: f64,
    /// Why tracing ended: `"signal"`, `"targets_exited"`, `"command_exited"`, `"output_closed"`.
    pub reason: &'static str,
    /// Calls received from the kernel (0 with `-c`, which receives none).
    pub records: u64,
    /// Records the kernel sent that could not be decoded.
    pub undecodable: u64,
    /// Per-syscall statistics, counted in the kernel.
    pub syscalls: Vec<(Syscall, SyscallStats)>,
    pub dropped: Vec<(DropSource, u64)>,
    pub command: Option<(u32, CommandExit)>,
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> WallClock {
        let read = |clock| {
            // SAFETY: all-zero is a valid timespec; clock_gettime only writes into it.
            let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
            // SAFETY: a valid clock id and a pointer to a timespec we own.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
        };
        WallClock {
            offset_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC),
        }
    }

    /// Unix-epoch nanoseconds of a monotonic timestamp.
    pub fn unix_ns(self, monotonic_ns: u64) -> u64 {
        u64::try_from(i128::from(monotonic_ns) + self.offset_ns).unwrap_or(0)
    }
}

/// `HH:MM:SS.uuuuuu`, local time.
pub fn local_time_us(unix_ns: u64) -> String {
    let time = Timestamp {
        unix: (unix_ns / 1_000_000_000) as f64,
    };
    format!(
        "{}.{:06}",
        time.local_hms(),
        (unix_ns % 1_000_000_000) / 1000
    )
}

/// One call as a line: `12:03:01.532118 python3[4242/4242] mmap(...) = 0x7f3a1c000000 <4.1µs>`.
pub fn human_line(call: &Call, unix_ns: u64) -> String {
    format!(
        "{} {}[{}/{}] {}({}) = {}{} <{}>",
        local_time_us(unix_ns),
        call.comm,
        call.pid,
        call.tid,
        call.syscall.name(),
        render::args(call),
        render::ret(call),
        render::growth(call),
        latency(call.latency_ns)
    )
}

#[derive(Serialize)]
struct JsonStart<'a> {
    r#type: &'static str,
    mode: &'static str,
    description: &'a str,
    pids: &'a [u32],
    syscalls: Vec<&'static str>,
}

#[derive(Serialize)]
struct JsonCall<'a> {
    r#type: &'static str,
    ts_ns: u64,
    pid: u32,
    tid: u32,
    comm: &'a str,
    syscall: &'static str,
    args: Map<String, Value>,
    ret: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    brk_growth: Option<i64>,
    latency_ns: u64,
}

#[derive(Serialize)]
struct JsonSyscall {
    syscall: &'static str,
    calls: u64,
    errors: u64,
    total_ns: u64,
    min_ns: u64,
    avg_ns: u64,
    max_ns: u64,
    mapped_bytes: u64,
    unmapped_bytes: u64,
    brk_growth_bytes: i64,
}

#[derive(Serialize)]
struct JsonCommand {
    pid: u32,
    exit_code: u8,
}

#[derive(Serialize)]
struct JsonSummary {
    r#type: &'static str,
    duration_s: f64,
    reason: &'static str,
    records: u64,
    undecodable: u64,
    syscalls: Vec<JsonSyscall>,
    dropped: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<JsonCommand>,
}

pub struct TraceOutput {
    out: BufWriter<Box<dyn Write>>,
    json: bool,
    /// `-c`: no line per call, a table at the end.
    table: bool,
    clock: WallClock,
}

impl TraceOutput {
    pub fn new(out: Box<dyn Write>, json: bool, table: bool, clock: WallClock) -> TraceOutput {
        TraceOutput {
            out: BufWriter::with_capacity(256 << 10, out),
            json,
            table,
            clock,
        }
    }

    fn json_line(&mut self, value: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }

    pub fn start(&mut self, start: &Start) -> io::Result<()> {
        if self.json {
            self.json_line(&JsonStart {
                r#type: "start",
                mode: start.mode,
                description: start.description,
                pids: start.pids,
                syscalls: start.syscalls.iter().map(|s| s.name()).collect(),
            })?;
            return self.out.flush();
        }
        let names: Vec<&str> = start.syscalls.iter().map(|s| s.name()).collect();
        eprintln!(
            "memtrace: tracing {} of {} (Ctrl-C to stop)",
            names.join(", "),
            start.description
        );
        Ok(())
    }

    pub fn call(&mut self, call: &Call) -> io::Result<()> {
        let ts_ns = self.clock.unix_ns(call.start_ns);
        if self.json {
            return self.json_line(&JsonCall {
                r#type: "syscall",
                ts_ns,
                pid: call.pid,
                tid: call.tid,
                comm: &call.comm,
                syscall: call.syscall.name(),
                args: render::json_args(call),
                ret: call.ret,
                errno: call.errno().map(crate::syscalls::flags::errno_name),
                brk_growth: call.brk_growth(),
                latency_ns: call.latency_ns,
            });
        }
        writeln!(self.out, "{}", human_line(call, ts_ns))
    }

    /// Writes out what is buffered (after each batch of calls).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        if self.json {
            let syscalls = summary
                .syscalls
                .iter()
                .map(|(syscall, t)| JsonSyscall {
                    syscall: syscall.name(),
                    calls: t.calls,
                    errors: t.errors,
                    total_ns: t.total_ns,
                    min_ns: t.min_ns,
                    avg_ns: avg_ns(t),
                    max_ns: t.max_ns,
                    mapped_bytes: t.mapped,
                    unmapped_bytes: t.unmapped,
                    brk_growth_bytes: t.brk_growth,
                })
                .collect();
            self.json_line(&JsonSummary {
                r#type: "summary",
                duration_s: round_secs(summary.duration_s),
                reason: summary.reason,
                records: summary.records,
                undecodable: summary.undecodable,
                syscalls,
                dropped: summary
                    .dropped
                    .iter()
                    .map(|&(source, n)| (source.name().to_owned(), n.into()))
                    .collect(),
                command: summary.command.map(|(pid, exit)| JsonCommand {
                    pid,
                    exit_code: exit.code,
                }),
            })?;
            return self.out.flush();
        }
        if self.table {
            self.table(&summary.syscalls)?;
        }
        self.out.flush()?;
        let lost: u64 = summary
            .dropped
            .iter()
            .filter(|(source, _)| is_syscall_loss(*source))
            .map(|&(_, n)| n)
            .sum();
        let calls: u64 = summary.syscalls.iter().map(|(_, t)| t.calls).sum();
        eprintln!(
            "memtrace: {calls} calls in {:.1} s, {lost} lost{}",
            summary.duration_s,
            match summary.command {
                Some((pid, exit)) => format!("; command (pid {pid}) exited with {}", exit.code),
                None => String::new(),
            }
        );
        Ok(())
    }

    fn table(&mut self, rows: &[(Syscall, SyscallStats)]) -> io::Result<()> {
        writeln!(
            self.out,
            "{:<10} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>14} {:>14} {:>12}",
            "syscall",
            "calls",
            "errors",
            "total",
            "min",
            "avg",
            "max",
            "mapped",
            "unmapped",
            "brk growth"
        )?;
        let total = grand_total(rows);
        for (name, t) in rows
            .iter()
            .map(|(s, t)| (s.name(), t))
            .chain(std::iter::once(("total", &total)))
        {
            writeln!(
                self.out,
                "{:<10} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>14} {:>14} {:>12}",
                name,
                t.calls,
                t.errors,
                latency(t.total_ns),
                latency(t.min_ns),
                latency(avg_ns(t)),
                latency(t.max_ns),
                t.mapped,
                t.unmapped,
                t.brk_growth
            )?;
        }
        Ok(())
    }
}

/// Whether a drop source loses `trace` records (the others belong to other commands, or to
/// following children: those count too, since a missed child is a missed target).
pub fn is_syscall_loss(source: DropSource) -> bool {
    matches!(
        source,
        DropSource::SyscallPendingFull | DropSource::SyscallRingFull | DropSource::TargetTableFull
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_reads_like_the_issue_example() {
        let call = Call {
            syscall: Syscall::Mmap,
            pid: 4242,
            tid: 4242,
            comm: "python3".into(),
            start_ns: 0,
            latency_ns: 4100,
            args: [0, 1_052_672, 3, 0x22, u64::MAX, 0],
            ret: 0x7f3a_1c00_0000,
            prev_brk: None,
        };
        let line = human_line(&call, 1_000_000_123_456);
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(time.ends_with(".000123"), "{time}");
        assert_eq!(
            rest,
            "python3[4242/4242] mmap(NULL, 1052672, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f3a1c000000 <4.1µs>"
        );
    }

    #[test]
    fn monotonic_times_become_wall_clock() {
        let clock = WallClock {
            offset_ns: 1_700_000_000_000_000_000,
        };
        assert_eq!(clock.unix_ns(5), 1_700_000_000_000_000_005);
    }
}
