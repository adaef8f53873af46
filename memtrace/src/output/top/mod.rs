//! `memtrace top`'s screen: what the user chose to see ([`View`]: processes or cgroups, the
//! sort, the filter, the selection, pause, the process opened), the keys that change it, and
//! the drawing (`render`) and the terminal it is drawn on (`terminal`).

pub mod render;
pub mod terminal;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::aggregate::top::{Cgroup, Process};

/// The columns a table can be sorted by, in the order `<` and `>` walk them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Pid,
    Name,
    Rss,
    Growth,
    Minor,
    Major,
    Allocs,
    Stall,
}

impl Column {
    const ALL: [Column; 8] = [
        Column::Pid,
        Column::Name,
        Column::Rss,
        Column::Growth,
        Column::Minor,
        Column::Major,
        Column::Allocs,
        Column::Stall,
    ];

    fn step(self, by: isize) -> Column {
        let at = Column::ALL.iter().position(|c| *c == self).unwrap_or(0) as isize;
        let n = Column::ALL.len() as isize;
        Column::ALL[(at + by).rem_euclid(n) as usize]
    }

    /// Names and pids read best ascending; amounts, biggest first.
    fn descending_by_default(self) -> bool {
        !matches!(self, Column::Pid | Column::Name)
    }
}

/// Processes or cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Processes,
    Cgroups,
}

/// What a key asked for beyond the view itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// The view changed: draw it again now, not at the next tick.
    Redraw,
    /// The OOM kills shown are acknowledged.
    Dismiss,
}

/// Everything the user chose; the figures themselves are in `aggregate::top::Table`.
#[derive(Debug)]
pub struct View {
    pub mode: Mode,
    pub sort: Column,
    pub descending: bool,
    /// The filter applied (`/`): rows whose name, pid or cgroup contain it.
    pub filter: String,
    /// The filter being typed, while `/` is open.
    pub typing: Option<String>,
    pub paused: bool,
    pub help: bool,
    /// The selected row, by position in the sorted table.
    pub selected: usize,
    /// The process whose detail is open (`Enter`).
    pub detail: Option<u32>,
    /// Rows in the last table drawn, for moving the selection.
    pub rows: usize,
    /// The pid (processes) or index (cgroups) of the selected row as last drawn.
    pub selected_pid: Option<u32>,
    /// Rows a page moves (`PgUp`/`PgDn`): the table's height as last drawn.
    pub page: usize,
}

impl Default for View {
    fn default() -> Self {
        View {
            mode: Mode::Processes,
            sort: Column::Rss,
            descending: true,
            filter: String::new(),
            typing: None,
            paused: false,
            help: false,
            selected: 0,
            detail: None,
            rows: 0,
            selected_pid: None,
            page: 10,
        }
    }
}

