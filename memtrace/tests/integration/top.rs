//! `memtrace top` in a real terminal: tmux runs it, `send-keys` drives it and `capture-pane`
//! reads the screen. A paced workload's row is compared with `/proc` (its RSS, its minor-fault
//! rate), an OOM kill in a limited cgroup must appear (and the cgroup count it), and every way
//! of ending must give the terminal back: the alternate screen left, the line discipline
//! cooked again, the summary printed.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::common::{
    self,
    cgroup::{MIB, TestCgroup},
    patience, proc_faults, programs_held_by, workload,
};

/// A tmux session of its own (on a socket of its own) running one command; killed on drop.
struct Tmux {
    name: String,
}

/// What the shell prints after memtrace, so a test sees the exit code and the tty's mode.
const AFTER: &str = "echo exit=$?; stty -a | grep -o -- '-*icanon'; sleep 600";

impl Tmux {
    fn start(name: &str, args: &[&str]) -> Tmux {
        Tmux::start_in(name, args, (100, 30), "")
    }

    /// In a terminal of `(columns, rows)`, with `env` (`NAME=value ...`) before the command.
    fn start_in(name: &str, args: &[&str], (columns, rows): (u16, u16), env: &str) -> Tmux {
        let name = format!("memtrace-top-{name}-{}", std::process::id());
        let command = format!(
            "{env} {} top {}; {AFTER}",
            env!("CARGO_BIN_EXE_memtrace"),
            args.join(" ")
        );
        let (columns, rows) = (columns.to_string(), rows.to_string());
        let status = tmux()
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                &columns,
                "-y",
                &rows,
                &command,
            ])
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session");
        Tmux { name }
    }

    fn screen(&self) -> String {
        let out = tmux()
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let status = tmux()
            .args(["send-keys", "-t", &self.name])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    /// The screen once `ready` says so; panics with the last screen after `secs`.
    fn wait_for(&self, what: &str, secs: u64, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + patience(secs);
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {secs} s; the screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn pane_pid(&self) -> u32 {
        self.format("#{pane_pid}").parse().expect("the pane's pid")
    }

    fn alternate_screen(&self) -> bool {
        self.format("#{alternate_on}") == "1"
    }

    fn format(&self, format: &str) -> String {
        let out = tmux()
            .args(["display-message", "-p", "-t", &self.name, format])
            .output()
            .expect("tmux display-message");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// memtrace's pid: the pane's shell's child.
    fn memtrace_pid(&self) -> u32 {
        let shell = self.pane_pid();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default();
        children
            .split_whitespace()
            .find_map(|pid| {
                let pid: u32 = pid.parse().ok()?;
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                (comm.trim() == "memtrace").then_some(pid)
            })
            .expect("memtrace running in the pane")
    }

    /// Waits for memtrace's end and checks the terminal was given back: the summary and a zero
    /// exit printed on the normal screen, the tty cooked (`icanon`, not `-icanon`).
    fn assert_restored(&self, how: &str) -> String {
        let screen = self.wait_for(&format!("exit after {how}"), 30, |s| s.contains("exit="));
        assert!(
            !self.alternate_screen(),
            "{how}: still on the alternate screen"
        );
        assert!(screen.contains("exit=0"), "{how}:\n{screen}");
        assert!(
            screen.contains("memtrace top: "),
            "{how}: no summary\n{screen}"
        );
        let stty = self.wait_for("stty's line", 10, |s| s.contains("icanon"));
        assert!(
            stty.lines().any(|l| l.trim() == "icanon"),
            "{how}: the tty is left raw\n{stty}"
        );
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = tmux().args(["kill-session", "-t", &self.name]).status();
    }
}

fn tmux() -> Command {
    let mut command = Command::new("tmux");
    command.args(["-L", "memtrace-test"]);
    command
}

macro_rules! require_tmux {
    () => {
        require_root!();
        if !common::has_tool("tmux") {
            common::skip(module_path!(), "tmux is not installed", true);
            return;
        }
    };
}

/// The row of `pid` on a screen, split in columns.
fn row_of(screen: &str, pid: u32) -> Option<Vec<String>> {
    screen
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().is_some_and(|c| c == &pid.to_string()))
}

/// Whether any SGR sequence (`ESC [ ... m`) sets a colour: 30-38/40-48 (39 and 49 are the
/// defaults), 90-97 and 100-107 (the bright ones).
fn has_colour(screen: &str) -> bool {
    screen.split("\u{1b}[").skip(1).any(|sequence| {
        let Some((params, _)) = sequence.split_once('m') else {
            return false;
        };
        params.split(';').any(|p| {
            matches!(
                p.parse::<u32>(),
                Ok(30..=38 | 40..=48 | 90..=97 | 100..=107)
            )
        })
    })
}

/// `812K`, `64.1M`, `1.2G` in KiB.
fn kib(size: &str) -> f64 {
    let (number, unit) = size.split_at(size.len() - 1);
    let number: f64 = number.parse().unwrap_or_else(|_| panic!("a size: {size}"));
    number
        * match unit {
            "K" => 1.0,
            "M" => 1024.0,
            "G" => 1024.0 * 1024.0,
            _ => panic!("a size: {size}"),
        }
}

/// `workloads/paced_faults`: `resident_mib` kept, `per_second` minor faults at a steady pace.
fn paced_faults(resident_mib: u32, per_second: u32) -> std::process::Child {
    Command::new(workload("paced_faults"))
        .args([resident_mib.to_string(), per_second.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start paced_faults")
}

fn rss_kb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_paced_workloads_row_shows_its_rss_and_fault_rate_as_proc_does() {
    require_tmux!();
    let mut paced = paced_faults(48, 5000);
    let pid = paced.id();
    // Its resident part touched, it settles to the pace.
    let settled = Instant::now() + Duration::from_secs(1);
    while rss_kb(pid) < 48.0 * 1024.0 || Instant::now() < settled {
        thread::sleep(Duration::from_millis(50));
    }
    let top = Tmux::start("paced", &["--pid", &pid.to_string()]);
    top.wait_for("the workload's row", 30, |s| row_of(s, pid).is_some());
    // The truth over the same seconds: /proc's count of its minor faults.
    let (before, _) = proc_faults(pid);
    let started = Instant::now();
    thread::sleep(patience(4));
    let (after, _) = proc_faults(pid);
    let true_rate = (after - before) as f64 / started.elapsed().as_secs_f64();
    let screen = top.screen();
    let true_rss = rss_kb(pid);
    // Quit before the workload goes: its exit would end top by itself (`--pid`).
    top.keys(&["q"]);
    top.assert_restored("q");
    let _ = paced.kill();
    let _ = paced.wait();
    let row = row_of(&screen, pid).unwrap_or_else(|| panic!("no row for {pid}:\n{screen}"));

    assert_eq!(row[1], "paced_faults", "{screen}");
    let shown_rss = kib(&row[2]);
    // Its RSS moves by up to one tick's window (500 pages touched, then given back) between
    // top's reading and this one: that much, plus 3 %.
    let window_kb = 500.0 * 4.0;
    assert!(
        (shown_rss - true_rss).abs() <= window_kb + true_rss * 0.03,
        "RSS {shown_rss} KiB shown, VmRSS {true_rss} KiB\n{screen}"
    );
    let shown_rate: f64 = row[4]
        .parse()
        .unwrap_or_else(|_| panic!("MINFLT/s: {screen}"));
    assert!(
        (shown_rate - true_rate).abs() <= true_rate * 0.2,
        "{shown_rate} minor faults/s shown, /proc says {true_rate:.0}/s\n{screen}"
    );
    // Only it: --pid narrows the table to the process and its descendants.
    assert!(screen.contains("1 processes"), "{screen}");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn with_stacks_a_detail_shows_the_fault_stack_and_detaches_when_closed() {
    require_tmux!();
    let mut paced = paced_faults(8, 5000);
    let pid = paced.id();
    let top = Tmux::start("stacks", &["--stacks", "--pid", &pid.to_string()]);
    top.wait_for("the workload's row", 30, |s| row_of(s, pid).is_some());
    let memtrace = top.memtrace_pid();
    let programs_before = programs_held_by(memtrace).len();
    let (before, _) = proc_faults(pid);
    top.keys(&["Enter"]);
    let stack_line = |screen: &str| {
        screen
            .lines()
            .find(|l| l.contains(" main < "))
            .map(str::to_owned)
    };
    top.wait_for("a stack through main", 60, |s| stack_line(s).is_some());
    // Two more readings, so the count is well above noise.
    thread::sleep(patience(2));
    let screen = top.screen();
    let (after, _) = proc_faults(pid);
    let programs_open = programs_held_by(memtrace).len();
    let line = stack_line(&screen).unwrap_or_else(|| panic!("no stack:\n{screen}"));
    let counted: u64 = line.split_whitespace().next().unwrap().parse().unwrap();
    // The innermost frame is the loop that touches the pages.
    let frames = line.split_whitespace().nth(1).unwrap();
    assert_eq!(frames, "main", "{line}");
    assert!(
        counted > 0 && counted <= after - before,
        "{counted} faults on the stack, {} by /proc since before the detail opened\n{screen}",
        after - before
    );
    assert!(
        programs_open > programs_before,
        "the stack programs were attached"
    );
    top.keys(&["Escape"]);
    let deadline = Instant::now() + patience(10);
    while programs_held_by(memtrace).len() > programs_before {
        assert!(
            Instant::now() < deadline,
            "the stack programs stay after the detail closed"
        );
        thread::sleep(Duration::from_millis(100));
    }
    top.keys(&["q"]);
    top.assert_restored("q after the stacks");
    let _ = paced.kill();
    let _ = paced.wait();
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn an_oom_kill_in_a_limited_cgroup_appears_and_stays_until_dismissed() {
    require_tmux!();
    let cgroup = TestCgroup::new("top", 32 * MIB);
    let top = Tmux::start("oom", &["--cgroup", &cgroup.path]);
    top.wait_for("the table", 30, |s| s.contains("COMMAND"));
    let mut hog = cgroup.spawn(&workload("oom_alloc"), &["hog", "256"]);
    let hog_pid = hog.id();
    let _ = hog.wait();
    let banner = "OOM KILL ";
    let screen = top.wait_for("the kill", 30, |s| s.contains(banner));
    assert_eq!(cgroup.oom_kills(), 1, "the cgroup's own count");
    assert!(
        screen.contains(&format!(" {hog_pid} oom_alloc ")),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("cgroup {}, limit 32.0M", cgroup.path)),
        "{screen}"
    );
    assert!(screen.contains("what led to it: "), "{screen}");
    // It stays across readings, until `x`.
    thread::sleep(patience(2));
    assert!(
        top.screen().contains(banner),
        "the kill line went away by itself"
    );
    top.keys(&["x"]);
    top.wait_for("the kill dismissed", 10, |s| !s.contains(banner));
    top.keys(&["C-c"]);
    let screen = top.assert_restored("Ctrl-C");
    assert!(screen.contains("1 OOM kills"), "{screen}");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_terminal_is_given_back_after_every_ending() {
    require_tmux!();
    let quit = Tmux::start("quit", &[]);
    quit.wait_for("the table", 30, |s| s.contains("COMMAND"));
    quit.keys(&["q"]);
    quit.assert_restored("q");

    let term = Tmux::start("term", &[]);
    term.wait_for("the table", 30, |s| s.contains("COMMAND"));
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(term.memtrace_pid() as libc::pid_t, libc::SIGTERM) };
    let screen = term.assert_restored("SIGTERM");
    assert!(screen.contains("(SIGTERM)"), "{screen}");

    let timed = Tmux::start("duration", &["--duration", "2"]);
    let screen = timed.assert_restored("--duration");
    assert!(screen.contains("(--duration)"), "{screen}");

    let mut sleeper = Command::new("sleep").arg("3").spawn().expect("start sleep");
    let target = Tmux::start("target", &["--pid", &sleeper.id().to_string()]);
    let screen = target.assert_restored("the target exiting");
    let _ = sleeper.wait();
    assert!(screen.contains("(the processes exited)"), "{screen}");

    let help = Tmux::start("keys", &[]);
    help.wait_for("the table", 30, |s| s.contains("COMMAND"));
    // A tour of the keys first: none of them may end it or break the screen.
    help.keys(&["?"]);
    help.wait_for("the help", 10, |s| s.contains("sort by the column"));
    for key in [
        "Escape", "c", ">", "/", "s", "h", "Enter", "c", "Enter", "Escape", "p", "p",
    ] {
        help.keys(&[key]);
    }
    help.wait_for("the table again", 10, |s| {
        s.contains("COMMAND") && s.contains("RSS")
    });
    help.keys(&["q"]);
    help.assert_restored("q after the keys");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn it_fits_80_by_24_without_colour() {
    require_tmux!();
    let top = Tmux::start_in("small", &[], (80, 24), "NO_COLOR=1");
    let screen = top.wait_for("the table", 30, |s| s.contains("COMMAND"));
    for heading in [
        "RSS",
        "GROW/s",
        "MINFLT/s",
        "MAJFLT/s",
        "ALLOC/s",
        "STALLms/s",
        "PSI memory",
    ] {
        assert!(
            screen.contains(heading),
            "{heading} missing at 80x24:\n{screen}"
        );
    }
    let coloured = tmux()
        .args(["capture-pane", "-p", "-e", "-t", &top.name])
        .output()
        .expect("tmux capture-pane -e");
    let escapes = String::from_utf8_lossy(&coloured.stdout);
    assert!(!has_colour(&escapes), "colours with NO_COLOR:\n{escapes:?}");
    top.keys(&["q"]);
    top.assert_restored("q at 80x24");
}
