//! `docs/benchmarks.md`, the report's published copy: each row's tables sit in a block of their
//! own, between `<!-- bench:ROW begin -->` and `<!-- bench:ROW end -->`, and a full run
//! rewrites the blocks of the rows it measured with what it measured (a row run for the first
//! time gets a block at the end). The prose around the blocks, what the figures mean, is
//! written by people and left alone.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};

/// Replaces the blocks of `measured` rows (name, markdown) in the document at `path`.
pub fn write(path: &Path, measured: &[(String, String)], provenance: &str) -> Result<()> {
    let mut text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    for (row, markdown) in measured {
        let body = format!("{provenance}\n\n{}", page_headings(markdown.trim()));
        text = with_block(&text, row, &body)?;
    }
    fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// A row's `###` sections (under results.md's `## Benchmarks`) as the page's `##` sections.
fn page_headings(markdown: &str) -> String {
    markdown
        .lines()
        .map(|line| {
            line.strip_prefix("### ")
                .map_or(line.to_owned(), |title| format!("## {title}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn with_block(text: &str, row: &str, body: &str) -> Result<String> {
    let begin = format!("<!-- bench:{row} begin -->");
    let end = format!("<!-- bench:{row} end -->");
    let block = format!("{begin}\n{body}\n{end}");
    let Some(start) = text.find(&begin) else {
        return Ok(format!("{}\n\n{block}\n", text.trim_end()));
    };
    let Some(stop) = text[start..].find(&end) else {
        bail!("docs/benchmarks.md: `{begin}` has no `{end}`");
    };
    let stop = start + stop + end.len();
    Ok(format!("{}{block}{}", &text[..start], &text[stop..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows a document has blocks for, in order.
    fn rows(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|line| line.strip_prefix("<!-- bench:")?.strip_suffix(" begin -->"))
            .collect()
    }

    const DOC: &str = "# Benchmarks\n\nProse.\n\n<!-- bench:faults begin -->\nold faults\n\
                       <!-- bench:faults end -->\n\nWhat faults means.\n\n\
                       <!-- bench:trace begin -->\nold trace\n<!-- bench:trace end -->\n";

    #[test]
    fn a_measured_row_replaces_its_block_and_nothing_else() {
        let text = with_block(DOC, "faults", "new faults").unwrap();
        assert_eq!(
            text,
            DOC.replace("old faults", "new faults"),
            "the prose and the other blocks stay"
        );
        assert_eq!(rows(&text), ["faults", "trace"]);
    }

    #[test]
    fn a_new_row_gets_a_block_at_the_end() {
        let text = with_block(DOC, "storm", "storm rows").unwrap();
        assert!(text.starts_with(DOC.trim_end()));
        assert!(
            text.ends_with("<!-- bench:storm begin -->\nstorm rows\n<!-- bench:storm end -->\n")
        );
    }

    #[test]
    fn sections_become_the_pages_sections() {
        assert_eq!(
            page_headings("### A\n\ntext ### not\n#### B"),
            "## A\n\ntext ### not\n#### B"
        );
    }

    #[test]
    fn an_unclosed_block_is_an_error_not_a_truncation() {
        assert!(with_block("<!-- bench:faults begin -->\nx\n", "faults", "y").is_err());
    }

    #[test]
    fn the_published_report_has_a_block_for_every_row() {
        use clap::ValueEnum as _;
        let doc =
            fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md"))
                .unwrap();
        let published = rows(&doc);
        for row in super::super::rows::Row::value_variants() {
            let name = row.to_possible_value().unwrap().get_name().to_owned();
            assert!(
                published.contains(&name.as_str()),
                "docs/benchmarks.md has no block for the `{name}` row: run `cargo xtask bench --only {name}`"
            );
        }
    }
}
