//! Series that are scraped at 0 before they count.
//!
//! Every series is born at 0 and counts only once every regular scraper has seen it at 0
//! ([`Scrapers`], [`Counters`]): Prometheus's `rate()` and `increase()` see no increase in a
//! series whose first sample is already 1, so a series born at 1 would hide the first OOM kill of
//! every process name and cgroup, and every count of a process shorter-lived than a scrape
//! interval. What a new series counts meanwhile is held, and added at the first reading after
//! (so a count shows one scrape interval later, never lost).

use std::{
    collections::HashMap,
    sync::Mutex,
    sync::atomic::AtomicU64,
    time::{Duration, Instant},
};

use prometheus_client::{
    metrics::{
        counter::{Atomic, Counter},
        family::Family,
    },
    registry::{Registry, Unit},
};

use super::metrics::Labels;

/// Scrapes that come more often than this are a scraper's (Prometheus, an agent); rarer ones
/// (someone's curl) hold no count back.
const REGULAR_INTERVAL: Duration = Duration::from_secs(120);
/// A count is held at most this long, should a scraper have gone away unseen.
const MAX_HOLD: Duration = Duration::from_secs(300);

/// Who scrapes `/metrics` (by address and user agent: Prometheus replicas differ by address),
/// and when each last began to: shared by the HTTP endpoint, which records scrapes, and the
/// readings, which release held counts.
#[derive(Debug, Default)]
pub struct Scrapers {
    seen: Mutex<HashMap<String, Scraper>>,
}

#[derive(Clone, Copy, Debug)]
struct Scraper {
    /// When its last encoded scrape began.
    last: Instant,
    /// The time between its last two scrapes.
    interval: Option<Duration>,
}

impl Scrapers {
    /// `who` has scraped: its scrape began at `now`, and the registry was then encoded.
    pub fn scraped(&self, who: String, now: Instant) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let interval = seen.get(&who).map(|scraper| now - scraper.last);
        seen.insert(
            who,
            Scraper {
                last: now,
                interval,
            },
        );
        // Forget those long gone, so the map stays small.
        seen.retain(|_, scraper| now - scraper.last < MAX_HOLD);
    }

    /// Whether a series created at `since` has been scraped at 0 by every regular scraper still
    /// scraping, or, with none known yet, by anyone.
    pub fn have_seen(&self, since: Instant, now: Instant) -> bool {
        let Ok(seen) = self.seen.lock() else {
            return true;
        };
        let regular: Vec<&Scraper> = seen
            .values()
            .filter(|s| {
                s.interval.is_some_and(|interval| {
                    interval <= REGULAR_INTERVAL
                        && now.saturating_duration_since(s.last)
                            <= interval * 2 + Duration::from_secs(5)
                })
            })
            .collect();
        if regular.is_empty() {
            seen.values().any(|s| s.last > since)
        } else {
            regular.iter().all(|s| s.last > since)
        }
    }
}

/// A family of counters whose series are each scraped at 0 before they count: of events (`u64`)
/// or of seconds (`f64`).
pub struct Counters<N = u64> {
    family: Family<Labels, Counter<N, AtomicU64>>,
    /// New series, and what they counted since they were created at 0.
    held: HashMap<Labels, Held<N>>,
}

#[derive(Debug)]
struct Held<N> {
    since: Instant,
    count: N,
}

