//! The records of a `memtrace trace` report: a start, one strace-like line (or JSON object) per
//! completed call, and the closing summary (a `-c` table for people). The session flushes once
//! per batch of calls, never per call. `render` writes a call's arguments as strace does, with
//! `flags`' names.

mod flags;
pub mod render;

use std::{
    borrow::Cow,
    io::{self, Write},
};

use memtrace_common::{DropSource, syscalls::SyscallStats};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Record, Targets, drops_json};
use crate::{
    aggregate::syscalls::{avg_ns, grand_total},
    model::{
        command::CommandOutcome,
        stacks::Named,
        time::{Timestamp, round_secs},
    },
    syscalls::{Call, Syscall},
};

use render::latency;

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

/// What is traced, told once at the start.
#[derive(Serialize)]
pub struct Start<'a> {
    #[serde(flatten)]
    pub targets: Targets,
    #[serde(serialize_with = "syscall_names")]
    pub syscalls: &'a [Syscall],
}

fn syscall_names<S: serde::Serializer>(syscalls: &&[Syscall], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(syscalls.iter().map(|syscall| syscall.name()))
}

impl Record for Start<'_> {
    const TYPE: &'static str = "start";

    fn human(&self, _out: &mut dyn Write) -> io::Result<()> {
        let names: Vec<&str> = self.syscalls.iter().map(|s| s.name()).collect();
        eprintln!(
            "memtrace: tracing {} of {} (Ctrl-C to stop)",
            names.join(", "),
            self.targets.description
        );
        Ok(())
    }
}

/// One completed call, and when it began (Unix-epoch nanoseconds).
pub struct CallRecord<'a> {
    pub call: &'a Call,
    pub ts_ns: u64,
    /// Its user stack, innermost frame first (`--stack`).
    pub stack: Option<&'a [Named]>,
}

impl Serialize for CallRecord<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
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
            #[serde(skip_serializing_if = "Option::is_none")]
            fd_path: Option<Cow<'a, str>>,
            latency_ns: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            stack: Option<&'a [Named]>,
        }
        let call = self.call;
        Json {
            ts_ns: self.ts_ns,
            pid: call.pid,
            tid: call.tid,
            comm: &call.comm,
            syscall: call.syscall.name(),
            args: render::json_args(call),
            ret: call.ret,
            errno: call.errno().map(flags::errno_name),
            brk_growth: call.brk_growth(),
            fd_path: call
                .fd_path
                .as_ref()
                .map(|path| String::from_utf8_lossy(&path.link)),
            latency_ns: call.latency_ns,
            stack: self.stack,
        }
        .serialize(s)
    }
}

impl Record for CallRecord<'_> {
    const TYPE: &'static str = "syscall";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", human_line(self.call, self.ts_ns))?;
        for frame in self.stack.unwrap_or_default() {
            writeln!(out, " > {}", frame.line())?;
        }
        Ok(())
    }
}

/// The end of a trace: the kernel's per-syscall statistics (a `-c` table for people), what was
/// received and lost.
pub struct Summary<'a> {
    pub duration_s: f64,
    /// Why tracing ended ([`crate::session::End::reason`]).
    pub reason: &'static str,
    /// Calls received from the kernel (0 with `-c`, which receives none).
    pub records: u64,
    /// Records the kernel sent that could not be decoded.
    pub undecodable: u64,
    /// Per-syscall statistics, counted in the kernel.
    pub syscalls: &'a [(Syscall, SyscallStats)],
    pub dropped: &'a [(DropSource, u64)],
    /// `--kernel-stack`: calls the kernel gave no kernel stack for.
    pub kernel_stacks_missing: Option<u64>,
    pub command: Option<CommandOutcome>,
    /// `-c`: the statistics are the report, shown as a table.
    pub table: bool,
}

impl Serialize for Summary<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
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
        struct Json<'a> {
            duration_s: f64,
            reason: &'static str,
            records: u64,
            undecodable: u64,
            syscalls: Vec<JsonSyscall>,
            #[serde(serialize_with = "drops_json")]
            dropped: &'a [(DropSource, u64)],
            #[serde(skip_serializing_if = "Option::is_none")]
            kernel_stacks_missing: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            command: Option<JsonCommand>,
        }
        Json {
            duration_s: round_secs(self.duration_s),
            reason: self.reason,
            records: self.records,
            undecodable: self.undecodable,
            syscalls: self
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
                .collect(),
            dropped: self.dropped,
            kernel_stacks_missing: self.kernel_stacks_missing,
            command: self.command.map(|(pid, exit)| JsonCommand {
                pid,
                exit_code: exit.code,
            }),
        }
        .serialize(s)
    }
}

impl Record for Summary<'_> {
    const TYPE: &'static str = "summary";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.table {
            table(out, self.syscalls)?;
        }
        let lost: u64 = self.dropped.iter().map(|&(_, n)| n).sum();
        let calls: u64 = self.syscalls.iter().map(|(_, t)| t.calls).sum();
        eprintln!(
            "memtrace: {calls} calls in {:.1} s, {lost} lost{}",
            self.duration_s,
            match self.command {
                Some((pid, exit)) => format!("; command (pid {pid}) exited with {}", exit.code),
                None => String::new(),
            }
        );
        Ok(())
    }
}

/// The `-c` table, like strace's: per syscall, then the total.
fn table(out: &mut dyn Write, rows: &[(Syscall, SyscallStats)]) -> io::Result<()> {
    writeln!(
        out,
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
            out,
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
            fd_path: None,
            stack: Default::default(),
        };
        let line = human_line(&call, 1_000_000_123_456);
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(time.ends_with(".000123"), "{time}");
        assert_eq!(
            rest,
            "python3[4242/4242] mmap(NULL, 1052672, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f3a1c000000 <4.1µs>"
        );
    }
}
