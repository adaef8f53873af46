//! Where and how reports are written: human tables or JSON lines, to stdout or a file.

pub mod faults;
pub mod oom;
pub mod prometheus;
pub mod trace;

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::error::Failure;

/// Opens the report destination. Files are created readable by owner and group only, since
/// reports name other users' processes.
pub fn open(path: Option<&Path>) -> Result<Box<dyn Write>, Failure> {
    match path {
        None => Ok(Box::new(io::stdout())),
        Some(path) => Ok(Box::new(BufWriter::new(create(path, false)?))),
    }
}

/// Opens a file to append records to, unbuffered (the daemon's events), created as `open` does.
pub fn open_append(path: &Path) -> Result<Box<dyn Write>, Failure> {
    Ok(Box::new(create(path, true)?))
}

fn create(path: &Path, append: bool) -> Result<std::fs::File, Failure> {
    OpenOptions::new()
        .write(true)
        .append(append)
        .truncate(!append)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|err| Failure::Usage(format!("cannot write to {}: {err}", path.display())))
}

/// Writes one JSON object and a newline, and flushes: each record is out as soon as it exists.
pub fn json_line(out: &mut dyn Write, value: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// A moment, as seconds since the epoch (for machines) and local `HH:MM:SS` (for people).
#[derive(Clone, Copy, Debug)]
pub struct Timestamp {
    pub unix: f64,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            unix: since.as_secs_f64(),
        }
    }

    pub fn local_hms(self) -> String {
        let secs = self.unix as libc::time_t;
        // SAFETY: all-zero is a valid `tm`; localtime_r only writes into it.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to a time_t and a tm we own.
        if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
            return "??:??:??".into();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

/// Rounds seconds to microseconds for JSON, so figures stay readable.
pub fn round_secs(secs: f64) -> f64 {
    (secs * 1e6).round() / 1e6
}

/// Whether writing failed because the reader went away (`memtrace ... | head`).
pub fn is_closed(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|err| err.kind() == io::ErrorKind::BrokenPipe)
}
