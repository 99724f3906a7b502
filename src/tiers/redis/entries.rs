//! Entries: one plain `GET` to read, one plain `SET … PX` to write.
//!
//! An entry is stored as `{scope} {hard} {soft}` triples (space separated), a newline, then the
//! payload: the generations its scopes had in Redis when its fill *started*. Nothing here
//! checks them: the reader does, against the counters it knows (see
//! `scope::CounterMirror`) or reads ([`RedisTier::gens`]). An entry filled across a purge
//! carries the generation from before it, so every reader refuses it; that is what keeps a
//! purged answer from coming back, not a guarded write.

use std::time::Duration;

use bytes::Bytes;

use super::counters::Gen;
use super::{px, Op, RedisTier, TierError};

/// Longest an entry is kept in Redis, whatever its freshness and stale windows say.
pub const MAX_ENTRY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// An entry as read: the generations recorded at its fill, and its payload.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Scope and the generation it had when the fill started, per scope of the entry.
    pub recorded: Vec<(String, Gen)>,
    /// The encoded response.
    pub payload: Bytes,
}

impl RedisTier {
    /// Reads an entry; `None` when absent or not in our layout.
    ///
    /// # Errors
    /// The tier is down or Redis failed (the tier is then marked down).
    pub async fn get(&self, key: &str) -> Result<Option<Stored>, TierError> {
        let value: Option<Vec<u8>> = self
            .run(Op::Lookup, async |mut c| {
                redis::cmd("GET").arg(self.keys.entry(key)).query_async(&mut c).await
            })
            .await?;
        Ok(value.and_then(|v| parse(Bytes::from(v))))
    }

    /// Writes an entry with the generations its scopes had when the fill started.
    ///
    /// # Errors
    /// The tier is down or Redis failed.
    pub async fn put(
        &self,
        key: &str,
        recorded: &[(&str, Gen)],
        payload: &[u8],
        ttl: Duration,
    ) -> Result<(), TierError> {
        let mut value = Vec::with_capacity(payload.len() + 32 * recorded.len());
        for (i, (s, g)) in recorded.iter().enumerate() {
            if i > 0 {
                value.push(b' ');
            }
            value.extend_from_slice(format!("{s} {} {}", g.hard, g.soft).as_bytes());
        }
        value.push(b'\n');
        value.extend_from_slice(payload);
        let ttl_ms = px(ttl, MAX_ENTRY_TTL);
        self.run(Op::Store, async |mut c| {
            redis::cmd("SET")
                .arg(self.keys.entry(key))
                .arg(&value[..])
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }
}

/// Splits a stored value into its recorded generations and payload.
fn parse(v: Bytes) -> Option<Stored> {
    let nl = v.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&v[..nl]).ok()?;
    let mut recorded = Vec::new();
    let mut words = header.split(' ').filter(|w| !w.is_empty());
    while let Some(scope) = words.next() {
        let hard = words.next()?.parse().ok()?;
        let soft = words.next()?.parse().ok()?;
        recorded.push((scope.to_string(), Gen { hard, soft }));
    }
    Some(Stored {
        recorded,
        payload: v.slice(nl + 1..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_put_writes_and_refuses_the_rest() {
        let s = parse(Bytes::from_static(b"all 3 0 url:r:/a 1 2\npayload")).unwrap();
        assert_eq!(s.payload, Bytes::from_static(b"payload"));
        assert_eq!(
            s.recorded,
            vec![
                ("all".to_string(), Gen { hard: 3, soft: 0 }),
                ("url:r:/a".to_string(), Gen { hard: 1, soft: 2 })
            ]
        );
        assert!(parse(Bytes::from_static(b"\n")).unwrap().recorded.is_empty());
        assert!(parse(Bytes::from_static(b"no newline")).is_none());
        assert!(parse(Bytes::from_static(b"all 3\nx")).is_none());
        assert!(parse(Bytes::from_static(b"all x 0\nx")).is_none());
    }
}
