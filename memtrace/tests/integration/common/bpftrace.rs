//! bpftrace as an independent witness: a script on the same kernel events as memtrace, run in the
//! same test, whose counts memtrace's must equal. Its output is read as JSON (`-f json`).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// A running bpftrace script, stopped (and its maps printed) by [`Bpftrace::stop`].
pub struct Bpftrace {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: thread::JoinHandle<()>,
}

impl Bpftrace {
    /// Starts `script` and returns once its probes are attached (its `BEGIN` has run).
    pub fn start(script: &str) -> Bpftrace {
        let script = format!("BEGIN {{ printf(\"ready\\n\"); }} {script}");
        let mut child = Command::new("bpftrace")
            .args(["-f", "json", "-e", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bpftrace (`cargo xtask setup` installs it)");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let bpftrace = Bpftrace {
            child,
            lines,
            reader,
        };
        loop {
            let line = bpftrace
                .lines
                .recv_timeout(super::patience(60))
                .expect("bpftrace attached");
            if line.contains("ready") {
                return bpftrace;
            }
        }
    }

    /// Stops it (SIGINT: it prints its maps) and returns what it printed: `printf` lines
    /// (`{"type": "printf", "data": ...}`) and maps (`{"type": "map", "data": {...}}`).
    pub fn stop(mut self) -> Vec<Value> {
        // SIGINT again every few seconds: on the 6.1 guests bpftrace has been seen to stay
        // running after one (a signal it missed, or one it took before it was polling).
        let deadline = Instant::now() + super::patience(30);
        loop {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            if super::exit_within(&mut self.child, super::patience(3)).is_some() {
                break;
            }
            if Instant::now() > deadline {
                // Kills it and fails the test, naming it.
                super::wait_child(&mut self.child, "bpftrace, sent SIGINTs,", Duration::ZERO);
            }
        }
        // Every line it printed, the maps of its exit last, is read once its output ends.
        self.reader.join().expect("the bpftrace reader");
        self.lines
            .try_iter()
            .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
            .collect()
    }
}

/// The value of a map holding a single number (`@name = count()`, `sum()`), 0 if it is absent.
pub fn number(records: &[Value], name: &str) -> u64 {
    records
        .iter()
        .filter(|v| v["type"] == "map")
        .find_map(|v| v["data"].get(name)?.as_u64())
        .unwrap_or(0)
}

/// The text of every `printf` line.
pub fn printed(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .filter(|v| v["type"] == "printf")
        .filter_map(|v| v["data"].as_str())
        .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// Whether this kernel has kprobes (tracefs lists kprobe events where it has).
pub fn has_kprobes() -> bool {
    [
        "/sys/kernel/tracing/kprobe_events",
        "/sys/kernel/debug/tracing/kprobe_events",
    ]
    .iter()
    .any(|path| std::path::Path::new(path).exists())
}
