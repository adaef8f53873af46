//! `--pprof FILE` read back by the real `go tool pprof` (Debian's golang-go), for every stacks
//! view, on the same run as memtrace's own JSON report: the totals pprof reads per sample type
//! equal the report's, one sample per stack row, the sample types are named as documented, the
//! workload's frames carry the function and `file:line` the report names, and the workload's
//! mapping carries the build id `readelf -n` reads in its file.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::common::{self, disk_dir, memtrace, schema, workload_built};

/// A profile as `go tool pprof -raw` prints it back.
#[derive(Debug)]
pub(crate) struct Raw {
    /// `type/unit`, in order.
    pub(crate) types: Vec<String>,
    /// The type marked `[dflt]`.
    default: Option<String>,
    pub(crate) samples: Vec<RawSample>,
    /// By id.
    locations: HashMap<u64, RawLocation>,
    /// File and build id, in order.
    mappings: Vec<(String, Option<String>)>,
}

#[derive(Debug)]
pub(crate) struct RawSample {
    pub(crate) values: Vec<i64>,
    /// Innermost first.
    locations: Vec<u64>,
    pub(crate) labels: HashMap<String, String>,
}

#[derive(Debug)]
struct RawLocation {
    function: String,
    /// `file:line`.
    place: String,
}

impl Raw {
    pub(crate) fn totals(&self) -> Vec<i64> {
        let mut totals = vec![0; self.types.len()];
        for sample in &self.samples {
            for (total, value) in totals.iter_mut().zip(&sample.values) {
                *total += value;
            }
        }
        totals
    }

    /// The innermost function of a sample.
    pub(crate) fn leaf(&self, sample: &RawSample) -> Option<&str> {
        let id = sample.locations.first()?;
        Some(self.locations[id].function.as_str())
    }

    fn build_id_of(&self, file: &str) -> Option<&str> {
        let (_, id) = self
            .mappings
            .iter()
            .find(|(name, _)| name == file)
            .unwrap_or_else(|| panic!("no mapping of {file}: {:#?}", self.mappings));
        id.as_deref()
    }
}

