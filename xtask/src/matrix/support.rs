//! The README's support table, measured: each command and flag is run briefly on each kernel of
//! the matrix (the host's too), and the table says which worked and, for those that did not,
//! what memtrace said. `cargo xtask test` fails when the README's table differs from what it
//! measured (`--bless` writes the measured one), so no cell is written by hand.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// What stands for a command to trace in a probe's arguments.
const COMMAND: &str = "{command}";
/// What stands for a running process's pid.
const PID: &str = "{pid}";

/// One row of the table: a command line memtrace is run with.
struct Probe {
    row: &'static str,
    args: &'static [&'static str],
}

/// A short command that maps memory, allocates, faults and exits.
const WORKLOAD: &[&str] = &["/bin/sh", "-c", "ls / > /dev/null"];

const PROBES: &[Probe] = &[
    Probe {
        row: "faults",
        args: &["faults", "--json", "--duration", "1"],
    },
    Probe {
        row: "faults --pid",
        args: &["faults", "--json", "--duration", "1", "--pid", PID],
    },
    Probe {
        row: "faults -- COMMAND",
        args: &["faults", "--json", "--", COMMAND],
    },
    Probe {
        row: "faults --threads",
        args: &["faults", "--json", "--threads", "--", COMMAND],
    },
    Probe {
        row: "faults --stacks",
        args: &["faults", "--json", "--stacks", "--", COMMAND],
    },
    Probe {
        row: "faults --by mapping",
        args: &["faults", "--json", "--by", "mapping", "--", COMMAND],
    },
    Probe {
        row: "faults --by file",
        args: &["faults", "--json", "--by", "file", "--", COMMAND],
    },
    Probe {
        row: "trace",
        args: &["trace", "--json", "--", COMMAND],
    },
    Probe {
        row: "trace -c",
        args: &["trace", "--json", "-c", "--", COMMAND],
    },
    Probe {
        row: "trace --stack",
        args: &["trace", "--json", "--stack", "--", COMMAND],
    },
    Probe {
        row: "trace --stack --kernel-stack",
        args: &[
            "trace",
            "--json",
            "--stack",
            "--kernel-stack",
            "--",
            COMMAND,
        ],
    },
    Probe {
        row: "trace -c --stack",
        args: &["trace", "--json", "-c", "--stack", "--", COMMAND],
    },
    Probe {
        row: "leaks",
        args: &["leaks", "--json", "--", COMMAND],
    },
    Probe {
        row: "leaks --malloc",
        args: &["leaks", "--json", "--malloc", "--", COMMAND],
    },
    Probe {
        row: "pressure",
        args: &["pressure", "--json", "--duration", "1"],
    },
    Probe {
        row: "pressure --by cgroup",
        args: &["pressure", "--json", "--by", "cgroup", "--duration", "1"],
    },
    Probe {
        row: "oom",
        args: &["oom", "--json", "--duration", "1"],
    },
    Probe {
        row: "serve",
        args: &["serve"],
    },
    Probe {
        row: "top",
        args: &["top"],
    },
];

/// How one probe went.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeResult {
    pub row: String,
    /// `None`: it worked.
    pub failure: Option<Failure>,
    /// What memtrace warned of the kernel when it worked (a part it could not do there).
    #[serde(default)]
    pub warning: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failure {
    pub exit: Option<i32>,
    /// What memtrace said (its `memtrace: ...` line), or what went wrong.
    pub message: String,
}

/// Runs every probe with `memtrace`; `time_scale` stretches the waits on a slow guest. What
/// memtrace says of the kernel names its exact release, which a new package of the same series
/// changes: the table says `series` instead.
pub fn probe_all(memtrace: &Path, time_scale: u32, series: &str) -> Vec<ProbeResult> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    PROBES
        .iter()
        .map(|probe| {
            let in_series = |message: String| match release.is_empty() {
                true => message,
                false => message.replace(release, series),
            };
            match run_probe(memtrace, probe, time_scale) {
                Ok(warning) => ProbeResult {
                    row: probe.row.to_owned(),
                    failure: None,
                    warning: warning.map(in_series),
                },
                Err(failure) => ProbeResult {
                    row: probe.row.to_owned(),
                    failure: Some(Failure {
                        message: in_series(failure.message),
                        ..failure
                    }),
                    warning: None,
                },
            }
        })
        .collect()
}

