//! Every metric Tidings records, named in one place (Prometheus names, `tidings_` prefix).

/// 1 while the Redis bridge is connected, 0 otherwise (and when Redis is not configured).
pub fn set_redis_up(up: bool) {
    metrics::gauge!("tidings_redis_up").set(if up { 1.0 } else { 0.0 });
}

/// The Redis bridge lost its connection.
pub fn redis_disconnected() {
    metrics::counter!("tidings_redis_disconnects_total").increment(1);
}

/// An event from Redis this version could not read (another wire version, or garbage).
pub fn redis_undecodable() {
    metrics::counter!("tidings_redis_undecodable_total").increment(1);
}

/// A backend published an event to a channel of this kind (`public`, `user`, …).
pub fn channel_published(kind: &'static str) {
    metrics::counter!("tidings_channel_events_published_total", "kind" => kind).increment(1);
}

/// A channel event reached one subscriber.
pub fn channel_delivered(kind: &'static str) {
    metrics::counter!("tidings_channel_events_delivered_total", "kind" => kind).increment(1);
}

/// A slow subscriber missed channel events (they are not kept).
pub fn channel_lagged(kind: &'static str, missed: u64) {
    metrics::counter!("tidings_channel_events_missed_total", "kind" => kind).increment(missed);
}

/// A request was refused by a per-user rate limit.
pub fn rate_limited(action: &'static str) {
    metrics::counter!("tidings_rate_limited_total", "action" => action).increment(1);
}
