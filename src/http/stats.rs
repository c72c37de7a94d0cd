//! This instance's report to the operator console, once a second: what the metrics recorder
//! already counts (read back, not counted again), the signed-in sockets and their queues, and
//! the shared executions running. The domain adds the database's state and publishes it to
//! every instance (`Domain::report_stats`).

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::domain::stats::STATS_INTERVAL;
use crate::hub::event::{Figure, InstanceStats, MAX_REPORTED_SOCKETS};

/// The instance id figures carry when no Redis bridge names this instance.
const LOCAL_INSTANCE: &str = "local";

/// Reports this instance's figures every second until `shutdown`.
pub fn report_every_second(state: &AppState, shutdown: CancellationToken) {
    let state = state.clone();
    let instance: Arc<str> = state
        .bridge
        .as_ref()
        .map_or(LOCAL_INSTANCE, |b| b.instance())
        .into();
    let started_at = Utc::now();
    tokio::spawn(async move {
        let mut sampler = crate::metrics::Sampler::default();
        let mut tick = tokio::time::interval(STATS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Without a recorder of ours (an embedding application brought its own) there is
            // nothing to report.
            let Some(sample) = sampler.sample() else {
                continue;
            };
            let (sockets, signed_in) = state.connections.socket_loads(MAX_REPORTED_SOCKETS);
            let figures = |list: Vec<(String, u64)>| {
                list.into_iter()
                    .map(|(name, value)| Figure { name, value })
                    .collect()
            };
            let redis = match &state.bridge {
                None => "disabled",
                Some(_) if sample.redis_up => "up",
                Some(_) => "down",
            };
            let stats = InstanceStats {
                instance: instance.to_string(),
                at: Utc::now(),
                started_at,
                connections: figures(sample.connections),
                subscriptions: figures(sample.subscriptions),
                cohorts: state.cohorts.running() as u64,
                cohort_members: sample.cohort_members,
                events_published: sample.events_published,
                events_delivered: sample.events_delivered,
                published_per_second: sample.published_per_second,
                delivered_per_second: sample.delivered_per_second,
                latency_p50_ms: sample.latency_p50_ms,
                latency_p99_ms: sample.latency_p99_ms,
                slow_consumers: sample.slow_consumers,
                refusals: figures(sample.refusals),
                redis: redis.to_owned(),
                database: String::new(),
                sockets,
                signed_in_sockets: signed_in,
            };
            state.domain.report_stats(stats).await;
        }
    });
}
