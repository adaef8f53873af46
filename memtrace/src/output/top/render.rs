//! Drawing one frame of `top`: the machine's header, an OOM kill not yet dismissed, the table
//! (or one process's detail), and the key line. Fits 80×24; without colour (`NO_COLOR`) the
//! selection and warnings are shown by reverse video and bold.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap},
};

use super::{Column, Mode, View};
use crate::{
    aggregate::top::{self, Process},
    enrich::owner::owner_of,
    leaks::resident::Resident,
    model::{
        cgroup::Limit,
        oom::Kill,
        stacks::{Named, StackLosses, StackRow},
    },
    output::size_kb,
};

/// The machine's figures for the header.
#[derive(Clone, Debug, Default)]
pub struct Header {
    pub clock: String,
    pub interval_s: f64,
    pub mem_total_kb: u64,
    pub mem_available_kb: u64,
    pub swap_total_kb: u64,
    pub swap_free_kb: u64,
    /// PSI memory `some` and `full` over the last interval, in percent; `None` without PSI.
    pub psi: Option<(f64, f64)>,
    /// `some` over the intervals before, in hundredths of a percent, oldest first.
    pub psi_history: Vec<u64>,
    /// Events the kernel could not record since `top` started (never hidden).
    pub lost: u64,
}

/// Everything one frame shows.
pub struct Shown<'a> {
    pub header: &'a Header,
    pub table: &'a top::Table,
    /// OOM kills not yet dismissed, newest last: each one line, and what led to it.
    pub kills: &'a [(String, String)],
    /// The open process's biggest mappings, by resident size.
    pub mappings: &'a [Resident],
    /// With `--stacks`: its busiest fault stacks, and what could not be unwound.
    pub stacks: Option<(&'a [StackRow], StackLosses)>,
    pub colour: bool,
}

struct Styles {
    title: Style,
    selected: Style,
    alarm: Style,
    dim: Style,
    header: Style,
}

impl Styles {
    fn new(colour: bool) -> Styles {
        if colour {
            Styles {
                title: Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                selected: Style::new().bg(Color::Blue).fg(Color::White),
                alarm: Style::new()
                    .bg(Color::Red)
                    .fg(Color::White)
                    .add_modifier(Modifier::BOLD),
                dim: Style::new().fg(Color::DarkGray),
                header: Style::new().fg(Color::Black).bg(Color::Green),
            }
        } else {
            Styles {
                title: Style::new().add_modifier(Modifier::BOLD),
                selected: Style::new().add_modifier(Modifier::REVERSED),
                alarm: Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED),
                dim: Style::new(),
                header: Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
            }
        }
    }
}

pub fn draw(frame: &mut Frame, view: &mut View, shown: &Shown) {
    let styles = Styles::new(shown.colour);
    let banner = if shown.kills.is_empty() { 0 } else { 2 };
    let [header, oom, body, keys] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(banner),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_header(frame, header, view, shown, &styles);
    if let Some((line, before)) = shown.kills.last() {
        let more = match shown.kills.len() {
            1 => String::new(),
            n => format!(" (+{} more)", n - 1),
        };
        let text = vec![
            Line::from(Span::styled(format!("{line}{more}"), styles.alarm)),
            Line::from(Span::styled(format!("{before}   x: dismiss"), styles.alarm)),
        ];
        frame.render_widget(Paragraph::new(text), oom);
    }
    match view.detail.and_then(|pid| shown.table.process(pid)) {
        Some(process) => draw_detail(frame, body, process, shown, &styles),
        None if view.detail.is_some() => {
            let gone = format!(
                "process {} has exited (Esc: back)",
                view.detail.unwrap_or(0)
            );
            frame.render_widget(Paragraph::new(gone), body);
        }
        None => match view.mode {
            Mode::Processes => draw_processes(frame, body, view, shown.table, &styles),
            Mode::Cgroups => draw_cgroups(frame, body, view, shown.table, &styles),
        },
    }
    let line = match &view.typing {
        Some(typed) => Line::from(format!("filter: {typed}_   Enter: apply  Esc: cancel")),
        None => Line::from(Span::styled(
            match (view.detail.is_some(), view.filter.is_empty()) {
                (true, _) => "Esc back  p pause  q quit".to_owned(),
                (false, true) => {
                    "q quit  c cgroups  </> sort  / filter  p pause  Enter detail  ? help"
                        .to_owned()
                }
                (false, false) => format!("filter \"{}\" (Esc clears)  ? help", view.filter),
            },
            styles.dim,
        )),
    };
    frame.render_widget(Paragraph::new(line), keys);
    if view.help {
        draw_help(frame, body);
    }
}

