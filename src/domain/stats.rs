//! The operator console's figures: every instance reports what it carries once a second
//! (`report_stats`), over the hub and so over Redis to the others; an admin's `serverStats`
//! feed keeps the newest report of each instance and sends, once a second, every instance and
//! their sum. An instance whose newest report is older than `STALE_AFTER` has stopped
//! reporting: it is shown as such and left out of the sum.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;

use super::{require_admin, Domain, DomainResult};
use crate::auth::Viewer;
use crate::hub::event::{Figure, InstanceStats};
use crate::hub::{Event, RecvError, Topic};

/// How often instances report, and the feed sends.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// A report older than this means its instance stopped reporting.
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// An instance silent this long is forgotten by a feed.
const FORGET_AFTER: Duration = Duration::from_secs(300);
/// The most instances one feed remembers (a bound on what a subscriber makes the server hold,
/// whatever Redis carries).
pub const MAX_INSTANCES: usize = 256;

/// One instance as a feed shows it.
#[derive(Clone, Debug)]
pub struct InstanceView {
    pub stats: InstanceStats,
    /// Its newest report is older than `STALE_AFTER`.
    pub stale: bool,
}

/// What the `serverStats` feed sends once a second.
#[derive(Clone, Debug)]
pub struct ServerStatsView {
    pub at: DateTime<Utc>,
    /// Every instance that reported in the last five minutes, by id.
    pub instances: Vec<InstanceView>,
    /// The sum over the instances still reporting (`instance` is `total`).
    pub total: InstanceStats,
}

impl Domain {
    /// Publishes this instance's figures to every instance's console feeds. The database's
    /// state is read here, where the database is.
    pub async fn report_stats(&self, mut stats: InstanceStats) {
        stats.database = if self.database_ok().await {
            "ok".into()
        } else {
            "down".into()
        };
        self.hub.publish(Event::Stats(stats));
    }

