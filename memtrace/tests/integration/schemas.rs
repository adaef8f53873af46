//! The JSON schemas in `docs/schemas`, which every test validates memtrace's JSON output
//! against: each is itself a valid schema, accepts a record as memtrace writes it, and rejects
//! one with a field missing, one too many, or of the wrong type, so a pass means something.
//! None needs root.

use std::{fs, path::Path};

use serde_json::{Value, json};

use crate::common::schema::{self, COMMANDS, Schema};

/// A record of a command as memtrace writes it (the shapes of the JSON writers' own tests),
/// and where to break it.
struct Example {
    command: &'static str,
    record: Value,
    /// Fields (JSON pointers) a record must have.
    required: &'static [&'static str],
    /// Objects (JSON pointers) that take no field beyond their own.
    closed: &'static [&'static str],
    /// Fields given a value their schema must refuse.
    wrong: Vec<(&'static str, Value)>,
}

fn examples() -> Vec<Example> {
    vec![
        Example {
            command: "faults",
            record: json!({"type": "summary", "timestamp": 1_700_000_000.25, "duration_s": 1.5,
                "reason": "command_exited",
                "processes": [{"pid": 42, "comm": "cc1", "minor": 1200, "major": 3}],
                "total": {"minor": 1200, "major": 3},
                "dropped": {"fault_table_full": 0, "target_table_full": 0},
                "command": {"pid": 42, "exit_code": 0, "kernel_minor": 1201, "kernel_major": 3}}),
            required: &[
                "/total",
                "/processes/0/minor",
                "/dropped/target_table_full",
                "/command/kernel_major",
            ],
            closed: &["", "/processes/0", "/total", "/dropped", "/command"],
            wrong: vec![
                ("/total/minor", json!(-1)),
                ("/reason", json!("bored")),
                ("/processes/0/pid", json!("42")),
                ("/command/exit_code", json!(256)),
            ],
        },
        Example {
            command: "trace",
            record: json!({"type": "syscall", "ts_ns": 1_700_000_000_000_000_123_u64,
                "pid": 4242, "tid": 4242, "comm": "python3", "syscall": "mmap",
                "args": {"addr": 0, "len": 1_052_672, "prot": "PROT_READ|PROT_WRITE",
                    "flags": "MAP_PRIVATE|MAP_ANONYMOUS", "fd": -1, "off": 0},
                "ret": 139_888_237_854_720_u64, "latency_ns": 4100}),
            required: &["/latency_ns", "/ret", "/args/prot"],
            closed: &["", "/args"],
            wrong: vec![
                ("/syscall", json!("read")),
                ("/args/fd", json!("3")),
                // A failed call names its errno.
                ("/ret", json!(-12)),
                // Only brk's calls move the break.
                ("/brk_growth", json!(4096)),
            ],
        },
        Example {
            command: "leaks",
            record: json!({"type": "leaks", "timestamp": 1_700_000_000.5, "final": true,
                "level": "mappings", "total_bytes": 65536, "total_regions": 1,
                "stacks": [{"pid": 7, "comm": "keep", "bytes": 65536, "regions": 1,
                    "resident_bytes": null, "oldest_s": 0.2, "complete": true,
                    "stack": [{"module": "/usr/bin/keep", "offset": 4660, "symbol": "keep",
                        "symbol_offset": 29, "file": null, "line": null}]}],
                "losses": {"snapshots": 1, "cut_short": 0, "unrecognised": 0, "unmapped": 0},
                "unknown_stacks": 0,
                "dropped": {"syscall_pending_full": 0, "syscall_ring_full": 0,
                    "target_table_full": 0}}),
            required: &[
                "/unknown_stacks",
                "/stacks/0/resident_bytes",
                "/stacks/0/stack/0/symbol",
                "/losses/unmapped",
            ],
            closed: &["", "/stacks/0", "/stacks/0/stack/0", "/losses", "/dropped"],
            wrong: vec![
                // The malloc level has blocks, not regions.
                ("/level", json!("malloc")),
                ("/stacks/0/stack/0/offset", json!(-1)),
            ],
        },
        Example {
            command: "pressure",
            record: json!({"type": "interval", "timestamp": 1.0, "interval_s": 1.0,
                "rows": [{"pid": 42, "comm": "cat", "cgroup": "/db",
                    "stalls": {"direct": {"count": 0, "ms": 0.0},
                        "memcg": {"count": 3, "ms": 2.5},
                        "compaction": {"count": 0, "ms": 0.0},
                        "throttled": {"count": 0, "ms": 0.0}},
                    "psi": null}],
                "psi": null,
                "dropped": {"stall_table_full": 0, "stall_start_full": 0,
                    "target_table_full": 0}}),
            required: &[
                "/psi",
                "/rows/0/cgroup",
                "/rows/0/stalls/memcg/ms",
                "/dropped/stall_start_full",
            ],
            closed: &[
                "",
                "/rows/0",
                "/rows/0/stalls",
                "/rows/0/stalls/memcg",
                "/dropped",
            ],
            wrong: vec![
                // The longest stall is the summary's.
                ("/rows/0/stalls/memcg/max_ms", json!(1.0)),
                ("/psi", json!({"some": null, "full": null})),
            ],
        },
        Example {
            command: "oom",
            record: json!({"type": "summary", "timestamp": 1_700_000_000.0, "reason": "count",
                "kills": 1, "dropped": {"oom_ring_full": 0}}),
            required: &["/kills", "/dropped/oom_ring_full"],
            closed: &["", "/dropped"],
            wrong: vec![
                ("/reason", json!("targets_exited")),
                ("/type", json!("oom_kills")),
            ],
        },
    ]
}