fn draw_header(frame: &mut Frame, area: Rect, view: &View, shown: &Shown, styles: &Styles) {
    let h = shown.header;
    let used = h.mem_total_kb.saturating_sub(h.mem_available_kb);
    let swap_used = h.swap_total_kb.saturating_sub(h.swap_free_kb);
    let state = if view.paused { "  PAUSED" } else { "" };
    let lost = if h.lost > 0 {
        Span::styled(format!("  lost {}", h.lost), styles.alarm)
    } else {
        Span::raw("  lost 0")
    };
    let title = Line::from(vec![
        Span::styled("memtrace top", styles.title),
        Span::raw(format!(
            "  {}  every {}s  {} processes",
            h.clock,
            h.interval_s,
            shown.table.processes().count()
        )),
        lost,
        Span::styled(state, styles.alarm),
    ]);
    let memory = Line::from(format!(
        "Mem {} {}/{} used  avail {}   Swap {}/{}",
        bar(used, h.mem_total_kb, 20),
        size_kb(used),
        size_kb(h.mem_total_kb),
        size_kb(h.mem_available_kb),
        size_kb(swap_used),
        size_kb(h.swap_total_kb),
    ));
    let psi = match h.psi {
        Some((some, full)) => format!("PSI memory  some {some:5.2}%  full {full:5.2}%  "),
        None => "PSI memory  (this kernel has no PSI)  ".to_owned(),
    };
    let [top, middle, bottom] = Layout::vertical([Constraint::Length(1); 3]).areas(area);
    frame.render_widget(Paragraph::new(title), top);
    frame.render_widget(Paragraph::new(memory), middle);
    let [label, spark] =
        Layout::horizontal([Constraint::Length(psi.len() as u16), Constraint::Min(1)])
            .areas(bottom);
    frame.render_widget(Paragraph::new(psi), label);
    let recent = tail(&h.psi_history, spark.width as usize);
    // Scaled to 100 % rather than to its own peak, so a quiet machine shows a flat line.
    frame.render_widget(Sparkline::default().data(recent).max(10_000), spark);
}

/// `[||||      ]`: `part` of `whole` in `width` cells.
fn bar(part: u64, whole: u64, width: usize) -> String {
    let filled = (part as f64 / whole.max(1) as f64 * width as f64).round() as usize;
    let filled = filled.min(width);
    format!("[{}{}]", "|".repeat(filled), " ".repeat(width - filled))
}

fn tail<T>(values: &[T], n: usize) -> &[T] {
    &values[values.len().saturating_sub(n)..]
}

/// `1234`, `12.3k`, `1.2M` per second; `0` as `.` so the busy rows stand out.
fn rate(value: f64) -> String {
    match value {
        v if v < 0.05 => ".".into(),
        v if v < 10.0 => format!("{v:.1}"),
        v if v < 10_000.0 => format!("{v:.0}"),
        v if v < 10_000_000.0 => format!("{:.1}k", v / 1000.0),
        v => format!("{:.1}M", v / 1e6),
    }
}

/// The table's `.` for nothing, as `0` in a sentence.
fn spelt(cell: String) -> String {
    if cell == "." { "0".into() } else { cell }
}

