//! Folded stacks (`comm;outermost;...;innermost COUNT`, one line per distinct stack), the text
//! flamegraph.pl, inferno and speedscope read, and the flame graph itself, drawn by inferno.

use std::{io, path::Path};

use inferno::flamegraph;

/// A folded stack, without its count: `root` (the process name), then the frames outermost
/// first.
pub fn stack<'a>(root: &str, innermost_first: impl DoubleEndedIterator<Item = &'a str>) -> String {
    let mut line = clean(root);
    for frame in innermost_first.rev() {
        line.push(';');
        line.push_str(&clean(frame));
    }
    line
}

/// Frame names cannot hold the separators of the format.
fn clean(name: &str) -> String {
    name.replace(';', ":").replace('\n', " ")
}

/// Draws the flame graph of folded `lines` into an SVG file (created at start, so writable).
pub fn flamegraph(
    lines: &[String],
    title: &str,
    count_name: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let mut options = flamegraph::Options::default();
    options.title = title.to_owned();
    options.count_name = count_name.to_owned();
    options.deterministic = true;
    // Frames narrower than half a pixel cannot be seen nor clicked: leaving them out keeps the
    // SVG of a program with thousands of stacks small enough to open and share.
    options.min_width = 0.5;
    let file = super::create_file(path)?;
    flamegraph::from_lines(
        &mut options,
        lines.iter().map(String::as_str),
        io::BufWriter::new(file),
    )?;
    Ok(())
}
