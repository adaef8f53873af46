//! The JSON lines memtrace writes, held to the schemas in `docs/schemas`: every record a test
//! reads is validated against its command's schema before the test looks at it, so a field
//! added, renamed or lost fails where it happens instead of leaving the reference wrong.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::LazyLock,
};

use jsonschema::Validator;
use serde_json::Value;

/// The commands whose `--json` output has a schema, `docs/schemas/COMMAND.schema.json`.
pub const COMMANDS: [&str; 5] = ["faults", "trace", "leaks", "pressure", "oom"];

/// One command's schema, compiled whole and once per record kind: the whole is a `oneOf`,
/// whose failure only says that no kind matched; the kind of the record's `type` says why.
pub struct Schema {
    whole: Validator,
    /// Each kind's `type`, and the schema with that kind alone.
    kinds: Vec<(String, Validator)>,
}

impl Schema {
    /// Compiles a schema that must itself be a valid draft 2020-12 schema, a `oneOf` of
    /// references to its `$defs`, each a record with a constant `type`.
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        jsonschema::draft202012::meta::validate(schema)
            .map_err(|err| format!("not a valid JSON Schema: {err} at {}", err.instance_path()))?;
        let compile = |schema: &Value| {
            jsonschema::draft202012::new(schema).map_err(|err| format!("does not compile: {err}"))
        };
        let whole = compile(schema)?;
        let branches = schema["oneOf"]
            .as_array()
            .ok_or("no oneOf of record kinds")?;
        let mut kinds = Vec::new();
        for branch in branches {
            let name = branch["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .ok_or_else(|| format!("a oneOf branch is not a reference to $defs: {branch}"))?;
            let kind = schema["$defs"][name]["properties"]["type"]["const"]
                .as_str()
                .ok_or_else(|| format!("$defs/{name} has no constant type"))?;
            let mut alone = schema.clone();
            let object = alone.as_object_mut().ok_or("not an object")?;
            object.remove("oneOf");
            object.insert("$ref".into(), branch["$ref"].clone());
            kinds.push((kind.to_owned(), compile(&alone)?));
        }
        Ok(Schema { whole, kinds })
    }

    /// Whether `record` is one of the schema's records; else every reason it is not one of
    /// the kinds of its `type`.
    pub fn check(&self, record: &Value) -> Result<(), String> {
        if self.whole.is_valid(record) {
            return Ok(());
        }
        let kind = record["type"].as_str().unwrap_or_default();
        let reasons: Vec<String> = self
            .kinds
            .iter()
            .filter(|(name, _)| name == kind)
            .flat_map(|(_, validator)| validator.iter_errors(record))
            .map(|err| format!("{err} (at {})", err.instance_path()))
            .collect();
        if reasons.is_empty() {
            // Of its type, yet neither kind alone nor the whole: `oneOf` matched two kinds.
            let matched = self.kinds.iter().any(|(name, _)| name == kind);
            return Err(if matched {
                format!("more than one record kind matches type {kind:?}")
            } else {
                format!("no record kind has type {kind:?}")
            });
        }
        Err(reasons.join("; "))
    }
}

/// Where a command's schema is.
pub fn path(command: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schemas")
        .join(format!("{command}.schema.json"))
}

/// A command's schema as JSON.
pub fn read(command: &str) -> Value {
    let path = path(command);
    let text = fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path:?}: {err}"));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{path:?} is not JSON: {err}"))
}

static SCHEMAS: LazyLock<HashMap<&'static str, Schema>> = LazyLock::new(|| {
    COMMANDS
        .iter()
        .map(|&command| {
            let schema = Schema::compile(&read(command))
                .unwrap_or_else(|err| panic!("{:?}: {err}", path(command)));
            (command, schema)
        })
        .collect()
});

/// The command of memtrace's `args`: the first that has a schema (the subcommand comes before
/// its flags and any `-- COMMAND`).
pub fn command_of(args: &[&str]) -> &'static str {
    args.iter()
        .find_map(|arg| COMMANDS.iter().find(|command| *command == arg))
        .unwrap_or_else(|| panic!("no command with a JSON schema in {args:?}"))
}

/// One line of `command`'s JSON output, parsed and validated against its schema; a line that
/// is not JSON, or not one of its records, fails the test, naming the line and why.
pub fn record(command: &str, line: &str) -> Value {
    let record: Value =
        serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON: {line:?}: {err}"));
    let schema = SCHEMAS
        .get(command)
        .unwrap_or_else(|| panic!("no JSON schema for {command}"));
    if let Err(err) = schema.check(&record) {
        panic!("{command} record not as docs/schemas/{command}.schema.json says: {err}\n{line}");
    }
    record
}

/// Every line of `command`'s JSON output, validated.
pub fn records(command: &str, text: &str) -> Vec<Value> {
    text.lines().map(|line| record(command, line)).collect()
}
