//! The name of every Redis key and pub/sub channel, so the layout is decided in one place.
//!
//! With `P` the configured `key_prefix` (the braces below are literal: a hash tag):
//!
//! * entries: their cache key, which already starts with `P:<route>:`;
//! * scope generation counters: `{P}:_g:<scope>` (hard) and `{P}:_s:<scope>` (soft);
//! * `{P}:_epoch`: counts every purge;
//! * `{P}:_instances`: the sorted set of live instances;
//! * `P:_lease:<cache key>`: the cross-instance fill lease of one entry;
//! * `P:_replay:<signature>`: a webhook signature already accepted;
//! * channels: `P:_purge` (purges), `P:_hb:<id>` (an instance's heartbeats) and
//!   `P:_ack:<id>` (acknowledgements of that instance's purges).
//!
//! On a Redis Cluster entries spread over the slots by their own key, while everything a script
//! touches together (counters, epoch, instance registry) carries the hash tag `{P}` and so lives
//! in one slot: each script runs on one shard, and purges and heartbeats, both published by
//! that shard, reach every subscriber in the order they were made. A single node uses the same
//! names. (`key_prefix` may not contain braces, so the tag is exactly `P`.)
//!
//! Route names start with a letter or digit and everything else here with `_`, so entries never
//! meet the other namespaces. Instances of different versions share one Redis during a rolling
//! upgrade, which is why these names are pinned by a test; a release that changes them (as the
//! move of the counters under the hash tag did) says so, and is rolled out with a new
//! `key_prefix`.

use std::fmt::Display;

/// Names keys and channels under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    hard: String,
    soft: String,
    epoch: String,
    instances: String,
    purge: String,
}

impl Keys {
    /// Names under `key_prefix` (given without the trailing `:`).
    pub fn new(key_prefix: &str) -> Self {
        let prefix = format!("{key_prefix}:");
        // The hash tag: one slot for every key a script touches together.
        let slot = format!("{{{key_prefix}}}:");
        Keys {
            hard: format!("{slot}_g:"),
            soft: format!("{slot}_s:"),
            epoch: format!("{slot}_epoch"),
            instances: format!("{slot}_instances"),
            purge: format!("{prefix}_purge"),
            prefix,
        }
    }

    /// `{prefix}:`, the start of every key and channel.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of the entry cached under `cache_key`.
    pub fn entry<'k>(&self, cache_key: &'k str) -> &'k str {
        // The cache key is built from the same prefix, so it is the Redis key as it stands.
        cache_key
    }

    /// The hard or soft generation counter of `scope`.
    pub fn counter(&self, soft: bool, scope: &str) -> String {
        format!("{}{scope}", self.counter_prefix(soft))
    }

    /// What [`Keys::counter`] puts before the scope name. The entry scripts need it: they find
    /// the scopes recorded in an entry only once they have read it.
    pub fn counter_prefix(&self, soft: bool) -> &str {
        if soft {
            &self.soft
        } else {
            &self.hard
        }
    }

    /// The purge counter.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The sorted set of live instances (member = id, score = registration expiry).
    pub fn instances(&self) -> &str {
        &self.instances
    }

    /// The cross-instance fill lease of the entry cached under `cache_key`.
    pub fn lease(&self, cache_key: &str) -> String {
        format!("{}_lease:{cache_key}", self.prefix)
    }

    /// The replay guard of a webhook signature.
    pub fn replay(&self, signature: &str) -> String {
        format!("{}_replay:{signature}", self.prefix)
    }

    /// The channel every purge is published on.
    pub fn purge_channel(&self) -> &str {
        &self.purge
    }

    /// The channel instance `id` publishes its heartbeats on.
    pub fn heartbeat_channel(&self, id: u64) -> String {
        format!("{}_hb:{id}", self.prefix)
    }

    /// Whether `channel` is some instance's heartbeat channel.
    pub fn is_heartbeat_channel(&self, channel: &str) -> bool {
        channel
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with("_hb:"))
    }

    /// The channel instance `id` hears acknowledgements of its purges on.
    pub fn ack_channel(&self, id: impl Display) -> String {
        format!("{}_ack:{id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_layout() {
        let k = Keys::new("app:v1");
        assert_eq!(k.prefix(), "app:v1:");
        assert_eq!(k.entry("app:v1:r:/a"), "app:v1:r:/a");
        assert_eq!(k.counter(false, "tag:x"), "{app:v1}:_g:tag:x");
        assert_eq!(k.counter(true, "tag:x"), "{app:v1}:_s:tag:x");
        assert_eq!(k.counter_prefix(false), "{app:v1}:_g:");
        assert_eq!(k.counter_prefix(true), "{app:v1}:_s:");
        assert_eq!(k.epoch(), "{app:v1}:_epoch");
        assert_eq!(k.instances(), "{app:v1}:_instances");
        assert_eq!(k.lease("app:v1:r:/a"), "app:v1:_lease:app:v1:r:/a");
        assert_eq!(k.replay("ab12"), "app:v1:_replay:ab12");
        assert_eq!(k.purge_channel(), "app:v1:_purge");
        assert_eq!(k.heartbeat_channel(7), "app:v1:_hb:7");
        assert_eq!(k.ack_channel(7), "app:v1:_ack:7");
        assert_eq!(k.ack_channel("7"), "app:v1:_ack:7");
    }

    #[test]
    fn heartbeat_channels_are_told_by_their_name_after_the_prefix() {
        let k = Keys::new("x_hb:y");
        assert!(k.is_heartbeat_channel(&k.heartbeat_channel(3)));
        assert!(!k.is_heartbeat_channel(&k.ack_channel(3)));
        assert!(!k.is_heartbeat_channel(k.purge_channel()));
        assert!(!k.is_heartbeat_channel("other:_hb:3"));
    }
}
