//! `memtrace serve` against real components: the kernel's own fault counters and a memory
//! cgroup's own OOM-kill counter, Debian's Prometheus server scraping the daemon every second and
//! answering queries, and its `promtool check metrics` on a scrape.

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::common::{
    self, Workload,
    cgroup::{MIB, TestCgroup},
    disk_dir, loaded_programs, programs_held_by, reclaim, schema, still_loaded_after, workload,
    workload_built,
};
use serde_json::Value;

/// How long (seconds, before `common::patience`) the kernel may take to free an exited
/// memtrace's programs.
const RELEASE_SECS: u64 = 2;

/// A free loopback port (bound and released: good enough for a test).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 GET on loopback: (status, body).
fn http_get(port: u16, path: &str, accept: Option<&str>) -> Option<(u16, String)> {
    let (status, body) = http_get_bytes(port, path, accept, common::patience(5))?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A GET's status and body, as bytes (a profile is gzipped), waiting at most `wait`.
fn http_get_bytes(
    port: u16,
    path: &str,
    accept: Option<&str>,
    wait: Duration,
) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response[head_end + 4..].to_vec()))
}

/// A running `memtrace serve`, killed if a test fails.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(extra: &[&str]) -> Daemon {
        Daemon::start_with(extra, &[])
    }

    /// With environment variables (the daemon's test hooks).
    fn start_with(extra: &[&str], env: &[(&str, &Path)]) -> Daemon {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = common::memtrace()
            .args(["serve", "--listen", &listen, "--interval", "0.2"])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start memtrace serve");
        let daemon = Daemon { child, port };
        let deadline = Instant::now() + common::patience(15);
        while http_get(port, "/healthz", None).is_none_or(|(status, _)| status != 200) {
            assert!(
                Instant::now() < deadline,
                "memtrace serve never became healthy"
            );
            thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    /// `/healthz`'s status and body.
    fn health(&self) -> (u16, String) {
        http_get(self.port, "/healthz", None).expect("/healthz answers")
    }

    /// Waits until `/healthz` answers `status`, and returns its body.
    fn wait_health(&self, status: u16) -> String {
        let deadline = Instant::now() + common::patience(10);
        loop {
            let (now, body) = self.health();
            if now == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/healthz still answers {now} ({body:?}), not {status}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn metrics(&self) -> String {
        http_get(self.port, "/metrics", None).expect("scrape").1
    }

    /// The summed value of every sample of `name` carrying all of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_samples(&self.metrics(), name, labels)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// SIGTERM, then its exit status.
    fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + common::patience(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "memtrace serve ignored SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A Prometheus server on loopback scraping one target every second, removed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let port = free_port();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prometheus-{port}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        // The shipped alert rules, evaluated every second.
        let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/prometheus/memtrace-rules.yml")
            .canonicalize()
            .unwrap();
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: memtrace\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target_port}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, dir }
    }

    /// The value of an instant query with one result, if it has one yet.
    fn query(&self, expr: &str) -> Option<f64> {
        let encoded = query_string(expr);
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={encoded}"), None)?;
        if status != 200 {
            return None;
        }
        let reply: Value = serde_json::from_str(&body).ok()?;
        reply["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// The alerts firing now, with their labels.
    fn firing(&self) -> Vec<Value> {
        let Some((200, body)) = http_get(self.port, "/api/v1/alerts", None) else {
            return Vec::new();
        };
        let reply: Value = serde_json::from_str(&body).unwrap_or_default();
        reply["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|alert| alert["state"] == "firing")
            .collect()
    }

    /// Waits until `expr` evaluates to more than `floor`.
    fn wait_above(&self, expr: &str, floor: f64) -> Option<f64> {
        let deadline = Instant::now() + common::patience(30);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(expr);
            if last.is_some_and(|value| value > floor) {
                break;
            }
            thread::sleep(Duration::from_millis(250));
        }
        last
    }

    /// Waits until `expr` evaluates to `expected` (Prometheus scrapes every second).
    fn wait_for(&self, expr: &str, expected: f64) -> Option<f64> {
        let deadline = Instant::now() + common::patience(30);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(expr);
            if last == Some(expected) {
                break;
            }
            thread::sleep(Duration::from_millis(250));
        }
        last
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The processes the daemon still tracks once exited ones have had time to be dropped: each is
/// read a last time on the tick after its exit, and dropped on the next (ticks are 0.2 s here).
fn settled_tracked(daemon: &Daemon) -> f64 {
    let deadline = Instant::now() + common::patience(5);
    loop {
        let tracked = daemon.value("memtrace_tracked_processes", &[]);
        if tracked < 500.0 || Instant::now() > deadline {
            return tracked;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Percent-encodes a query-string value.
fn query_string(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of the Grafana dashboard shipped in `deploy/grafana/`.
fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/memtrace.json");
    let dashboard: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(queries.len() >= 8, "{queries:?}");
    queries
}

/// The metric names in a PromQL expression (ours all start `memtrace_` or `process_`).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("memtrace_") || word.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// A copy of a workload under a name no other process has, so its series is its own.
fn uniquely_named(name: &str, tag: &str) -> PathBuf {
    let copy = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{tag}{}", std::process::id() % 100_000));
    fs::copy(workload(name), &copy).unwrap();
    copy
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn prometheus_sees_the_kernels_fault_count_and_the_cgroups_oom_kill() {
    require_root!();
    let events = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-oom-events.jsonl");
    let _ = fs::remove_file(&events);
    require_tool!("prometheus");
    let daemon = Daemon::start(&["--events", events.to_str().unwrap(), "--bpf-stats"]);
    let prometheus = Prometheus::start(daemon.port);

    // A known fault workload, under a name of its own.
    let binary = uniquely_named("touch_pages", "mtsrv");
    let comm = binary.file_name().unwrap().to_str().unwrap().to_owned();
    let mut work = Workload::start(&binary, &["20000", "1"]);
    work.go();
    let (kernel_minor, kernel_major) = common::proc_faults(work.pid());
    work.finish();

    // The daemon reads the exited process a last time on its next tick.
    let labels = [("comm", comm.as_str()), ("kind", "minor")];
    let deadline = Instant::now() + common::patience(10);
    let mut minor = 0.0;
    while Instant::now() < deadline {
        minor = daemon.value("memtrace_page_faults_total", &labels);
        if minor >= kernel_minor as f64 - 8.0 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    // The kernel also counts the faults execve takes through get_user_pages (a couple), which
    // raise no perf event; the daemon also counts the few taken after /proc was read, at exit.
    assert!(
        minor >= kernel_minor as f64 - 8.0 && minor <= kernel_minor as f64 + 64.0,
        "memtrace {minor} minor faults for {comm}, the kernel {kernel_minor}"
    );
    assert!(kernel_minor >= 20_000 && kernel_major == 0);
    let expr = format!("sum(memtrace_page_faults_total{{comm=\"{comm}\",kind=\"minor\"}})");
    assert_eq!(
        prometheus.wait_for(&expr, minor),
        Some(minor),
        "Prometheus's view of {expr}"
    );

    // A real, contained OOM kill.
    let cgroup = TestCgroup::new("serve", 32 * MIB);
    let mut hog = cgroup.spawn(&workload("oom_alloc"), &["hog", "64"]);
    let status = hog.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_eq!(cgroup.oom_kills(), 1, "the cgroup's own oom_kill counter");
    let expr = format!(
        "sum(memtrace_oom_kills_total{{cgroup=\"{}\"}})",
        cgroup.path
    );
    assert_eq!(
        prometheus.wait_for(&expr, 1.0),
        Some(1.0),
        "Prometheus's view of {expr}"
    );
    // The kill is an increase to rate() and increase(), though it is the first of its process
    // name and cgroup (the series was scraped at 0 before it counted): the query alerts and
    // dashboards use sees it, and the shipped alert fires.
    let expr = "sum(increase(memtrace_oom_kills_total[1m]))";
    let increase = prometheus.wait_above(expr, 0.5);
    assert!(
        increase.is_some_and(|n| n > 0.5),
        "{expr} = {increase:?} after an OOM kill"
    );
    // So is it to the node's total, which was there at 0 before any kill.
    let expr = "sum(increase(memtrace_node_oom_kills_total[1m]))";
    let increase = prometheus.wait_above(expr, 0.5);
    assert!(
        increase.is_some_and(|n| n > 0.5),
        "{expr} = {increase:?} after an OOM kill"
    );
    let deadline = Instant::now() + common::patience(30);
    let alert = loop {
        let firing = prometheus.firing();
        if let Some(alert) = firing.into_iter().find(|alert| {
            alert["labels"]["alertname"] == "MemtraceOOMKill"
                && alert["labels"]["cgroup"] == cgroup.path.as_str()
        }) {
            break alert;
        }
        assert!(
            Instant::now() < deadline,
            "MemtraceOOMKill never fired for {}",
            cgroup.path
        );
        thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(alert["labels"]["comm"], "oom_alloc", "{alert}");
    let lines = fs::read_to_string(&events).unwrap();
    // The same object `oom --json` prints for a kill.
    let kills = schema::records("oom", &lines);
    assert_eq!(kills.len(), 1, "{lines}");
    assert_eq!(kills[0]["victim"]["pid"], hog.id());
    assert_eq!(kills[0]["cgroup"]["path"], cgroup.path.as_str());
    // The same enriched record as `memtrace oom` (its history is tested there: this hog lives
    // for a fraction of a sample).
    assert!(kills[0]["victim"]["history"].is_array(), "{}", kills[0]);
    let users = kills[0]["cgroup"]["top_users"].as_array().unwrap();
    assert!(users.len() <= 5, "{users:?}");

    // Every query of the Grafana dashboard is valid PromQL, and names only metrics the daemon
    // exports.
    let exported: Vec<String> = daemon
        .metrics()
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    for expr in dashboard_queries() {
        for name in metric_names(&expr) {
            assert!(
                exported.contains(&name),
                "the dashboard queries {name}, which is not exported"
            );
        }
        let concrete = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$job", ".*");
        let encoded = query_string(&concrete);
        let (status, body) = http_get(
            prometheus.port,
            &format!("/api/v1/query?query={encoded}"),
            None,
        )
        .unwrap();
        assert_eq!(
            status, 200,
            "Prometheus rejected the dashboard query {concrete}: {body}"
        );
    }

    // The exposition passes Prometheus's own linter.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(daemon.metrics().as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let ids = programs_held_by(daemon.child.id());
    assert!(!ids.is_empty());
    assert!(
        daemon.stop().success(),
        "SIGTERM must end the daemon with exit 0"
    );
    assert_eq!(
        still_loaded_after(&ids, common::patience(RELEASE_SECS)),
        vec![]
    );
}

/// The metric names docs/serve.md's table documents.
fn documented_families() -> Vec<String> {
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/serve.md")).unwrap();
    let names: Vec<String> = doc
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned))
        .collect();
    assert!(names.len() >= 20, "{names:?}");
    names
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_first_scrape_has_every_documented_family() {
    require_root!();
    let daemon = Daemon::start(&["--bpf-stats"]);
    let text = daemon.metrics();
    let has_samples = |name: &str| {
        text.lines().any(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
    };
    for name in documented_families() {
        // A family whose series are per owner may have none yet (no process was OOM-killed):
        // its node total stands at 0 for it, so that sum(increase(...)) reads 0, not "No data".
        let node = name.replacen("memtrace_", "memtrace_node_", 1);
        assert!(
            has_samples(&name) || (node != name && has_samples(&node)),
            "neither {name} nor {node} has a series in the first scrape:\n{text}"
        );
    }
    for line in text
        .lines()
        .filter(|line| line.starts_with("memtrace_node_"))
    {
        let labels = line.split_whitespace().next().unwrap();
        assert!(
            !labels.contains("comm=") && !labels.contains("cgroup="),
            "a node total has an owner label: {line}"
        );
    }
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn openmetrics_for_scrapers_that_ask_and_classic_text_otherwise() {
    require_root!();
    let daemon = Daemon::start(&[]);
    let (_, openmetrics) = http_get(
        daemon.port,
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    )
    .unwrap();
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");
    // The drop counters have series from the daemon's first reading, taken before it serves; a
    // family without series (no process has faulted yet) is left out of an exposition.
    assert!(
        openmetrics.contains("# TYPE memtrace_events_dropped counter"),
        "{openmetrics}"
    );
    let classic = daemon.metrics();
    assert!(
        !classic.contains("# EOF")
            && classic.contains("# TYPE memtrace_events_dropped_total counter"),
        "{classic}"
    );
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn sighup_reopens_the_events_file() {
    require_root!();
    let events = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-rotate.jsonl");
    let rotated = events.with_extension("jsonl.1");
    let _ = fs::remove_file(&events);
    let daemon = Daemon::start(&["--events", events.to_str().unwrap()]);
    assert!(events.exists());
    fs::rename(&events, &rotated).unwrap();
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + common::patience(5);
    while !events.exists() {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reopen {}",
            events.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        fs::metadata(&events).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert!(daemon.stop().success());
    let _ = fs::remove_file(&events);
    let _ = fs::remove_file(&rotated);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn series_are_capped_and_memory_stays_flat_under_process_churn() {
    require_root!();
    let daemon = Daemon::start(&["--by", "pid", "--max-series", "50"]);
    let churn = workload("churn");
    let rss = |daemon: &Daemon| daemon.value("process_resident_memory_bytes", &[]);
    let run_batch = || {
        let status = Command::new(&churn).args(["3000", "4"]).status().unwrap();
        assert!(status.success());
    };
    run_batch();
    thread::sleep(Duration::from_millis(600));
    let after_first = rss(&daemon);
    for _ in 0..3 {
        run_batch();
    }
    // Two ticks later every exited process has been read a last time and dropped.
    thread::sleep(Duration::from_millis(600));
    let metrics = daemon.metrics();
    let after_all = sum_samples(&metrics, "process_resident_memory_bytes", &[]);
    let tracked = sum_samples(&metrics, "memtrace_tracked_processes", &[]);
    let series = sum_samples(&metrics, "memtrace_series", &[]);
    assert!(
        series <= 50.0,
        "{series} label sets in use, with --max-series 50"
    );
    assert!(
        metrics.contains("pid=\"other\""),
        "12000 processes with --max-series 50 must fold into pid=\"other\""
    );
    assert!(
        settled_tracked(&daemon) < 500.0,
        "{tracked} processes still tracked after the churn ended, and not dropped since"
    );
    assert!(
        after_all - after_first < 4.0 * MIB as f64,
        "the daemon grew from {after_first} to {after_all} bytes over 9000 more processes"
    );
    let names: Vec<String> = loaded_programs().into_iter().map(|(_, n)| n).collect();
    assert!(names.iter().any(|n| n == "mt_fault_minor"));
    assert!(daemon.stop().success());
}

#[test]
fn a_bad_listen_address_is_exit_2() {
    // Taken by this test, so binding it fails as it would for a user.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    for address in [
        "nowhere",
        "127.0.0.1:99999",
        "127.0.0.1:-1",
        in_use.as_str(),
    ] {
        let out = common::run_memtrace(&["serve", "--listen", address]);
        assert_eq!(out.status.code(), Some(2), "{address}: {out:?}");
        // Ours is one line; clap's (a malformed address) is its standard three.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains("listen") && first.contains(address),
            "{address}: {stderr}"
        );
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_soak_of_process_churn_keeps_counters_equal_to_the_kernels() {
    require_root!();
    let daemon = Daemon::start(&["--by", "comm"]);
    let churn = uniquely_named("churn", "mtsoak");
    let comm = churn.file_name().unwrap().to_str().unwrap().to_owned();
    let mut kernel = 0u64;
    let mut execs = 0u64;
    for _ in 0..4 {
        #[expect(
            clippy::zombie_processes,
            reason = "reaped by wait4 below, for its rusage"
        )]
        let child = Command::new(&churn)
            .args(["3000", "4"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // The kernel's own count for the whole tree, exit included: wait4's rusage.
        let mut status = 0;
        // SAFETY: all-zero is a valid rusage; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: our child's pid and valid out-pointers.
        let reaped = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        assert!(reaped > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        kernel += usage.ru_minflt as u64;
        execs += 1;
    }
    // Every process of the 4 trees has exited; two ticks later each was read a last time.
    let labels = [("comm", comm.as_str()), ("kind", "minor")];
    let deadline = Instant::now() + common::patience(10);
    let mut counted = 0.0;
    while Instant::now() < deadline {
        counted = daemon.value("memtrace_page_faults_total", &labels);
        if counted >= kernel as f64 - 8.0 * execs as f64 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    // The kernel's count also holds the couple of faults each execve takes through
    // get_user_pages, which no perf event reports; nothing else may differ.
    assert!(
        counted <= kernel as f64 && counted >= kernel as f64 - 8.0 * execs as f64,
        "memtrace {counted} minor faults over 12,004 processes, the kernel's rusage {kernel}"
    );
    let tracked = settled_tracked(&daemon);
    assert!(
        tracked < 500.0,
        "{tracked} processes still tracked: kernel tables must not grow"
    );
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn healthz_tells_a_stalled_or_failing_reading_and_the_daemon_goes_on() {
    require_root!();
    // The reading of the kernel's counters is made to stall, then to fail, through the daemon's
    // test hooks (MEMTRACE_FAULT_INJECTION): the endpoint, on its own thread, must see both.
    let hooks =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hooks-{}", std::process::id()));
    let _ = fs::remove_dir_all(&hooks);
    fs::create_dir_all(&hooks).unwrap();
    let daemon = Daemon::start_with(&[], &[("MEMTRACE_FAULT_INJECTION", &hooks)]);
    assert_eq!(daemon.health().0, 200);

    fs::write(hooks.join("stall-tick"), "").unwrap();
    let why = daemon.wait_health(503);
    assert!(why.contains("stalled"), "{why}");
    assert!(
        daemon.metrics().contains("memtrace_page_faults_total"),
        "/metrics still answers while the reading is stalled"
    );
    fs::remove_file(hooks.join("stall-tick")).unwrap();
    daemon.wait_health(200);

    fs::write(hooks.join("fail-tick"), "").unwrap();
    let why = daemon.wait_health(503);
    assert!(why.contains("failed") && why.contains("injected"), "{why}");
    assert!(daemon.value("memtrace_failed_readings_total", &[]) >= 3.0);
    fs::remove_file(hooks.join("fail-tick")).unwrap();
    daemon.wait_health(200);

    let status = daemon.stop();
    assert!(status.success(), "memtrace serve exited with {status}");
    fs::remove_dir_all(&hooks).unwrap();
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn processes_shorter_than_a_reading_get_their_cgroup() {
    require_root!();
    // Each toucher lives a few milliseconds, far less than a reading (0.2 s): /proc never shows
    // it to the daemon; the kernel recorded its memory cgroup with its counts.
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::new("short", 64 * MIB);
    let toucher = workload("touch_pages");
    let (runs, pages) = (20, 300);
    let mut spawner = cgroup.spawn(
        &workload("spawn_many"),
        &[
            &runs.to_string(),
            toucher.to_str().unwrap(),
            &pages.to_string(),
            "1",
        ],
    );
    let mut report = String::new();
    spawner
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    assert!(spawner.wait().unwrap().success(), "{report}");
    let kernel: f64 = report
        .split_whitespace()
        .find_map(|word| word.strip_prefix("children_minflt="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {report:?}"));
    assert!(kernel >= f64::from(runs * pages), "{report}");

    let labelled = |cgroup: &str| {
        daemon.value(
            "memtrace_page_faults_total",
            &[
                ("comm", "touch_pages"),
                ("cgroup", cgroup),
                ("kind", "minor"),
            ],
        )
    };
    // Counts show once the series has been scraped at 0 (this test's scrapes), a reading later.
    let deadline = Instant::now() + common::patience(10);
    let mut counted = labelled(&cgroup.path);
    while counted < kernel - f64::from(2 * runs) - 8.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        counted = labelled(&cgroup.path);
    }
    // The kernel also counts the couple of faults each execve takes through get_user_pages,
    // which raise no perf event.
    assert!(
        counted >= kernel - f64::from(2 * runs) - 8.0 && counted <= kernel,
        "memtrace counted {counted} minor faults of touch_pages in {}, the kernel {kernel}",
        cgroup.path
    );
    assert_eq!(
        labelled("unknown"),
        0.0,
        "short-lived touchers counted without their cgroup"
    );
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn reclaim_stalls_are_counted_as_bpftrace_counts_them() {
    require_root!();
    require_tool!("bpftrace");
    let file = reclaim::big_file(96);
    let cgroup = TestCgroup::new("serve-reclaim", 32 * MIB);
    let daemon = Daemon::start(&["--by", "comm,cgroup"]);
    let mut reader = Workload::start_in(
        &cgroup.dir,
        &workload("read_file"),
        &[file.to_str().unwrap()],
    );
    let independent = reclaim::Bpftrace::memcg_stalls_of(reader.pid());
    reader.go();
    reader.finish();
    let (_, ends) = independent.counts();
    assert!(
        ends >= 10,
        "reading 96 MiB through 32 MiB reclaimed {ends} times"
    );

    let labels = [
        ("comm", "read_file"),
        ("cgroup", cgroup.path.as_str()),
        ("kind", "memcg"),
    ];
    // A reading after the exit, and one more once this test's scrapes have seen the series at 0.
    let deadline = Instant::now() + common::patience(10);
    let mut counted = daemon.value("memtrace_reclaim_stalls_total", &labels);
    while counted != ends as f64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        counted = daemon.value("memtrace_reclaim_stalls_total", &labels);
    }
    assert_eq!(counted, ends as f64, "memtrace vs bpftrace");
    let seconds = daemon.value("memtrace_reclaim_stall_seconds_total", &labels);
    assert!(
        seconds > 0.0 && seconds < 60.0,
        "{seconds} s stalled in {ends} reclaims"
    );
    let direct = daemon.value(
        "memtrace_reclaim_stalls_total",
        &[("cgroup", cgroup.path.as_str()), ("kind", "direct")],
    );
    assert_eq!(direct, 0.0, "no direct reclaim: the machine has room");
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn series_are_named_after_the_pods_containers_and_units_their_cgroups_belong_to() {
    require_root!();
    // The trees kubelet (systemd cgroup driver, containerd) and systemd make, here under the
    // test's own cgroup: what is read is the path, on v1 and v2 alike.
    let uid = "2c5ea6a7-8d0f-4b8e-9a41-6f3e2d1c0b9a";
    let id = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d";
    let pod_slice = format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"));
    let scope = format!("cri-containerd-{id}.scope");
    let pod = TestCgroup::nested(
        "pods",
        &[
            "kubepods.slice",
            "kubepods-burstable.slice",
            &pod_slice,
            &scope,
        ],
        64 * MIB,
    );
    let unit = TestCgroup::nested(
        "units",
        &["system.slice", "memtrace-probe.service"],
        64 * MIB,
    );
    let daemon = Daemon::start(&["--by", "pod,container,qos,unit"]);
    for cgroup in [&pod, &unit] {
        let mut toucher = cgroup.spawn(&workload("touch_pages"), &["3000", "1"]);
        assert!(toucher.wait().unwrap().success());
    }
    let faults = |labels: &[(&str, &str)]| {
        let mut labels = labels.to_vec();
        labels.push(("kind", "minor"));
        daemon.value("memtrace_page_faults_total", &labels)
    };
    let container = format!("containerd://{id}");
    let in_pod = [
        ("pod_uid", uid),
        ("container_id", container.as_str()),
        ("qos_class", "burstable"),
        ("systemd_unit", ""),
    ];
    let in_unit = [
        ("pod_uid", ""),
        ("container_id", ""),
        ("systemd_unit", "memtrace-probe.service"),
    ];
    // A reading after the exits, and one more once the series have been scraped at 0.
    let deadline = Instant::now() + common::patience(10);
    while (faults(&in_pod) < 3000.0 || faults(&in_unit) < 3000.0) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(faults(&in_pod) >= 3000.0, "{}", daemon.metrics());
    assert!(faults(&in_unit) >= 3000.0, "{}", daemon.metrics());
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_daemon_keeps_no_capability_it_does_not_need() {
    require_root!();
    let daemon = Daemon::start(&[]);
    let status = fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
    let set = |name: &str| {
        let hex = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"));
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    const CAP_BPF: u64 = 1 << 39;
    assert_eq!(set("CapBnd:"), 0, "{status}");
    assert_eq!(set("CapInh:"), 0, "{status}");
    // CAP_BPF alone where the kernel refuses the unprivileged every bpf() command, reads of
    // held maps included; else nothing.
    let kept = set("CapPrm:");
    assert!(kept == 0 || kept == CAP_BPF, "{status}");
    assert_eq!(set("CapEff:"), kept, "{status}");
    if kept != 0 {
        let disabled = fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").unwrap();
        assert_ne!(
            disabled.trim(),
            "0",
            "CAP_BPF kept though unprivileged BPF is allowed"
        );
    }
    // And it still reads its maps: a reading succeeds.
    assert!(
        daemon
            .metrics()
            .contains("memtrace_last_reading_timestamp_seconds")
    );
    assert_ne!(
        daemon.value("memtrace_last_reading_timestamp_seconds", &[]),
        0.0
    );
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_faults_profile_pulled_as_profilers_pull_it_counts_as_the_kernel_does() {
    require_root!();
    require_tool!("go");
    let binary = workload_built("fault_stacks", "-nofp", &["-g", "-fomit-frame-pointer"]);
    let data = disk_dir().join("serve-profile.data");
    fs::write(&data, vec![7u8; 512 * 4096]).unwrap();
    let daemon = Daemon::start(&["--profiles"]);
    let (status, why) = http_get(daemon.port, "/debug/pprof/faults?seconds=0", None).unwrap();
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("from 1 to 300"), "{why}");

    // As Parca and Alloy pull a delta profile: the next N seconds.
    let held_before = programs_held_by(daemon.child.id());
    let seconds = common::patience(6).as_secs().clamp(6, 300);
    let port = daemon.port;
    let request = thread::spawn(move || {
        http_get_bytes(
            port,
            &format!("/debug/pprof/faults?seconds={seconds}"),
            None,
            Duration::from_secs(seconds) + common::patience(30),
        )
    });
    // Its programs attached, a program with known faults per function runs.
    let deadline = Instant::now() + common::patience(20);
    let profiling = loop {
        let held = programs_held_by(daemon.child.id());
        let new: Vec<u64> = held
            .into_iter()
            .filter(|id| !held_before.contains(id))
            .collect();
        if !new.is_empty() {
            break new;
        }
        assert!(Instant::now() < deadline, "the profile never attached");
        thread::sleep(Duration::from_millis(50));
    };
    // Two processes, one after the other: a profile of the machine has both, each whole.
    let runs: Vec<(String, String)> = (0..2)
        .map(|_| {
            let child = Command::new(&binary)
                .args(["3000", "5000", data.to_str().unwrap()])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let pid = child.id().to_string();
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success());
            (pid, String::from_utf8_lossy(&output.stderr).into_owned())
        })
        .collect();
    let (status, body) = request.join().unwrap().expect("the profile's response");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let profile = common::scratch("serve", "faults.pb.gz");
    fs::write(&profile, &body).unwrap();
    let raw = crate::pprof::raw(&profile);
    assert_eq!(
        raw.types,
        ["faults/count", "minor_faults/count", "major_faults/count"]
    );
    for (pid, stderr) in &runs {
        let ours: Vec<&crate::pprof::RawSample> = raw
            .samples
            .iter()
            .filter(|sample| sample.labels.get("pid") == Some(pid))
            .collect();
        assert!(!ours.is_empty(), "no sample of pid {pid}");
        // Per function, as the program's own getrusage counted each phase.
        for (phase, leaf) in [("near", "touch_near"), ("deep", "touch_deep")] {
            let counted = crate::pprof::phase_faults(stderr, phase);
            let profiled: i64 = ours
                .iter()
                .filter(|sample| raw.leaf(sample) == Some(leaf))
                .map(|sample| sample.values[0])
                .sum();
            assert_eq!(profiled, counted, "faults in {leaf} of pid {pid}");
        }
    }
    // The profile's programs are gone with it; the daemon's stay.
    assert_eq!(
        still_loaded_after(&profiling, common::patience(RELEASE_SECS)),
        vec![]
    );
    assert_eq!(programs_held_by(daemon.child.id()), held_before);
    assert!(daemon.stop().success());
}
