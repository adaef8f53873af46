//! Time as memtrace reports it: a moment (Unix seconds, and local `HH:MM:SS` for people), and
//! seconds in JSON to the microsecond.

use std::time::{SystemTime, UNIX_EPOCH};

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

/// A timestamp as JSON has it: Unix seconds, to the microsecond.
pub fn unix_seconds<S: serde::Serializer>(time: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round_secs(time.unix))
}

/// Seconds as JSON has them: to the microsecond.
pub fn seconds<S: serde::Serializer>(secs: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round_secs(*secs))
}

/// Rounds seconds to microseconds for JSON, so figures stay readable.
pub fn round_secs(secs: f64) -> f64 {
    (secs * 1e6).round() / 1e6
}
