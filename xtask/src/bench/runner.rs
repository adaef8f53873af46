//! Running a workload under a tracer: the workload says "ready", the tracer is started against
//! its pid and waited for until it is attached, then the workload is told to go and reports how
//! long its own work took. Tracer start-up and shutdown are therefore never timed.

use std::{
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// How long a tracer may take to attach, and to exit after Ctrl-C, before we give up on it.
const TRACER_TIMEOUT: Duration = Duration::from_secs(30);

/// How a tracer is started against the workload's pid, and how we know it is attached.
#[derive(Clone)]
pub struct Mode {
    pub label: String,
    /// The command; `{pid}` becomes the workload's pid and `{out}` a scratch output file.
    /// `None` runs the workload untraced.
    pub command: Option<Vec<String>>,
    pub ready: Ready,
    /// So slow (strace, perf trace) that `--quick` runs it once instead of every round.
    pub slow: bool,
    /// A tool the workload runs under from its start (heaptrack, valgrind), instead of one
    /// attached to it: this command, then the workload's.
    pub wrap: Option<Vec<String>>,
}

impl Mode {
    pub fn untraced() -> Mode {
        Mode {
            label: "untraced".into(),
            command: None,
            ready: Ready::Immediately,
            slow: false,
            wrap: None,
        }
    }

    /// The workload run under `prefix` (`{out}` becomes a scratch file).
    pub fn wrapped(label: impl Into<String>, prefix: Vec<String>) -> Mode {
        Mode {
            label: label.into(),
            command: None,
            ready: Ready::Immediately,
            slow: false,
            wrap: Some(prefix),
        }
    }

    pub fn traced(label: impl Into<String>, command: Vec<String>, ready: Ready) -> Mode {
        Mode {
            label: label.into(),
            command: Some(command),
            ready,
            slow: false,
            wrap: None,
        }
    }

    pub fn slow(self) -> Mode {
        Mode { slow: true, ..self }
    }
}

#[derive(Clone, Copy)]
pub enum Ready {
    Immediately,
    /// A line on stderr starting with this text.
    StderrLine(&'static str),
    /// A line on stdout starting with this text.
    StdoutLine(&'static str),
    /// The first line of the `{out}` file starts with this text (JSON output has no banner).
    OutputFileLine(&'static str),
    /// No signal exists: wait this long.
    After(Duration),
}

/// A workload program with its arguments.
pub struct Workload {
    pub binary: PathBuf,
    pub args: Vec<String>,
}

/// What one run measured.
pub struct Run {
    /// Seconds of work, as the workload timed it.
    pub secs: f64,
    /// The count the workload reported after its time (calls made, faults taken).
    pub count: Option<u64>,
    /// The last line the tracer wrote to `{out}`: memtrace's JSON summary, where there is one.
    pub last_output_line: Option<String>,
    /// What the companion wrote to its `{out}`.
    pub companion_output: Option<String>,
}

/// Substitutes `{pid}` and `{out}` in a command.
pub fn expand(command: &[String], pid: u32, out: &Path) -> Vec<String> {
    let pid = pid.to_string();
    let out = out.to_string_lossy();
    command
        .iter()
        .map(|arg| arg.replace("{pid}", &pid).replace("{out}", &out))
        .collect()
}

/// Runs the workload once under `mode`; `companion` (e.g. `perf stat`) is attached too, after
/// the tracer, and stopped with it.
pub fn run_once(
    workload: &Workload,
    mode: &Mode,
    scratch: &Path,
    companion: Option<(&[String], Ready)>,
) -> Result<Run> {
    let out = scratch.join("tracer.out");
    let _ = fs::remove_file(&out);
    let mut work = match &mode.wrap {
        Some(prefix) => {
            let prefix = expand(prefix, 0, &out);
            let mut command = Command::new(&prefix[0]);
            command.args(&prefix[1..]).arg(&workload.binary);
            command
        }
        None => Command::new(&workload.binary),
    };
    let mut work = dies_with_bench(&mut work, libc::SIGKILL)
        .args(&workload.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", workload.binary.display()))?;
    let mut work_out = BufReader::new(work.stdout.take().context("workload stdout")?);
    let mut line = String::new();
    // A wrapping tool (heaptrack) may say things of its own first.
    for _ in 0..20 {
        line.clear();
        work_out.read_line(&mut line)?;
        if line.trim() == "ready" || mode.wrap.is_none() {
            break;
        }
    }
    if line.trim() != "ready" {
        bail!("workload said {line:?} instead of ready");
    }

    let mut attached = Attached(Vec::new());
    if let Some(command) = &mode.command {
        attached
            .0
            .push(start(&expand(command, work.id(), &out), mode.ready, &out)?);
    }
    let companion_out = scratch.join("companion.out");
    let _ = fs::remove_file(&companion_out);
    if let Some((command, ready)) = companion {
        attached.0.push(start(
            &expand(command, work.id(), &companion_out),
            ready,
            &companion_out,
        )?);
    }
    writeln!(work.stdin.as_mut().context("workload stdin")?, "go")?;
    for _ in 0..20 {
        line.clear();
        work_out.read_line(&mut line)?;
        if line.starts_with("elapsed_ns") || mode.wrap.is_none() {
            break;
        }
    }
    work.wait()?;
    drop(attached);
    let (secs, count) = parse_elapsed(&line).with_context(|| format!("workload said {line:?}"))?;
    let last_output_line = fs::read_to_string(&out)
        .ok()
        .and_then(|text| text.lines().last().map(str::to_owned));
    // Traces of a million calls are hundreds of megabytes: keep none of them.
    let _ = fs::remove_file(&out);
    let companion_output = fs::read_to_string(&companion_out).ok();
    let _ = fs::remove_file(&companion_out);
    Ok(Run {
        secs,
        count,
        last_output_line,
        companion_output,
    })
}

/// `elapsed_ns 123 calls 456` → (1.23e-7 s, Some(456)).
pub fn parse_elapsed(line: &str) -> Option<(f64, Option<u64>)> {
    let mut words = line.split_whitespace();
    if words.next()? != "elapsed_ns" {
        return None;
    }
    let ns: f64 = words.next()?.parse().ok()?;
    let count = words.nth(1).and_then(|n| n.parse().ok());
    Some((ns / 1e9, count))
}

/// Starts a tracer and returns once it is attached (by `ready`'s signal).
pub fn start(argv: &[String], ready: Ready, out: &Path) -> Result<Child> {
    let program = argv.first().context("empty tracer command")?;
    let mut child = Command::new(program);
    // SIGINT: a tracer left behind detaches as on Ctrl-C.
    let mut child = dies_with_bench(&mut child, libc::SIGINT)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {program}"))?;
    let stdout = child.stdout.take().context("tracer stdout")?;
    let stderr = child.stderr.take().context("tracer stderr")?;
    let attached = match ready {
        Ready::Immediately => {
            drain(stdout);
            drain(stderr);
            Ok(())
        }
        Ready::StderrLine(prefix) => {
            drain(stdout);
            wait_line(stderr, prefix, program)
        }
        Ready::StdoutLine(prefix) => {
            drain(stderr);
            wait_line(stdout, prefix, program)
        }
        Ready::OutputFileLine(prefix) => {
            drain(stdout);
            drain(stderr);
            wait_file_line(&mut child, out, prefix, program)
        }
        Ready::After(delay) => {
            drain(stdout);
            drain(stderr);
            thread::sleep(delay);
            Ok(())
        }
    };
    if let Err(err) = attached {
        // Never leave a half-started tracer attached behind us.
        let _ = child.kill();
        let _ = child.wait();
        return Err(err);
    }
    Ok(child)
}

/// Has the kernel send the child `signal` when the bench dies, however it dies (SIGTERM, SIGKILL,
/// a panic), so no workload or tracer outlives the run that started it. Children must be spawned
/// from the main thread: the signal follows the death of the spawning thread.
pub fn dies_with_bench(command: &mut Command, signal: libc::c_int) -> &mut Command {
    let bench = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The bench may have died before the request was made.
            if libc::getppid() != bench as libc::pid_t {
                libc::raise(signal);
            }
            Ok(())
        })
    }
}

/// Reads lines until one starts with `prefix`, then keeps draining on another thread so the
/// tracer never blocks on a full pipe. A tracer that ends first is reported with what it said:
/// its first error line (clap's "unexpected argument" names the flag a row needs, above its
/// usage text), else its last line.
fn wait_line(stream: impl Read + Send + 'static, prefix: &str, program: &str) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut said: Option<String> = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            match said {
                Some(said) => bail!("{program} exited before it was ready: {said}"),
                None => bail!("{program} exited before it was ready"),
            }
        }
        if line.starts_with(prefix) {
            drain(reader);
            return Ok(());
        }
        let error_known = said.as_deref().is_some_and(is_error_line);
        if !line.trim().is_empty() && !error_known {
            said = Some(line.trim().to_owned());
        }
    }
}