impl<N> Counters<N>
where
    N: Copy + Default + PartialEq + std::ops::AddAssign,
    AtomicU64: Atomic<N>,
{
    pub fn new(family: Family<Labels, Counter<N, AtomicU64>>) -> Counters<N> {
        Counters {
            family,
            held: HashMap::new(),
        }
    }

    /// Counts `n` (nothing, and no series, for 0): at once in a series already scraped, else
    /// held in a new one created at 0.
    pub fn add(&mut self, labels: &Labels, n: N) {
        if n == N::default() {
            return;
        }
        if let Some(held) = self.held.get_mut(labels) {
            held.count += n;
        } else if self.family.get(labels).is_some() {
            self.family.get_or_create(labels).inc_by(n);
        } else {
            let since = self.create_at_zero(labels);
            self.held.insert(labels.clone(), Held { since, count: n });
        }
    }

    /// Creates a series at 0 and returns when it existed: read from the clock *after* creating
    /// it, so a scrape that began later (`Scrapers::have_seen`) has encoded it, at 0.
    fn create_at_zero(&self, labels: &Labels) -> Instant {
        // Getting a series creates it, at 0; the guard is dropped at once.
        let _ = self.family.get_or_create(labels);
        Instant::now()
    }

    /// Creates a series at 0, to count into once scraped (bounded label sets, known in advance).
    pub fn create(&mut self, labels: &Labels) {
        if self.family.get(labels).is_none() {
            let since = self.create_at_zero(labels);
            self.held.insert(
                labels.clone(),
                Held {
                    since,
                    count: N::default(),
                },
            );
        }
    }

    /// Adds the held counts of the series every scraper has now seen at 0.
    pub fn release(&mut self, scrapers: &Scrapers, now: Instant) {
        let family = &self.family;
        self.held.retain(|labels, held| {
            let seen = scrapers.have_seen(held.since, now) || now - held.since >= MAX_HOLD;
            if seen {
                family.get_or_create(labels).inc_by(held.count);
            }
            !seen
        });
    }

    pub fn remove(&mut self, labels: &Labels) {
        self.family.remove(labels);
        self.held.remove(labels);
    }

    /// Series whose counts are held now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// A count kept twice: per owner (the `--by` labels, whose series come and go with processes
/// and fold into `other`), and for the whole node under the bounded labels alone, in a
/// `memtrace_node_*` family whose series all exist at 0 from the start. Sums over the node so
/// read 0 on a healthy one rather than "No data", and keep the counts of removed series.
pub struct Tally<N = u64> {
    owners: Counters<N>,
    node: Counters<N>,
}

impl<N> Tally<N>
where
    N: Copy + Default + PartialEq + std::ops::AddAssign,
    AtomicU64: Atomic<N>,
    Family<Labels, Counter<N, AtomicU64>>: prometheus_client::registry::Metric,
{
    /// Registers `name` and `memtrace_node_<name without memtrace_>`, the latter with a series
    /// at 0 for each of `bounded`'s values (none: one series without labels).
    pub fn register(
        registry: &mut Registry,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        bounded: Option<(&'static str, &[&str])>,
    ) -> Tally<N> {
        let owners = Family::<Labels, Counter<N, AtomicU64>>::default();
        let node = Family::<Labels, Counter<N, AtomicU64>>::default();
        let node_name = format!("memtrace_node_{}", name.trim_start_matches("memtrace_"));
        let node_help = format!("{help}; summed over the node (every owner, exited ones too)");
        match unit {
            Some(unit) => {
                registry.register_with_unit(name, help, unit.clone(), owners.clone());
                registry.register_with_unit(node_name, node_help, unit, node.clone());
            }
            None => {
                registry.register(name, help, owners.clone());
                registry.register(node_name, node_help, node.clone());
            }
        }
        let mut tally = Tally {
            owners: Counters::new(owners),
            node: Counters::new(node),
        };
        match bounded {
            Some((key, values)) => {
                for value in values {
                    tally.node.create(&vec![(key, (*value).to_owned())]);
                }
            }
            None => tally.node.create(&Vec::new()),
        }
        tally
    }

    /// Counts `n` for `owner`, under the bounded label `bounded` if the family has one.
    pub fn add(&mut self, owner: &Labels, bounded: Option<(&'static str, &str)>, n: N) {
        self.owners.add(&owned(owner, bounded), n);
        self.node.add(&owned(&Vec::new(), bounded), n);
    }

    /// Creates the owner's series at 0 (the node's exist from the start).
    pub fn create(&mut self, owner: &Labels, bounded: Option<(&'static str, &str)>) {
        self.owners.create(&owned(owner, bounded));
    }

    pub fn release(&mut self, scrapers: &Scrapers, now: Instant) {
        self.owners.release(scrapers, now);
        self.node.release(scrapers, now);
    }

    /// Removes an owner's series; the node's totals keep what it counted.
    pub fn remove(&mut self, owner: &Labels, bounded: Option<(&'static str, &str)>) {
        self.owners.remove(&owned(owner, bounded));
    }
}

/// An owner's labels with the bounded label, if the family has one.
fn owned(owner: &Labels, bounded: Option<(&'static str, &str)>) -> Labels {
    match bounded {
        Some((key, value)) => with(owner, key, value),
        None => owner.clone(),
    }
}

fn with(labels: &Labels, key: &'static str, value: &str) -> Labels {
    let mut labels = labels.clone();
    labels.push((key, value.to_owned()));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_wait_for_every_regular_scraper() {
        let scrapers = Scrapers::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Two Prometheus replicas scraping every second, a second apart; a one-off curl.
        for ms in [0, 1000] {
            scrapers.scraped("10.0.0.1 Prometheus".into(), at(ms));
            scrapers.scraped("10.0.0.2 Prometheus".into(), at(ms + 500));
        }
        scrapers.scraped("10.0.0.9 curl".into(), at(1200));
        let created = at(1600);
        scrapers.scraped("10.0.0.1 Prometheus".into(), at(2000));
        assert!(
            !scrapers.have_seen(created, at(2100)),
            "the second replica has not scraped since"
        );
        scrapers.scraped("10.0.0.2 Prometheus".into(), at(2500));
        assert!(scrapers.have_seen(created, at(2600)));
        // A replica gone quiet (twice its interval and 5 s) no longer holds counts back.
        let later = at(2700);
        scrapers.scraped("10.0.0.1 Prometheus".into(), at(3000));
        assert!(!scrapers.have_seen(later, at(3100)));
        assert!(scrapers.have_seen(later, at(20_000)));
    }

    #[test]
    fn with_no_regular_scraper_one_scrape_suffices_and_nothing_is_held_forever() {
        let scrapers = Scrapers::default();
        let t0 = Instant::now();
        assert!(!scrapers.have_seen(t0, t0 + Duration::from_secs(1)));
        scrapers.scraped("127.0.0.1 Prometheus".into(), t0 + Duration::from_secs(2));
        assert!(scrapers.have_seen(t0, t0 + Duration::from_secs(3)));

        let mut counters = Counters::new(Family::default());
        let labels = vec![("comm", "x".to_owned())];
        counters.add(&labels, 3);
        counters.release(&Scrapers::default(), t0 + Duration::from_secs(1));
        assert_eq!(counters.held(), 1, "nobody has scraped it");
        counters.release(&Scrapers::default(), Instant::now() + MAX_HOLD);
        assert_eq!(counters.held(), 0, "held at most MAX_HOLD");
        assert_eq!(counters.family.get_or_create(&labels).get(), 3);
    }
}