/// `go tool pprof ARGS PROFILE`'s output; it must succeed. Go's caches go to the test's own
/// directory, and nothing is fetched (Debian's Go toolchain, local only).
fn go_pprof(args: &[&str], profile: &Path) -> String {
    let home = common::scratch("pprof", "go-home");
    fs::create_dir_all(&home).unwrap();
    let output = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(profile)
        .env("HOME", &home)
        .env("GOCACHE", home.join("cache"))
        .env("GOPATH", home.join("go"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .output()
        .expect("run go tool pprof");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "go tool pprof {args:?}: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// The profile as `go tool pprof -raw` reads it.
pub(crate) fn raw(profile: &Path) -> Raw {
    let text = go_pprof(&["-raw"], profile);
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|line| *line == "Samples:")
        .unwrap_or_else(|| panic!("no samples in {text}"));
    let header = lines.next().unwrap();
    let types = header
        .split_whitespace()
        .map(|t| t.trim_end_matches("[dflt]").to_owned())
        .collect();
    let default = header
        .split_whitespace()
        .find_map(|t| t.strip_suffix("[dflt]"))
        .map(str::to_owned);
    let mut samples: Vec<RawSample> = Vec::new();
    for line in lines.by_ref().take_while(|line| *line != "Locations") {
        // `      2000       2000          0: 1 2 3 ` or, under it, `comm:[x] pid:[42]`.
        let (head, tail) = line.split_once(':').unwrap();
        let values: Option<Vec<i64>> = head.split_whitespace().map(|v| v.parse().ok()).collect();
        match values {
            Some(values) if !values.is_empty() => samples.push(RawSample {
                values,
                locations: tail
                    .split_whitespace()
                    .map(|id| id.parse().unwrap())
                    .collect(),
                labels: HashMap::new(),
            }),
            _ => {
                let sample = samples.last_mut().expect("labels under a sample");
                // `key:[value]` pairs; a value (a comm) may hold spaces and colons.
                let mut rest = line.trim_start();
                while let Some((key, tail)) = rest.split_once(":[") {
                    let (value, after) = tail.split_once(']').expect("a label's closing ]");
                    sample
                        .labels
                        .insert(key.trim().to_owned(), value.to_owned());
                    rest = after.trim_start();
                }
            }
        }
    }
    let mut locations = HashMap::new();
    for line in lines.by_ref().take_while(|line| *line != "Mappings") {
        // `     6: 0x14c7 M=1 touch_deep /path/fault_stacks.c:30 s=0`
        let (id, rest) = line.split_once(':').unwrap();
        let mut words = rest
            .split_whitespace()
            .skip(1)
            .skip_while(|w| w.starts_with("M="));
        let function = words.next().unwrap_or("").to_owned();
        let place = words.next().unwrap_or("").to_owned();
        locations.insert(id.trim().parse().unwrap(), RawLocation { function, place });
    }
    let mappings = lines
        .map(|line| {
            // `1: 0x1145/0x1511/0x1145 /tmp/fault_stacks 9daa7a32... [FN][FL][LN]`
            let words: Vec<&str> = line.split_whitespace().collect();
            let build_id = words
                .get(3)
                .filter(|w| !w.starts_with('['))
                .map(|w| w.to_string());
            (words[2].to_owned(), build_id)
        })
        .collect();
    Raw {
        types,
        default,
        samples,
        locations,
        mappings,
    }
}

/// The GNU build id `readelf -n` reads in a file.
fn readelf_build_id(file: &str) -> String {
    let output = Command::new("readelf").args(["-n", file]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("{file} has no build id: {text}"))
        .to_owned()
}

/// The faults fault_stacks's own getrusage counted in a phase (`near`, `deep`), from its
/// stderr (`PHASE MINOR MAJOR`).
pub(crate) fn phase_faults(stderr: &str, phase: &str) -> i64 {
    stderr
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{phase} ")))
        .map(|counts| {
            counts
                .split_whitespace()
                .map(|n| n.parse::<i64>().unwrap())
                .sum()
        })
        .unwrap_or_else(|| panic!("no {phase} phase: {stderr}"))
}

/// A fresh path for a test's profile.
fn profile_path(name: &str) -> PathBuf {
    let path = common::scratch("pprof", name);
    let _ = fs::remove_file(&path);
    path
}

fn record<'a>(records: &'a [Value], kind: &str) -> &'a Value {
    records
        .iter()
        .rfind(|r| r["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} record"))
}

fn u64_of(value: &Value) -> i64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a count: {value}")) as i64
}

/// Sums of `fields` over a report's stack rows.
fn row_sums(rows: &[Value], fields: &[&str]) -> Vec<i64> {
    fields
        .iter()
        .map(|field| rows.iter().map(|row| u64_of(&row[field])).sum())
        .collect()
}