fn is_error_line(line: &str) -> bool {
    line.to_ascii_lowercase().contains("error")
}

fn wait_file_line(child: &mut Child, out: &Path, prefix: &str, program: &str) -> Result<()> {
    let deadline = Instant::now() + TRACER_TIMEOUT;
    loop {
        if fs::read(out).is_ok_and(|bytes| bytes.starts_with(prefix.as_bytes())) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{program} exited ({status}) before it was ready");
        }
        if Instant::now() > deadline {
            bail!("{program} wrote no {prefix:?} to {} in time", out.display());
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn drain(mut stream: impl Read + Send + 'static) {
    thread::spawn(move || std::io::copy(&mut stream, &mut std::io::sink()));
}

/// The tracers attached to one run. Dropping stops them, last started first (a companion reads
/// its counters while the tracer is still attached), on error paths too: none is left behind.
struct Attached(Vec<Child>);

impl Drop for Attached {
    fn drop(&mut self) {
        while let Some(tracer) = self.0.pop() {
            if let Err(err) = stop(tracer) {
                eprintln!("bench: stopping a tracer: {err:#}");
            }
        }
    }
}

/// The name memtrace's background helper runs under while it releases tracepoint events.
const RELEASE_HELPER: &str = "memtrace-detach";

/// Waits until no memtrace helper is still releasing tracepoint events: until then the kernel
/// keeps the syscall tracing slow path on for every task, which would tax the next run, and
/// another tracer's attach waits for the kernel's `event_mutex`. Returns how long it waited.
pub fn wait_for_release() -> Result<Duration> {
    let started = Instant::now();
    while helpers_running()? {
        if started.elapsed() > TRACER_TIMEOUT {
            bail!("{RELEASE_HELPER} still running after {TRACER_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(2));
    }
    Ok(started.elapsed())
}

/// Whether a helper is still at work: one that has exited (a zombie until its new parent,
/// init, reaps it) holds nothing any more.
fn helpers_running() -> Result<bool> {
    for entry in fs::read_dir("/proc")? {
        let path = entry?.path();
        let is_pid = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        // `PID (COMM) STATE ...`: the helper's name has no parenthesis in it.
        let Ok(stat) = fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let running = stat
            .split_once(&format!("({RELEASE_HELPER}) "))
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']));
        if running {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Ctrl-C, as a user would, and wait (a tracer that ignores it is killed), then for the kernel
/// to have released what it attached.
pub fn stop(mut tracer: Child) -> Result<()> {
    let pid = i32::try_from(tracer.id()).context("pid out of range")?;
    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + TRACER_TIMEOUT;
    while tracer.try_wait()?.is_none() {
        if Instant::now() > deadline {
            tracer.kill()?;
            tracer.wait()?;
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    wait_for_release()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_line_gives_seconds_and_count() {
        assert_eq!(
            parse_elapsed("elapsed_ns 1500000000 calls 42\n"),
            Some((1.5, Some(42)))
        );
        assert_eq!(parse_elapsed("elapsed_ns 1000"), Some((1e-6, None)));
        assert_eq!(parse_elapsed("ready"), None);
    }

    #[test]
    fn placeholders_are_expanded() {
        let command = ["x".to_string(), "-p{pid}".into(), "{out}".into()];
        assert_eq!(expand(&command, 7, Path::new("/t/o")), ["x", "-p7", "/t/o"]);
    }
}
