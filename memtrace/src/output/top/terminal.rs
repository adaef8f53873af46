//! The terminal `top` draws on: raw mode and the alternate screen while it runs, given back on
//! every ending (a normal return, an error: [`Screen`]'s drop; a panic: ratatui's hook), and the
//! keys read on a thread of their own, since crossterm reads them blocking.

use std::io::{self, IsTerminal as _};

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyEventKind},
};
use tokio::sync::mpsc;

use crate::error::Failure;

/// The terminal, held in raw mode on the alternate screen until dropped.
pub struct Screen {
    terminal: DefaultTerminal,
}

/// A usage error unless standard input and output are a terminal (checked first, before
/// privileges, as any usage error).
pub fn require() -> Result<(), Failure> {
    if io::stdout().is_terminal() && io::stdin().is_terminal() {
        return Ok(());
    }
    Err(Failure::Usage(
        "memtrace top draws a live screen and needs a terminal; for machines, use `memtrace \
         serve` (Prometheus) or `memtrace faults --json`"
            .into(),
    ))
}

impl Screen {
    /// Takes the terminal (see [`require`]).
    pub fn open() -> Result<Screen, Failure> {
        require()?;
        let terminal = ratatui::try_init()
            .map_err(|err| Failure::Usage(format!("cannot take the terminal: {err}")))?;
        Ok(Screen { terminal })
    }

    pub fn draw(&mut self, draw: impl FnOnce(&mut Frame)) -> io::Result<()> {
        self.terminal.draw(draw).map(|_| ())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        // Leaves the alternate screen and raw mode, and shows the cursor again.
        let _ = ratatui::try_restore();
    }
}

/// What the terminal sends: key presses and resizes (releases and repeats are left out).
pub fn events() -> io::Result<mpsc::UnboundedReceiver<Event>> {
    let (send, receive) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("memtrace-keys".into())
        .spawn(move || {
            while let Ok(event) = event::read() {
                let wanted = match &event {
                    Event::Key(key) => key.kind == KeyEventKind::Press,
                    Event::Resize(..) => true,
                    _ => false,
                };
                if wanted && send.send(event).is_err() {
                    break;
                }
            }
        })?;
    Ok(receive)
}

/// Whether colours are off: `NO_COLOR` set to anything but "" (no-color.org), or a dumb terminal.
pub fn colourless() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
        || std::env::var("TERM").is_ok_and(|term| term == "dumb")
}