fn growth(kb_per_s: f64) -> String {
    if kb_per_s.abs() < 0.5 {
        ".".into()
    } else if kb_per_s < 0.0 {
        format!("-{}", size_kb((-kb_per_s) as u64))
    } else {
        format!("+{}", size_kb(kb_per_s as u64))
    }
}

const PROCESS_COLUMNS: [(&str, Column, u16); 8] = [
    ("PID", Column::Pid, 7),
    ("COMMAND", Column::Name, 15),
    ("RSS", Column::Rss, 7),
    ("GROW/s", Column::Growth, 7),
    ("MINFLT/s", Column::Minor, 8),
    ("MAJFLT/s", Column::Major, 8),
    ("ALLOC/s", Column::Allocs, 7),
    ("STALLms/s", Column::Stall, 9),
];

/// The header cells, the sorted one marked with its direction.
fn header_row<'a>(names: impl Iterator<Item = (&'a str, Option<Column>)>, view: &View) -> Row<'a> {
    Row::new(names.map(|(name, column)| {
        if column == Some(view.sort) {
            format!("{name}{}", if view.descending { "▼" } else { "▲" })
        } else {
            name.to_owned()
        }
    }))
}

fn draw_processes(frame: &mut Frame, area: Rect, view: &mut View, table: &top::Table, s: &Styles) {
    let rows = view.processes(table.processes());
    let cells = |p: &Process| {
        Row::new(vec![
            p.seen.pid.to_string(),
            p.seen.comm.clone(),
            size_kb(p.seen.rss_kb),
            growth(p.rss_growth),
            rate(p.rates.minor),
            rate(p.rates.major),
            rate(p.rates.allocs),
            rate(p.rates.stall_ms),
            p.seen.cgroup.clone(),
        ])
    };
    let widths: Vec<Constraint> = PROCESS_COLUMNS
        .iter()
        .map(|(_, _, width)| Constraint::Length(*width))
        .chain([Constraint::Min(4)])
        .collect();
    let names = PROCESS_COLUMNS
        .iter()
        .map(|(name, column, _)| (*name, Some(*column)))
        .chain([("CGROUP", None)]);
    view.rows = rows.len();
    view.selected = view.selected.min(rows.len().saturating_sub(1));
    view.selected_pid = rows.get(view.selected).map(|p| p.seen.pid);
    view.page = usize::from(area.height.saturating_sub(2)).max(1);
    let widget = Table::new(rows.into_iter().map(cells), widths)
        .header(header_row(names, view).style(s.header))
        .row_highlight_style(s.selected)
        .column_spacing(1);
    let mut state = TableState::default().with_selected(Some(view.selected));
    frame.render_stateful_widget(widget, area, &mut state);
}

fn draw_cgroups(frame: &mut Frame, area: Rect, view: &mut View, table: &top::Table, s: &Styles) {
    let rows = view.cgroups(table.cgroups());
    let names = [
        ("CGROUP", Some(Column::Name)),
        ("PROCS", None),
        ("RSS", Some(Column::Rss)),
        ("MINFLT/s", Some(Column::Minor)),
        ("MAJFLT/s", Some(Column::Major)),
        ("ALLOC/s", Some(Column::Allocs)),
        ("STALLms/s", Some(Column::Stall)),
        ("OWNER", None),
    ];
    let widths = [
        Constraint::Min(20),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(22),
    ];
    view.rows = rows.len();
    view.selected = view.selected.min(rows.len().saturating_sub(1));
    view.selected_pid = None;
    let cells = rows.into_iter().map(|c| {
        Row::new(vec![
            if c.path.is_empty() {
                "(unknown)".to_owned()
            } else {
                c.path.clone()
            },
            c.processes.to_string(),
            size_kb(c.rss_kb),
            rate(c.rates.minor),
            rate(c.rates.major),
            rate(c.rates.allocs),
            rate(c.rates.stall_ms),
            owner_name(&c.path),
        ])
    });
    let widget = Table::new(cells, widths)
        .header(header_row(names.into_iter(), view).style(s.header))
        .row_highlight_style(s.selected)
        .column_spacing(1);
    let mut state = TableState::default().with_selected(Some(view.selected));
    frame.render_stateful_widget(widget, area, &mut state);
}