fn compiled(command: &str) -> Schema {
    Schema::compile(&schema::read(command))
        .unwrap_or_else(|err| panic!("{:?}: {err}", schema::path(command)))
}

/// `pointer`'s parent object and its last key.
fn parent<'a>(
    record: &'a mut Value,
    pointer: &'a str,
) -> (&'a mut serde_json::Map<String, Value>, &'a str) {
    let (up, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    let object = record
        .pointer_mut(up)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {up:?}"));
    (object, key)
}

/// `record` must fail, with a reason at `at` (a JSON pointer).
#[track_caller]
fn assert_rejected(command: &str, record: &Value, at: &str) {
    match compiled(command).check(record) {
        Ok(()) => panic!("{command} accepted {record}"),
        Err(err) => assert!(
            err.contains(&format!("(at {at})")),
            "{command}: expected a reason at {at:?}, got: {err}"
        ),
    }
}

#[test]
fn every_command_s_schema_is_a_json_schema_of_its_records() {
    for command in COMMANDS {
        compiled(command);
    }
}

#[test]
fn a_record_as_memtrace_writes_it_passes() {
    for example in examples() {
        if let Err(err) = compiled(example.command).check(&example.record) {
            panic!("{}: {err}\n{}", example.command, example.record);
        }
    }
}

#[test]
fn a_record_missing_a_field_fails() {
    for example in examples() {
        for &pointer in example.required {
            let mut record = example.record.clone();
            let (object, key) = parent(&mut record, pointer);
            assert!(object.remove(key).is_some(), "no {pointer}");
            let up = pointer.rsplit_once('/').unwrap().0;
            assert_rejected(example.command, &record, up);
        }
    }
}

#[test]
fn a_record_with_a_field_too_many_fails() {
    for example in examples() {
        for &pointer in example.closed {
            let mut record = example.record.clone();
            let object = record
                .pointer_mut(pointer)
                .and_then(Value::as_object_mut)
                .unwrap_or_else(|| panic!("no object at {pointer:?}"));
            object.insert("surprise".into(), json!(1));
            assert_rejected(example.command, &record, pointer);
        }
    }
}

#[test]
fn a_record_with_a_wrong_value_fails() {
    for example in examples() {
        for (pointer, value) in &example.wrong {
            let mut record = example.record.clone();
            let (object, key) = parent(&mut record, pointer);
            object.insert(key.to_owned(), value.clone());
            let rejected = compiled(example.command).check(&record);
            assert!(
                rejected.is_err(),
                "{} accepted {pointer} = {value}",
                example.command
            );
        }
    }
}

/// The definitions every schema with stacks or targets has alike, which must not drift apart.
const SHARED: [&str; 9] = [
    "frame",
    "losses",
    "stack",
    "complete",
    "mode",
    "pids",
    "pid",
    "count",
    "timestamp",
];

#[test]
fn definitions_shared_between_schemas_are_the_same_in_each() {
    for name in SHARED {
        let defined: Vec<(&str, Value)> = COMMANDS
            .iter()
            .filter_map(|&command| {
                Some((command, schema::read(command)["$defs"].get(name)?.clone()))
            })
            .collect();
        for (command, definition) in &defined[1..] {
            assert_eq!(
                definition, &defined[0].1,
                "$defs/{name} of {command} differs from {}'s",
                defined[0].0
            );
        }
    }
}

#[test]
fn each_command_s_reference_links_its_schema() {
    for command in COMMANDS {
        let page = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/{command}.md"));
        let text = fs::read_to_string(&page).unwrap_or_else(|err| panic!("{page:?}: {err}"));
        let link = format!("(schemas/{command}.schema.json)");
        assert!(
            text.contains(&link),
            "docs/{command}.md does not link {link}"
        );
    }
}