/// Ok with memtrace's warning about the kernel, if it gave one.
fn run_probe(memtrace: &Path, probe: &Probe, time_scale: u32) -> Result<Option<String>, Failure> {
    let failed = |message: String| Failure {
        exit: None,
        message,
    };
    if probe.args == ["serve"] {
        return probe_serve(memtrace, time_scale).map(|()| None);
    }
    if probe.args == ["top"] {
        return probe_top(memtrace, time_scale);
    }
    let mut sleeper = None;
    let mut args: Vec<String> = Vec::new();
    for &arg in probe.args {
        match arg {
            COMMAND => args.extend(WORKLOAD.iter().map(|s| (*s).to_owned())),
            PID => {
                let child = Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .map_err(|e| failed(format!("start sleep: {e}")))?;
                args.push(child.id().to_string());
                sleeper = Some(KillOnDrop(child));
            }
            _ => args.push(arg.to_owned()),
        }
    }
    let output = output_within(
        Command::new(memtrace).args(&args),
        Duration::from_secs(60 * u64::from(time_scale)),
    )
    .map_err(failed);
    drop(sleeper);
    let output = output?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(Failure {
            exit: output.status.code(),
            message: memtrace_line(&stderr),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let records: Vec<&str> = stdout.lines().collect();
    if records.is_empty() {
        return Err(failed("exited 0 but reported nothing".to_owned()));
    }
    for line in records {
        if serde_json::from_str::<serde_json::Value>(line).is_err() {
            return Err(failed(format!("a line that is not JSON: {line:.80}")));
        }
    }
    Ok(kernel_warning(&stderr))
}

/// memtrace's first warning that says what the kernel lacks. Those about events lost so far
/// depend on the run, not the kernel, and would make the table differ run to run.
fn kernel_warning(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .filter_map(|line| line.strip_prefix("[WARN ]"))
        .map(str::trim)
        .find(|warning| !warning.contains("so far") && !warning.contains("lost"))
        .map(str::to_owned)
}

/// Runs the live view for 2 s in a terminal of 100×30 (util-linux `script` gives it one): it
/// must draw its table, give the terminal back and exit 0.
fn probe_top(memtrace: &Path, time_scale: u32) -> Result<Option<String>, Failure> {
    let failed = |message: String| Failure {
        exit: None,
        message,
    };
    let inner = format!(
        "stty cols 100 rows 30; {} top --duration 2",
        memtrace.display()
    );
    let output = output_within(
        Command::new("script").args(["-qec", &inner, "/dev/null"]),
        Duration::from_secs(60 * u64::from(time_scale)),
    )
    .map_err(failed)?;
    let screen = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(Failure {
            exit: output.status.code(),
            message: memtrace_line(&screen),
        });
    }
    if !screen.contains("COMMAND") || !screen.contains("memtrace top: ") {
        return Err(failed(
            "exited 0 but drew no table or no summary".to_owned(),
        ));
    }
    // Left the alternate screen and showed the cursor again, after its last frame.
    let restored = screen.rfind("\u{1b}[?1049l") > screen.rfind("COMMAND");
    if !restored {
        return Err(failed("did not give the terminal back".to_owned()));
    }
    Ok(kernel_warning(&screen))
}

/// Starts the daemon, scrapes it once, stops it with SIGTERM: it must have exported memtrace's
/// metrics and exit 0.
fn probe_serve(memtrace: &Path, time_scale: u32) -> Result<(), Failure> {
    let failed = |message: String| Failure {
        exit: None,
        message,
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| failed(format!("no free port: {e}")))?
        .port();
    let child = Command::new(memtrace)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("run memtrace: {e}")))?;
    let mut daemon = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(15 * u64::from(time_scale));
    let scraped = loop {
        if let Ok(Some(_)) = daemon.0.try_wait() {
            break false;
        }
        if scrape(port).is_some_and(|body| body.contains("memtrace_")) {
            break true;
        }
        if Instant::now() > deadline {
            return Err(failed("serve never answered /metrics".to_owned()));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let status = daemon
        .0
        .wait()
        .map_err(|e| failed(format!("wait for serve: {e}")))?;
    let mut stderr = String::new();
    if let Some(mut pipe) = daemon.0.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    if !status.success() || !scraped {
        return Err(Failure {
            exit: status.code(),
            message: memtrace_line(&stderr),
        });
    }
    Ok(())
}

fn scrape(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .starts_with("HTTP/1.1 200")
        .then(|| response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()))?
}