/// Who a cgroup belongs to, short: `pod 0b1c…/ctr 3f2a…`, or its systemd unit.
fn owner_name(path: &str) -> String {
    let owner = owner_of(path);
    let short = |id: &str| id.chars().take(8).collect::<String>();
    match (&owner.pod_uid, &owner.container_id, &owner.systemd_unit) {
        (Some(pod), Some(ctr), _) => format!("pod {}/ctr {}", short(pod), short(ctr)),
        (Some(pod), None, _) => format!("pod {}", short(pod)),
        (None, Some(ctr), _) => format!("ctr {}", short(ctr)),
        (None, None, Some(unit)) => unit.clone(),
        _ => String::new(),
    }
}

fn draw_detail(frame: &mut Frame, area: Rect, p: &Process, shown: &Shown, s: &Styles) {
    let stack_lines = match shown.stacks {
        Some((rows, _)) => 2 + rows.len().max(1) as u16,
        None => 1,
    };
    let [about, faults_label, faults, rss_label, rss, stacks, maps] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(stack_lines),
        Constraint::Min(3),
    ])
    .areas(area);
    draw_stacks(frame, stacks, shown.stacks, s);
    let faults_history: Vec<u64> = p.faults_history.iter().map(|&f| f as u64).collect();
    let rss_history: Vec<u64> = p.rss_history.iter().copied().collect();
    let text = vec![
        Line::from(vec![
            Span::styled(format!("{} {}", p.seen.pid, p.seen.comm), s.title),
            Span::raw(format!(
                "  cgroup {}  {}",
                p.seen.cgroup,
                owner_name(&p.seen.cgroup)
            )),
        ]),
        Line::from(format!(
            "RSS {} ({}/s)  minor {}/s  major {}/s  alloc calls {}/s  stalled {} ms/s",
            size_kb(p.seen.rss_kb),
            spelt(growth(p.rss_growth)),
            spelt(rate(p.rates.minor)),
            spelt(rate(p.rates.major)),
            spelt(rate(p.rates.allocs)),
            spelt(rate(p.rates.stall_ms)),
        )),
        Line::from(format!(
            "since seen: {} minor, {} major faults, {} alloc calls, {:.1} ms stalled",
            p.total.minor,
            p.total.major,
            p.total.allocs,
            p.total.stall_ns as f64 / 1e6
        )),
    ];
    frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), about);
    let peak_faults = faults_history.iter().copied().max().unwrap_or(0);
    let peak_rss = rss_history.iter().copied().max().unwrap_or(0);
    frame.render_widget(
        Paragraph::new(format!(
            "faults/s, last {} intervals (peak {peak_faults})",
            faults_history.len()
        )),
        faults_label,
    );
    frame.render_widget(
        Sparkline::default().data(tail(&faults_history, faults.width as usize)),
        faults,
    );
    frame.render_widget(
        Paragraph::new(format!(
            "RSS, last {} intervals (peak {})",
            rss_history.len(),
            size_kb(peak_rss)
        )),
        rss_label,
    );
    frame.render_widget(
        Sparkline::default().data(tail(&rss_history, rss.width as usize)),
        rss,
    );
    let rows = shown.mappings.iter().map(|m| {
        Row::new(vec![
            size_kb(m.rss / 1024),
            size_kb((m.range.end - m.range.start) / 1024),
            m.perms.clone(),
            format!("{:x}", m.range.start),
            if m.name.is_empty() {
                "[anon]".to_owned()
            } else {
                m.name.clone()
            },
        ])
    });
    let widths = [
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(4),
        Constraint::Length(12),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths)
        .header(
            Row::new(["RSS", "SIZE", "PERM", "START", "MAPPING (biggest resident)"])
                .style(s.header),
        )
        .column_spacing(1);
    frame.render_widget(table, maps);
}