    /// Admins: every instance's figures and their sum, once a second, from the first second on.
    pub fn server_stats_feed(
        &self,
        viewer: &Viewer,
    ) -> DomainResult<BoxStream<'static, ServerStatsView>> {
        require_admin(viewer)?;
        let mut reports = self.hub.subscribe(Topic::Stats);
        Ok(Box::pin(async_stream::stream! {
            let mut known: HashMap<String, InstanceStats> = HashMap::new();
            let mut tick = tokio::time::interval(STATS_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // The first tick is immediate: wait for a round of reports first.
            tick.tick().await;
            loop {
                tokio::select! {
                    report = reports.recv() => match report {
                        Ok(event) => {
                            if let Event::Stats(stats) = &*event {
                                remember(&mut known, stats.clone());
                            }
                        }
                        // Reports are replaced by the next ones: missing some loses nothing.
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    _ = tick.tick() => yield view(&mut known, Utc::now()),
                }
            }
        }))
    }
}

fn remember(known: &mut HashMap<String, InstanceStats>, stats: InstanceStats) {
    if known.len() >= MAX_INSTANCES && !known.contains_key(&stats.instance) {
        // Make room by forgetting the instance heard from least recently.
        let oldest = known
            .values()
            .min_by_key(|s| s.at)
            .map(|s| s.instance.clone());
        if let Some(oldest) = oldest {
            known.remove(&oldest);
        }
    }
    match known.get(&stats.instance) {
        // Reports can cross on their way: keep the newest.
        Some(had) if had.at > stats.at => {}
        _ => {
            known.insert(stats.instance.clone(), stats);
        }
    }
}

/// The instances as of `now`, and the sum of those still reporting.
pub fn view(known: &mut HashMap<String, InstanceStats>, now: DateTime<Utc>) -> ServerStatsView {
    let age = |s: &InstanceStats| (now - s.at).to_std().unwrap_or(Duration::ZERO);
    known.retain(|_, s| age(s) < FORGET_AFTER);
    let mut instances: Vec<InstanceView> = known
        .values()
        .map(|s| InstanceView {
            stale: age(s) > STALE_AFTER,
            stats: s.clone(),
        })
        .collect();
    instances.sort_by(|a, b| a.stats.instance.cmp(&b.stats.instance));
    let live: Vec<&InstanceStats> = instances
        .iter()
        .filter(|i| !i.stale)
        .map(|i| &i.stats)
        .collect();
    ServerStatsView {
        at: now,
        total: sum(&live, now),
        instances,
    }
}

/// Counts add up; a latency percentile of the whole is not the sum of the parts, so the total
/// shows the worst instance's; the shared services are `up` or `ok` only when every
/// instance says so.
fn sum(parts: &[&InstanceStats], now: DateTime<Utc>) -> InstanceStats {
    let worst = |f: fn(&InstanceStats) -> Option<f64>| {
        parts
            .iter()
            .filter_map(|s| f(s))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let all_say = |f: fn(&InstanceStats) -> &str, good: &str, none: &str| {
        if parts.is_empty() {
            none.to_owned()
        } else if let Some(bad) = parts.iter().map(|s| f(s)).find(|v| *v != good) {
            bad.to_owned()
        } else {
            good.to_owned()
        }
    };
    let mut sockets: Vec<_> = parts.iter().flat_map(|s| s.sockets.clone()).collect();
    sockets.sort_by_key(|s| std::cmp::Reverse(s.queued));
    sockets.truncate(crate::hub::event::MAX_REPORTED_SOCKETS);
    InstanceStats {
        instance: "total".into(),
        at: now,
        started_at: parts.iter().map(|s| s.started_at).min().unwrap_or(now),
        connections: add_figures(parts.iter().map(|s| &s.connections)),
        subscriptions: add_figures(parts.iter().map(|s| &s.subscriptions)),
        cohorts: parts.iter().map(|s| s.cohorts).sum(),
        cohort_members: parts.iter().map(|s| s.cohort_members).sum(),
        events_published: parts.iter().map(|s| s.events_published).sum(),
        events_delivered: parts.iter().map(|s| s.events_delivered).sum(),
        published_per_second: parts.iter().map(|s| s.published_per_second).sum(),
        delivered_per_second: parts.iter().map(|s| s.delivered_per_second).sum(),
        latency_p50_ms: worst(|s| s.latency_p50_ms),
        latency_p99_ms: worst(|s| s.latency_p99_ms),
        slow_consumers: parts.iter().map(|s| s.slow_consumers).sum(),
        refusals: add_figures(parts.iter().map(|s| &s.refusals)),
        redis: all_say(|s| &s.redis, "up", "disabled"),
        database: all_say(|s| &s.database, "ok", "down"),
        sockets,
        signed_in_sockets: parts.iter().map(|s| s.signed_in_sockets).sum(),
    }
}

/// Figures of the same name added together, in the order their names first appear.
fn add_figures<'a>(lists: impl Iterator<Item = &'a Vec<Figure>>) -> Vec<Figure> {
    let mut out: Vec<Figure> = Vec::new();
    for list in lists {
        for f in list {
            match out.iter_mut().find(|o| o.name == f.name) {
                Some(o) => o.value += f.value,
                None => out.push(f.clone()),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(instance: &str, at: DateTime<Utc>, connections: u64) -> InstanceStats {
        InstanceStats {
            instance: instance.into(),
            at,
            started_at: at,
            connections: vec![Figure {
                name: "graphql_ws".into(),
                value: connections,
            }],
            subscriptions: Vec::new(),
            cohorts: 0,
            cohort_members: 0,
            events_published: 0,
            events_delivered: 0,
            published_per_second: 1.5,
            delivered_per_second: 0.0,
            latency_p50_ms: Some(connections as f64),
            latency_p99_ms: None,
            slow_consumers: 0,
            refusals: Vec::new(),
            redis: "up".into(),
            database: "ok".into(),
            sockets: Vec::new(),
            signed_in_sockets: connections,
        }
    }

    #[test]
    fn the_total_adds_the_instances_still_reporting_and_marks_the_silent_one() {
        let now = Utc::now();
        let mut known = HashMap::new();
        remember(&mut known, report("a", now, 2));
        remember(
            &mut known,
            report("b", now - chrono::Duration::seconds(1), 3),
        );
        remember(
            &mut known,
            report("c", now - chrono::Duration::seconds(10), 100),
        );
        let v = view(&mut known, now);
        let stale: Vec<(&str, bool)> = v
            .instances
            .iter()
            .map(|i| (i.stats.instance.as_str(), i.stale))
            .collect();
        assert_eq!(stale, vec![("a", false), ("b", false), ("c", true)]);
        assert_eq!(v.total.connections[0].value, 5);
        assert_eq!(v.total.signed_in_sockets, 5);
        assert_eq!(v.total.published_per_second, 3.0);
        assert_eq!(v.total.latency_p50_ms, Some(3.0), "the worst instance's");
    }

    #[test]
    fn an_older_report_does_not_replace_a_newer_one_and_the_long_silent_are_forgotten() {
        let now = Utc::now();
        let mut known = HashMap::new();
        remember(&mut known, report("a", now, 2));
        remember(
            &mut known,
            report("a", now - chrono::Duration::seconds(2), 9),
        );
        remember(
            &mut known,
            report("z", now - chrono::Duration::seconds(600), 1),
        );
        let v = view(&mut known, now);
        assert_eq!(v.instances.len(), 1);
        assert_eq!(v.total.connections[0].value, 2);
    }

    #[test]
    fn a_feed_remembers_at_most_max_instances() {
        let now = Utc::now();
        let mut known = HashMap::new();
        for i in 0..MAX_INSTANCES + 10 {
            remember(
                &mut known,
                report(
                    &format!("i{i}"),
                    now + chrono::Duration::milliseconds(i as i64),
                    1,
                ),
            );
        }
        assert_eq!(known.len(), MAX_INSTANCES);
        assert!(known.contains_key(&format!("i{}", MAX_INSTANCES + 9)));
    }
}