/// memtrace's one-line error (the last `memtrace: ` line), or the last line of its output.
fn memtrace_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("memtrace: "))
        .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("(nothing on stderr)")
        .trim()
        .to_owned()
}

/// A command's output, if it ends within `limit` (else it is killed).
fn output_within(command: &mut Command, limit: Duration) -> Result<std::process::Output, String> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run memtrace: {e}"))?;
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = Instant::now() + limit;
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own child, which its waiter has not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = waiter.join();
            return Err(format!("did not end within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter
        .join()
        .map_err(|_| "its waiter panicked".to_owned())?
        .map_err(|e| format!("wait for memtrace: {e}"))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One column of the table: a kernel and its probes' results.
pub struct Column {
    pub kernel: String,
    pub results: Vec<ProbeResult>,
}

/// The table, in markdown, with a numbered note per distinct refusal.
pub fn render(columns: &[Column]) -> String {
    let mut table = String::from("| command |");
    for column in columns {
        table.push_str(&format!(" {} |", column.kernel));
    }
    table.push_str("\n|---|");
    table.push_str(&"---|".repeat(columns.len()));
    table.push('\n');
    let mut notes: Vec<String> = Vec::new();
    for probe in PROBES {
        table.push_str(&format!("| `memtrace {}` |", probe.row));
        for column in columns {
            let result = column.results.iter().find(|r| r.row == probe.row);
            let mut number_of = |note: String| match notes.iter().position(|n| *n == note) {
                Some(index) => index + 1,
                None => {
                    notes.push(note);
                    notes.len()
                }
            };
            let cell = match result {
                Some(ProbeResult {
                    failure: Some(failure),
                    ..
                }) => {
                    let note = match failure.exit {
                        Some(code) => format!("exit {code}: {}", failure.message),
                        None => failure.message.clone(),
                    };
                    format!("✗ [{}]", number_of(note))
                }
                Some(ProbeResult {
                    warning: Some(warning),
                    ..
                }) => format!("✓ [{}]", number_of(format!("works, and warns: {warning}"))),
                Some(_) => "✓".to_owned(),
                None => "not run".to_owned(),
            };
            table.push_str(&format!(" {cell} |"));
        }
        table.push('\n');
    }
    if !notes.is_empty() {
        table.push('\n');
        for (index, note) in notes.iter().enumerate() {
            table.push_str(&format!("{}. {}\n", index + 1, note.replace('|', "\\|")));
        }
    }
    table
}

const BEGIN: &str = "<!-- kernel-support: written by `cargo xtask test --bless` from what it measured; do not edit -->";
const END: &str = "<!-- /kernel-support -->";

/// Compares the README's table with `measured`; with `bless`, writes `measured` into it instead.
/// The first column is the host's: on a host of another kernel than the one the table was
/// measured on, only the guests' columns are compared.
pub fn check_readme(readme: &Path, measured: &str, bless: bool) -> Result<()> {
    let text = std::fs::read_to_string(readme)?;
    let (before, rest) = text
        .split_once(BEGIN)
        .with_context(|| format!("{} has no support table marker `{BEGIN}`", readme.display()))?;
    let (current, after) = rest
        .split_once(END)
        .with_context(|| format!("{} has no `{END}` after its table", readme.display()))?;
    let current = current.trim_matches('\n');
    let measured = measured.trim_matches('\n');
    if current == measured {
        return Ok(());
    }
    let header = |table: &str| table.lines().next().unwrap_or_default().to_owned();
    if !bless && header(current) != header(measured) {
        let guests = |table: &str| -> String {
            table
                .lines()
                .take_while(|line| line.starts_with('|'))
                .map(|line| {
                    let cells: Vec<&str> = line.split('|').collect();
                    // "", command, host, guests..., ""
                    let mut kept = cells.clone();
                    if kept.len() > 3 {
                        kept.remove(2);
                    }
                    kept.join("|")
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        if guests(current) == guests(measured) {
            eprintln!(
                "xtask: this host's kernel is not the README table's ({}): its column is not \
                 checked",
                header(current)
            );
            return Ok(());
        }
    }
    if bless {
        std::fs::write(readme, format!("{before}{BEGIN}\n{measured}\n{END}{after}"))?;
        eprintln!(
            "xtask: wrote the measured support table into {}",
            readme.display()
        );
        return Ok(());
    }
    bail!(
        "the support table in {} is not what this run measured:\n{measured}\n\
         (`cargo xtask test --bless` writes it)",
        readme.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(kernel: &str, failed: &[(&str, &str)]) -> Column {
        Column {
            kernel: kernel.to_owned(),
            results: PROBES
                .iter()
                .map(|p| ProbeResult {
                    row: p.row.to_owned(),
                    failure: failed
                        .iter()
                        .find(|(row, _)| *row == p.row)
                        .map(|(_, m)| Failure {
                            exit: Some(5),
                            message: (*m).to_owned(),
                        }),
                    warning: None,
                })
                .collect(),
        }
    }

    #[test]
    fn refusals_become_numbered_notes_shared_between_cells() {
        let table = render(&[
            column("6.18", &[]),
            column(
                "5.10",
                &[
                    ("faults --by mapping", "needs X"),
                    ("faults --by file", "needs X"),
                ],
            ),
        ]);
        assert!(
            table.starts_with("| command | 6.18 | 5.10 |\n|---|---|---|\n"),
            "{table}"
        );
        assert!(
            table.contains("| `memtrace faults --by mapping` | ✓ | ✗ [1] |"),
            "{table}"
        );
        assert!(
            table.contains("| `memtrace faults --by file` | ✓ | ✗ [1] |"),
            "{table}"
        );
        assert!(table.ends_with("\n1. exit 5: needs X\n"), "{table}");
    }

    #[test]
    fn the_error_line_is_memtraces_own() {
        assert_eq!(
            memtrace_line("[DEBUG] x\nmemtrace: the kernel lacks y\n    Caused by: z\n"),
            "the kernel lacks y"
        );
        assert_eq!(memtrace_line("error: bad flag\n"), "error: bad flag");
    }

    #[test]
    fn a_warning_about_the_kernel_is_a_note_one_about_lost_events_is_not() {
        let stderr = "[WARN ] 3 events not counted so far: the ring buffer\n\
                      [WARN ] this kernel gives no kernel stacks here\n";
        assert_eq!(
            kernel_warning(stderr).as_deref(),
            Some("this kernel gives no kernel stacks here")
        );
        assert_eq!(kernel_warning("[WARN ] 2 records lost\nok\n"), None);
        let mut warned = column("5.10", &[]);
        warned.results[0].warning = Some("no kernel stacks".to_owned());
        let table = render(&[warned]);
        assert!(table.contains("| `memtrace faults` | ✓ [1] |"), "{table}");
        assert!(
            table.contains("1. works, and warns: no kernel stacks"),
            "{table}"
        );
    }
}
