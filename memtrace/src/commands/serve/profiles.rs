//! `/debug/pprof/faults?seconds=N` (`serve --profiles`): the machine's page faults of the next
//! N seconds by user stack, as a gzipped pprof profile, the shape continuous profilers pull as a
//! delta profile (Parca's `pprof_config`, Grafana Alloy's `pyroscope.scrape` with `delta`: both
//! ask for `seconds`).
//!
//! Each profile attaches `faults --stacks`'s object to every process for its seconds, and
//! detaches it after: between profiles the machine pays nothing, and nothing accumulates over a
//! daemon's weeks (each profile's stacks are bounded by `--profile-stacks`). Profiles are taken
//! one at a time, on a thread of their own: the endpoint's `/metrics` is never held up by one.

use std::{thread, time::Duration};

use anyhow::Context as _;
use tokio::sync::{Mutex, oneshot};

use crate::{
    bpf::targets::Filter,
    pipelines::attributed::{Attributed, Attribution},
};

/// The seconds a profile covers when a request names none, and at most.
pub const DEFAULT_SECONDS: u64 = 10;
pub const MAX_SECONDS: u64 = 300;

pub struct Profiler {
    max_stacks: u32,
    /// Held while a profile is taken.
    taking: Mutex<()>,
}

impl Profiler {
    pub fn new(max_stacks: u32) -> Profiler {
        Profiler {
            max_stacks,
            taking: Mutex::new(()),
        }
    }

    /// The faults of the next `seconds` (after any profile under way), gzipped.
    pub async fn faults(&self, seconds: Duration) -> anyhow::Result<Vec<u8>> {
        let _one_at_a_time = self.taking.lock().await;
        let max_stacks = self.max_stacks;
        let (sender, profile) = oneshot::channel();
        thread::Builder::new()
            .name("memtrace-profile".into())
            .spawn(move || {
                let _ = sender.send(take(seconds, max_stacks));
            })
            .context("start the profile's thread")?;
        profile.await.context("the profile's thread ended early")?
    }
}

/// Attaches to every process, counts faults by stack for `seconds`, detaches.
fn take(seconds: Duration, max_stacks: u32) -> anyhow::Result<Vec<u8>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the profile's runtime")?;
    runtime.block_on(async move {
        let mut attributed = Attributed::load(Filter::All, Attribution::Stack, max_stacks)?;
        let end = tokio::time::Instant::now() + seconds;
        let counted = async {
            loop {
                tokio::select! {
                    ready = attributed.readable() => {
                        ready?;
                        attributed.drain();
                    }
                    () = tokio::time::sleep_until(end) => break,
                }
            }
            attributed.drain();
            attributed.stacks_profile(seconds)
        }
        .await;
        attributed.release();
        counted?.gzipped().context("compress the profile")
    })
}

/// The seconds a request's query asks for (`seconds=N`), or why they cannot be.
pub fn seconds_of(query: Option<&str>) -> Result<Duration, String> {
    let asked = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("seconds="));
    let Some(asked) = asked else {
        return Ok(Duration::from_secs(DEFAULT_SECONDS));
    };
    match asked.parse::<u64>() {
        Ok(n) if (1..=MAX_SECONDS).contains(&n) => Ok(Duration::from_secs(n)),
        _ => Err(format!(
            "seconds must be a whole number from 1 to {MAX_SECONDS}, not {asked:?}\n"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_default_to_ten_and_are_bounded() {
        assert_eq!(seconds_of(None), Ok(Duration::from_secs(10)));
        assert_eq!(seconds_of(Some("debug=1")), Ok(Duration::from_secs(10)));
        assert_eq!(
            seconds_of(Some("debug=1&seconds=14")),
            Ok(Duration::from_secs(14))
        );
        for bad in ["seconds=0", "seconds=301", "seconds=1.5", "seconds="] {
            assert!(seconds_of(Some(bad)).is_err(), "{bad}");
        }
    }
}
