//! The exposition formats of the daemon's metrics: the OpenMetrics text `prometheus-client`
//! writes, and the classic text format for older readers.

use std::collections::HashSet;

use prometheus_client::registry::Registry;

/// The OpenMetrics text `prometheus-client` writes (what Prometheus asks for when it scrapes).
pub fn openmetrics(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut encoded = String::new();
    prometheus_client::encoding::text::encode(&mut encoded, registry)?;
    // The client writes an unlabelled series of a family as `name{} 1`; readers take it, but
    // people read `name 1`.
    let mut text = String::with_capacity(encoded.len());
    for line in encoded.lines() {
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(line.len());
        match line[name_end..].strip_prefix("{}") {
            Some(rest) if !line.starts_with('#') => {
                text.push_str(&line[..name_end]);
                text.push_str(rest);
            }
            _ => text.push_str(line),
        }
        text.push('\n');
    }
    Ok(text)
}

/// The same samples in the classic text format (0.0.4), for readers that do not speak
/// OpenMetrics, such as `promtool check metrics` of Prometheus 2.42: a counter's `# HELP` and
/// `# TYPE` name its `_total` sample rather than the family, and there are no `# UNIT` or `# EOF`
/// lines. Sample lines are left exactly as the client wrote them.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|&prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_metadata_after_the_sample() {
        let openmetrics = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\n\
                           a_bytes_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            classic_text(openmetrics),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{x=\"1\"} 3\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