impl View {
    /// Handles one key press.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(typed) = &mut self.typing {
            match key.code {
                KeyCode::Enter => {
                    self.filter = self.typing.take().unwrap_or_default();
                    self.selected = 0;
                }
                KeyCode::Esc => self.typing = None,
                KeyCode::Backspace => {
                    typed.pop();
                }
                KeyCode::Char(c) => typed.push(c),
                _ => return Action::None,
            }
            return Action::Redraw;
        }
        if self.help {
            self.help = false;
            return Action::Redraw;
        }
        if self.detail.is_some() {
            return match key.code {
                KeyCode::Char('q') => Action::Quit,
                KeyCode::Esc | KeyCode::Enter | KeyCode::Backspace | KeyCode::Left => {
                    self.detail = None;
                    Action::Redraw
                }
                KeyCode::Char('p') | KeyCode::Char(' ') => {
                    self.paused = !self.paused;
                    Action::Redraw
                }
                _ => Action::None,
            };
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('x') => return Action::Dismiss,
            KeyCode::Char('c') => {
                self.mode = match self.mode {
                    Mode::Processes => Mode::Cgroups,
                    Mode::Cgroups => Mode::Processes,
                };
                self.selected = 0;
            }
            KeyCode::Char('<') | KeyCode::Char(',') => self.sort_by(self.sort.step(-1)),
            KeyCode::Char('>') | KeyCode::Char('.') | KeyCode::F(6) => {
                self.sort_by(self.sort.step(1))
            }
            KeyCode::Char('I') | KeyCode::Char('r') => self.descending = !self.descending,
            KeyCode::Char('M') => self.sort_by(Column::Rss),
            KeyCode::Char('F') => self.sort_by(Column::Minor),
            KeyCode::Char('G') => self.sort_by(Column::Growth),
            KeyCode::Char('A') => self.sort_by(Column::Allocs),
            KeyCode::Char('S') => self.sort_by(Column::Stall),
            KeyCode::Char('N') => self.sort_by(Column::Pid),
            KeyCode::Char('/') => self.typing = Some(self.filter.clone()),
            KeyCode::Esc if !self.filter.is_empty() => self.filter.clear(),
            KeyCode::Char('p') | KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char('?') | KeyCode::Char('h') | KeyCode::F(1) => self.help = true,
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.selected += 1,
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(self.page),
            KeyCode::PageDown => self.selected += self.page,
            KeyCode::Home => self.selected = 0,
            KeyCode::End => self.selected = self.rows.saturating_sub(1),
            KeyCode::Enter if self.mode == Mode::Processes => self.detail = self.selected_pid,
            _ => return Action::None,
        }
        self.selected = self.selected.min(self.rows.saturating_sub(1));
        Action::Redraw
    }

    /// Sorting by the column it already sorts by turns the order around, as in htop.
    fn sort_by(&mut self, column: Column) {
        if self.sort == column {
            self.descending = !self.descending;
        } else {
            self.sort = column;
            self.descending = column.descending_by_default();
        }
    }

    /// An ascending comparison turned the way the view sorts.
    fn directed(&self, order: std::cmp::Ordering) -> std::cmp::Ordering {
        if self.descending {
            order.reverse()
        } else {
            order
        }
    }

    fn matches(&self, words: &[&str]) -> bool {
        let filter = self.typing.as_deref().unwrap_or(&self.filter);
        filter.is_empty() || words.iter().any(|word| word.contains(filter))
    }

    /// The processes to show, filtered and sorted.
    pub fn processes<'a>(&self, all: impl Iterator<Item = &'a Process>) -> Vec<&'a Process> {
        let mut rows: Vec<&Process> = all
            .filter(|p| self.matches(&[&p.seen.comm, &p.seen.pid.to_string(), &p.seen.cgroup]))
            .collect();
        rows.sort_by(|a, b| {
            let order = match self.sort {
                Column::Pid => a.seen.pid.cmp(&b.seen.pid),
                Column::Name => a.seen.comm.cmp(&b.seen.comm),
                Column::Rss => a.seen.rss_kb.cmp(&b.seen.rss_kb),
                Column::Growth => a.rss_growth.total_cmp(&b.rss_growth),
                Column::Minor => a.rates.minor.total_cmp(&b.rates.minor),
                Column::Major => a.rates.major.total_cmp(&b.rates.major),
                Column::Allocs => a.rates.allocs.total_cmp(&b.rates.allocs),
                Column::Stall => a.rates.stall_ms.total_cmp(&b.rates.stall_ms),
            };
            self.directed(order).then(a.seen.pid.cmp(&b.seen.pid))
        });
        rows
    }

    /// The cgroups to show, filtered and sorted (pid sorts by path, growth by RSS).
    pub fn cgroups<'a>(&self, all: &'a [Cgroup]) -> Vec<&'a Cgroup> {
        let mut rows: Vec<&Cgroup> = all.iter().filter(|c| self.matches(&[&c.path])).collect();
        rows.sort_by(|a, b| {
            let order = match self.sort {
                Column::Pid | Column::Name => a.path.cmp(&b.path),
                Column::Rss | Column::Growth => a.rss_kb.cmp(&b.rss_kb),
                Column::Minor => a.rates.minor.total_cmp(&b.rates.minor),
                Column::Major => a.rates.major.total_cmp(&b.rates.major),
                Column::Allocs => a.rates.allocs.total_cmp(&b.rates.allocs),
                Column::Stall => a.rates.stall_ms.total_cmp(&b.rates.stall_ms),
            };
            self.directed(order).then(a.path.cmp(&b.path))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::KeyEventKind;

    fn press(view: &mut View, code: KeyCode) -> Action {
        view.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn sorting_again_by_the_same_column_reverses_it() {
        let mut view = View::default();
        press(&mut view, KeyCode::Char('M'));
        assert!(!view.descending);
        press(&mut view, KeyCode::Char('>'));
        assert_eq!((view.sort, view.descending), (Column::Growth, true));
        press(&mut view, KeyCode::Char('<'));
        press(&mut view, KeyCode::Char('<'));
        assert_eq!((view.sort, view.descending), (Column::Name, false));
    }

    #[test]
    fn a_filter_is_typed_then_applied_or_abandoned() {
        let mut view = View::default();
        press(&mut view, KeyCode::Char('/'));
        for c in "hog".chars() {
            press(&mut view, KeyCode::Char(c));
        }
        assert_eq!(press(&mut view, KeyCode::Char('q')), Action::Redraw);
        press(&mut view, KeyCode::Backspace);
        press(&mut view, KeyCode::Enter);
        assert_eq!(view.filter, "hog");
        press(&mut view, KeyCode::Char('/'));
        press(&mut view, KeyCode::Char('x'));
        press(&mut view, KeyCode::Esc);
        assert_eq!(view.filter, "hog");
        press(&mut view, KeyCode::Esc);
        assert_eq!(view.filter, "");
    }

    #[test]
    fn quit_keys_and_the_selection_bounds() {
        let mut view = View {
            rows: 3,
            ..View::default()
        };
        for _ in 0..5 {
            press(&mut view, KeyCode::Down);
        }
        assert_eq!(view.selected, 2);
        let ctrl_c = KeyEvent {
            kind: KeyEventKind::Press,
            ..KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
        };
        assert_eq!(view.key(ctrl_c), Action::Quit);
        assert_eq!(press(&mut view, KeyCode::Char('q')), Action::Quit);
    }
}