/// An OOM kill in two lines that fit a screen: who, how big, where; and what led to it.
pub fn kill_lines(kill: &Kill) -> (String, String) {
    let victim = &kill.victim;
    let rss = |kb: Option<u64>| kb.map_or_else(|| "?".into(), size_kb);
    let limit = match kill.cgroup.limit_bytes {
        Some(Limit::Bytes(bytes)) => format!(", limit {}", size_kb(bytes / 1024)),
        _ => String::new(),
    };
    let first = format!(
        "OOM KILL {}  {} {}  anon-rss {}  cgroup {}{limit}",
        kill.time.local_hms(),
        victim.pid,
        victim.comm.as_deref().unwrap_or("?"),
        rss(victim.anon_rss_kb),
        kill.cgroup.path.as_deref().unwrap_or("?"),
    );
    let history = victim.history.as_deref().unwrap_or_default();
    let second = match history {
        [] => "  what led to it: not sampled (it was not among the likely victims)".into(),
        [only] => format!(
            "  what led to it: sampled once, RSS {}",
            size_kb(only.rss_kb)
        ),
        [first, .., last] => {
            let faults: u64 = history
                .iter()
                .map(|p| p.minor_faults.unwrap_or(0) + p.major_faults.unwrap_or(0))
                .sum();
            // Folded from +0: an empty f64 sum is -0.
            let stalled = history
                .iter()
                .filter_map(|p| p.reclaim_stall_ms)
                .fold(0.0, |sum, ms| sum + ms);
            format!(
                "  what led to it: {} samples over {:.1} s, RSS {} -> {}, {faults} faults, \
                 {stalled:.0} ms stalled",
                history.len(),
                first.t - last.t,
                size_kb(first.rss_kb),
                size_kb(last.rss_kb),
            )
        }
    };
    (first, second)
}

/// The busiest fault stacks, each on one line from the innermost frame out; or how to get them.
fn draw_stacks(
    frame: &mut Frame,
    area: Rect,
    stacks: Option<(&[StackRow], StackLosses)>,
    s: &Styles,
) {
    let Some((rows, losses)) = stacks else {
        let hint = "(run memtrace top --stacks for its page-fault stacks)";
        frame.render_widget(Paragraph::new(Span::styled(hint, s.dim)), area);
        return;
    };
    let cut = match losses.cut_short {
        0 => String::new(),
        n => format!(", {n} cut short"),
    };
    let mut lines = vec![Line::from(Span::styled(
        format!(
            "{:>8}  FAULT STACK (innermost first, since the detail opened{cut})",
            "FAULTS"
        ),
        s.header,
    ))];
    if rows.is_empty() {
        lines.push(Line::from("       -  no faults since the detail opened"));
    }
    for row in rows {
        let frames: Vec<String> = row.stack.iter().map(Named::short).collect();
        let more = if row.complete { "" } else { " < [cut short]" };
        lines.push(Line::from(format!(
            "{:>8}  {}{more}",
            row.total(),
            frames.join(" < ")
        )));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

const HELP: &str = "\
 q, Ctrl-C   quit                 c       processes / cgroups
 < >, F6     sort by the column   I, r    reverse the order
 M F G A S N sort by RSS, faults, growth, allocs, stalls, pid
 /           filter (name, pid, cgroup); Esc clears it
 p, space    pause                Enter   the process's detail
 Up Down PgUp PgDn Home End       move    x       dismiss an OOM kill
 RSS: resident memory; GROW/s: its change per second; MINFLT/MAJFLT:
 page faults per second; ALLOC/s: brk/mmap/munmap/mremap calls per
 second; STALLms/s: time stalled in reclaim or compaction per second
 (counted in the kernel by memtrace); any key closes this";

fn draw_help(frame: &mut Frame, area: Rect) {
    let width = area.width.min(72);
    let height = area.height.min(12);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(HELP).block(Block::default().borders(Borders::ALL).title(" keys ")),
        popup,
    );
}
