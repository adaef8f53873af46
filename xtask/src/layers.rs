//! The import check: `memtrace/src/lib.rs` declares memtrace's modules from the bottom layer up,
//! and a module may use only itself and the modules declared before it. So the vocabulary
//! (`model`) imports nothing above it, kernel and OS interfaces nothing of what is built on
//! them, and `commands` sits on top, wiring. Test code (from a file's `#[cfg(test)]` on) may use
//! anything: a test of a decoder may render what it decoded.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Fails with every import against the layers' direction, each as `file:line`.
pub fn check(crate_src: &Path) -> Result<()> {
    let lib = crate_src.join("lib.rs");
    let layers = declared_modules(
        &fs::read_to_string(&lib).with_context(|| format!("read {}", lib.display()))?,
    );
    if layers.is_empty() {
        bail!("{}: no `pub mod` declarations", lib.display());
    }
    let mut wrong = Vec::new();
    for (level, layer) in layers.iter().enumerate() {
        for file in files_of(crate_src, layer)? {
            let text =
                fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            for (line, used) in crate_uses(&text) {
                match layers.iter().position(|m| *m == used) {
                    Some(above) if above > level => wrong.push(format!(
                        "{}:{line}: `{layer}` uses `{used}`, a layer above it",
                        file.strip_prefix(crate_src).unwrap_or(&file).display()
                    )),
                    _ => {}
                }
            }
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    bail!(
        "{} import(s) against the layers (memtrace/src/lib.rs declares them bottom first; a \
         module may use only those declared before it):\n    {}",
        wrong.len(),
        wrong.join("\n    ")
    )
}

/// `pub mod NAME;` lines, in order.
fn declared_modules(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod ")?.strip_suffix(';'))
        .map(str::to_owned)
        .collect()
}

/// `NAME.rs`, or every `.rs` file below `NAME/`.
fn files_of(src: &Path, module: &str) -> Result<Vec<PathBuf>> {
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        return Ok(vec![file]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The top-level modules a file's code names through `crate::` (in `use` trees and in paths),
/// with the line of each, up to its tests. Comment lines are skipped.
fn crate_uses(text: &str) -> Vec<(usize, String)> {
    let mut code = String::new();
    let mut line_starts = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        line_starts.push(code.len());
        if !trimmed.starts_with("//") {
            code.push_str(line);
        }
        code.push('\n');
    }
    let line_of = |offset: usize| line_starts.partition_point(|&start| start <= offset);
    let mut uses = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = &rest[at + "crate::".len()..];
        let offset = code.len() - after.len();
        if !preceded_by_ident {
            for name in first_segments(after) {
                uses.push((line_of(offset), name));
            }
        }
        rest = after;
    }
    uses
}

/// The first segment of the path after `crate::`: one name, or each item's in a `{...}` group.
fn first_segments(path: &str) -> Vec<String> {
    let Some(group) = path.strip_prefix('{') else {
        return ident(path).into_iter().collect();
    };
    let mut names = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if c.is_whitespace() => {}
            _ if item_start && depth == 0 => {
                names.extend(ident(&group[i..]));
                item_start = false;
            }
            _ => {}
        }
    }
    names
}

fn ident(text: &str) -> Option<String> {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| text[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_and_paths_name_their_first_segments() {
        let text = "use crate::{\n    aggregate::faults::Row,\n    bpf::{self, Loaded},\n    \
                    model::time::Timestamp,\n};\n// crate::commands in a comment\nfn f() { \
                    crate::output::create_file(p); }\n";
        assert_eq!(
            crate_uses(text),
            [
                (1, "aggregate".to_owned()),
                (1, "bpf".to_owned()),
                (1, "model".to_owned()),
                (7, "output".to_owned())
            ]
        );
    }

    #[test]
    fn tests_and_other_crates_paths_are_not_counted() {
        let text = "use memtrace_crate::x;\nuse crate::model;\n#[cfg(test)]\nmod tests {\n    \
                    use crate::commands;\n}\n";
        assert_eq!(crate_uses(text), [(2, "model".to_owned())]);
    }

    #[test]
    fn layers_are_the_libs_modules_in_order() {
        let lib = "//! doc\n\npub mod error;\npub mod model;\nmod private;\npub mod sys;\n";
        assert_eq!(declared_modules(lib), ["error", "model", "sys"]);
    }

    #[test]
    fn memtrace_imports_one_way() {
        check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../memtrace/src")).unwrap();
    }
}