/// What every profile must be, against its report's `rows`: the sample types as documented,
/// one sample per row with its pid and comm, the `function`'s frame at the file and line the
/// report names, and the mapping of its file with the file's build id.
fn assert_profile_of(raw: &Raw, rows: &[Value], types: &[&str], function: &str) {
    assert_eq!(raw.types, types, "sample types");
    assert_eq!(
        raw.default.as_deref(),
        Some(types[0]),
        "default sample type"
    );
    assert_eq!(raw.samples.len(), rows.len(), "one sample per stack row");
    let mut ours: Vec<(String, String)> = rows
        .iter()
        .map(|row| {
            (
                row["pid"].to_string(),
                row["comm"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut theirs: Vec<(String, String)> = raw
        .samples
        .iter()
        .map(|s| (s.labels["pid"].clone(), s.labels["comm"].clone()))
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(theirs, ours, "pid and comm labels");

    let frame = rows
        .iter()
        .flat_map(|row| row["stack"].as_array().unwrap())
        .find(|frame| frame["symbol"] == function)
        .unwrap_or_else(|| panic!("no {function} frame in the report"));
    let place = format!(
        "{}:{}",
        frame["file"].as_str().unwrap(),
        frame["line"].as_u64().unwrap()
    );
    assert!(
        place.contains(".c:") && frame["line"].as_u64().is_some_and(|line| line > 0),
        "a C source line: {frame}"
    );
    assert!(
        raw.locations
            .values()
            .any(|l| l.function == function && l.place == place),
        "no location {function} {place}: {:#?}",
        raw.locations
    );
    let module = frame["module"].as_str().unwrap();
    assert_eq!(
        raw.build_id_of(module),
        Some(readelf_build_id(module).as_str()),
        "build id of {module}"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn faults_stacks_profile_reads_in_go_pprof_as_the_report_counts() {
    require_root!();
    require_tool!("go");
    require_tool!("readelf");
    let binary = workload_built("fault_stacks", "-nofp", &["-g", "-fomit-frame-pointer"]);
    let data = disk_dir().join("pprof-faults.data");
    let bytes: Vec<u8> = (0..512 * 4096u64)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    fs::write(&data, bytes).unwrap();
    let profile = profile_path("faults.pb.gz");
    let (records, stderr) = common::json_run(&[
        "faults",
        "--json",
        "--stacks",
        "--pprof",
        profile.to_str().unwrap(),
        "--",
        binary.to_str().unwrap(),
        "3000",
        "5000",
        data.to_str().unwrap(),
    ]);
    let rows = record(&records, "stacks")["stacks"].as_array().unwrap();
    let total = &common::summary(&records)["total"];
    let raw = raw(&profile);
    assert_profile_of(
        &raw,
        rows,
        &["faults/count", "minor_faults/count", "major_faults/count"],
        "touch_deep",
    );
    let (minor, major) = (u64_of(&total["minor"]), u64_of(&total["major"]));
    assert_eq!(
        raw.totals(),
        [minor + major, minor, major],
        "the summary's totals"
    );
    let sums = row_sums(rows, &["minor", "major"]);
    assert_eq!(raw.totals()[1..], sums, "the stacks' sums");
    // Per function too, as the program's own getrusage counted each phase.
    for (phase, leaf) in [("near", "touch_near"), ("deep", "touch_deep")] {
        let profiled: i64 = raw
            .samples
            .iter()
            .filter(|s| raw.leaf(s) == Some(leaf))
            .map(|s| s.values[0])
            .sum();
        assert_eq!(profiled, phase_faults(&stderr, phase), "faults in {leaf}");
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn trace_call_stacks_profile_reads_in_go_pprof_as_the_report_counts() {
    require_root!();
    require_tool!("go");
    require_tool!("readelf");
    let binary = workload_built("map_nested", "-nofp", &["-g", "-fomit-frame-pointer"]);
    let profile = profile_path("calls.pb.gz");
    let (records, _) = common::json_run(&[
        "trace",
        "-c",
        "-k",
        "--json",
        "-e",
        "mmap,munmap",
        "--pprof",
        profile.to_str().unwrap(),
        "--",
        binary.to_str().unwrap(),
        "4",
        "0",
    ]);
    let stacks = record(&records, "stacks");
    assert_eq!(stacks["unknown_stacks"], 0, "{stacks}");
    let rows = stacks["stacks"].as_array().unwrap();
    let raw = raw(&profile);
    assert_profile_of(&raw, rows, &["calls/count", "bytes/bytes"], "map_inner");
    assert_eq!(
        raw.totals(),
        row_sums(rows, &["calls", "bytes"]),
        "the stacks' sums"
    );
    // The kernel's own per-syscall table of the same run.
    let summary = common::summary(&records);
    for syscall in summary["syscalls"].as_array().unwrap() {
        let name = syscall["syscall"].as_str().unwrap();
        let profiled: Vec<i64> = (0..2)
            .map(|i| {
                raw.samples
                    .iter()
                    .filter(|s| s.labels["syscall"] == name)
                    .map(|s| s.values[i])
                    .sum()
            })
            .collect();
        let bytes = u64_of(&syscall["mapped_bytes"]) + u64_of(&syscall["unmapped_bytes"]);
        assert_eq!(
            profiled,
            [u64_of(&syscall["calls"]), bytes],
            "{name}: calls and bytes"
        );
    }
    let inner: i64 = raw
        .samples
        .iter()
        .filter(|s| {
            s.locations
                .get(1)
                .map(|l| raw.locations[l].function.as_str())
                == Some("map_inner")
        })
        .map(|s| s.values[0])
        .sum();
    assert_eq!(inner, 4, "one mmap from map_inner a round");
}

/// The final `leaks` report of a run, from stdout lines that are JSON (a workload may write its
/// own lines there too).
fn final_leaks(args: &[&str]) -> Value {
    let output = memtrace().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "memtrace {args:?}: {stderr}");
    let last = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| schema::record(schema::command_of(args), line))
        .rfind(|record| record["type"] == "leaks")
        .expect("a leaks record");
    assert_eq!(last["final"], true, "{last}");
    last
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn leaks_mappings_profile_reads_in_go_pprof_as_the_report_counts() {
    require_root!();
    require_tool!("go");
    require_tool!("readelf");
    let binary = workload_built("keep_maps", "-nofp", &["-g", "-fomit-frame-pointer"]);
    let profile = profile_path("mappings.pb.gz");
    let script = format!(
        "(sleep 0.3; echo go; sleep 0.3; echo exit) | exec {} wait",
        binary.display()
    );
    let last = final_leaks(&[
        "leaks",
        "--json",
        "--pprof",
        profile.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let rows = last["stacks"].as_array().unwrap();
    let raw = raw(&profile);
    assert_profile_of(&raw, rows, &["bytes/bytes", "regions/count"], "keep_big");
    assert_eq!(
        raw.totals(),
        [u64_of(&last["total_bytes"]), u64_of(&last["total_regions"])],
        "the report's totals"
    );
    assert_eq!(raw.totals(), row_sums(rows, &["bytes", "regions"]));
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn leaks_malloc_profile_reads_in_go_pprof_as_the_report_counts() {
    require_root!();
    require_tool!("go");
    require_tool!("readelf");
    let binary = workload_built("malloc_keep", "", &["-g", "-fomit-frame-pointer"]);
    let profile = profile_path("malloc.pb.gz");
    let (records, _) = common::json_run(&[
        "leaks",
        "--malloc",
        "--json",
        "--pprof",
        profile.to_str().unwrap(),
        "--",
        binary.to_str().unwrap(),
    ]);
    let last = record(&records, "leaks");
    assert_eq!(last["final"], true, "{last}");
    let rows = last["stacks"].as_array().unwrap();
    let raw = raw(&profile);
    assert_profile_of(&raw, rows, &["bytes/bytes", "blocks/count"], "keep_small");
    assert_eq!(
        raw.totals(),
        [u64_of(&last["total_bytes"]), u64_of(&last["total_blocks"])],
        "the report's totals"
    );
    assert_eq!(raw.totals(), row_sums(rows, &["bytes", "blocks"]));
    // keep_small: 150 blocks, 14,800 bytes (malloc_keep's header), under its malloc frame.
    let small: Vec<i64> = (0..2)
        .map(|i| {
            raw.samples
                .iter()
                .filter(|s| {
                    s.locations
                        .iter()
                        .any(|l| raw.locations[l].function == "keep_small")
                })
                .map(|s| s.values[i])
                .sum()
        })
        .collect();
    assert_eq!(small, [14_800, 150], "keep_small's bytes and blocks");
}
