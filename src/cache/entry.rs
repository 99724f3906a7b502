//! A stored response, ready to be answered from without copying its body.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::scope::Stamps;

/// One cached answer. Headers are prepared at store time (hop-by-hop, `Set-Cookie`, surrogate
/// keys and `Age` removed), so a hit only adds `Age`, `X-Cache` and `Cache-Status`.
#[derive(Debug)]
pub struct CachedResponse {
    /// Status to answer with.
    pub status: StatusCode,
    /// Headers to answer with.
    pub headers: HeaderMap,
    /// Shared body.
    pub body: Bytes,
    /// When it was stored (cachegate clock).
    pub stored_at: Instant,
    /// Age it already had when received.
    pub initial_age: Duration,
    /// Freshness left when stored.
    pub fresh_for: Duration,
    /// Scope generations captured before the fetch.
    pub stamps: Stamps,
    /// How long past freshness it may still be served, or kept to be revalidated.
    pub stale: StaleWindows,
    /// Scopes learnt from the response (`Surrogate-Key`, `Cache-Groups`), kept so a `304`
    /// that refreshes the entry stores it under them again.
    pub surrogate: Vec<String>,
    /// `headers` plus what every fresh hit adds, built on the first hit (see
    /// [`CachedResponse::hit_headers`]).
    pub hit_headers: OnceLock<HeaderMap>,
}

/// Windows past freshness in which an entry may still be served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleWindows {
    /// Served (as `STALE`) while one background refresh runs.
    pub revalidate: Duration,
    /// Served (as `STALE`) when the origin fails.
    pub if_error: Duration,
    /// Past both windows: never served as it is, kept only for a conditional request whose
    /// `304` refreshes it (entries with a validator).
    pub keep: Duration,
}

impl StaleWindows {
    /// The longer window: how long past freshness the entry may be served.
    pub fn longest(&self) -> Duration {
        self.revalidate.max(self.if_error)
    }
}

pub use crate::clock::millis;

/// Where an entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    /// Within its freshness lifetime.
    Fresh,
    /// Expired, inside `stale_while_revalidate`: serve and refresh in the background.
    Revalidate,
    /// Expired, inside `stale_if_error` only: serve only if the origin fails.
    IfError,
    /// Past every window but still kept: never served, only revalidated.
    Expired,
    /// Past every window and the keep.
    Dead,
}

impl crate::tiers::memory::Stored for CachedResponse {
    fn weight(&self) -> u32 {
        CachedResponse::weight(self)
    }

    fn keep_for(&self) -> Duration {
        CachedResponse::keep_for(self)
    }
}

impl CachedResponse {
    /// Its state at `now`.
    pub fn staleness(&self, now: Instant) -> Staleness {
        let age = now.saturating_duration_since(self.stored_at);
        let Some(over) = age.checked_sub(self.fresh_for) else {
            return Staleness::Fresh;
        };
        if over < self.stale.revalidate {
            Staleness::Revalidate
        } else if over < self.stale.if_error {
            Staleness::IfError
        } else if over < self.stale.longest().saturating_add(self.stale.keep) {
            Staleness::Expired
        } else {
            Staleness::Dead
        }
    }

    /// Whether it may be served stale at `now` (inside a stale window).
    pub fn servable_stale(&self, now: Instant) -> bool {
        matches!(self.staleness(now), Staleness::Revalidate | Staleness::IfError)
    }

    /// Whether it is still fresh at `now`.
    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored_at) < self.fresh_for
    }

    /// Whether it may be served: fresh and not purged.
    pub fn is_usable(&self, now: Instant) -> bool {
        self.is_fresh(now) && self.stamps.valid()
    }

    /// Current age in whole seconds, for the `Age` header.
    pub fn age_secs(&self, now: Instant) -> u64 {
        // Saturating: `initial_age` comes from a Redis entry or the origin's `Age`.
        self.initial_age
            .saturating_add(now.saturating_duration_since(self.stored_at))
            .as_secs()
    }

    /// How long a tier must keep it: freshness, the longer stale window and the keep.
    /// Saturating, because an entry read back from Redis carries whatever durations the
    /// encoding held.
    pub fn keep_for(&self) -> Duration {
        self.fresh_for
            .saturating_add(self.stale.longest())
            .saturating_add(self.stale.keep)
    }

    /// `headers` without `private` (a field kept for cachegate's own decisions, never sent)
    /// followed by `extra`, built once per entry. A hit clones this map and only replaces
    /// values in it, so it never grows (or reallocates) per request; `extra` should hold every
    /// header the hit then sets.
    pub fn hit_headers(&self, extra: &[(HeaderName, HeaderValue)], private: Option<&HeaderName>) -> &HeaderMap {
        self.hit_headers.get_or_init(|| {
            let mut h = HeaderMap::with_capacity(self.headers.len() + extra.len());
            for (k, v) in self.headers.iter().filter(|(k, _)| Some(*k) != private) {
                h.append(k.clone(), v.clone());
            }
            for (k, v) in extra {
                h.insert(k.clone(), v.clone());
            }
            h
        })
    }

    /// Approximate memory cost, for the tier's byte bound.
    pub fn weight(&self) -> u32 {
        // Counted twice: the prepared hit headers are a second copy of the map.
        let headers: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
        u32::try_from(self.body.len() + 2 * headers + 256).unwrap_or(u32::MAX)
    }
}

/// The same fields, with every value copied into one buffer owned by the entry.
///
/// A value hyper parsed is a slice of its connection's read buffer, which also held the body
/// and the bytes of other answers, and which grows to tens of KiB for large bodies: one stored
/// value kept that whole buffer alive for the entry's life, far beyond what the tier's bound
/// counts (a 64 MiB tier of 32 KiB answers ran at ~250 MiB).
pub fn compact_headers(headers: HeaderMap) -> HeaderMap {
    let total: usize = headers.iter().map(|(_, v)| v.len()).sum();
    let mut buf = BytesMut::with_capacity(total);
    for (_, v) in &headers {
        buf.extend_from_slice(v.as_bytes());
    }
    let buf = buf.freeze();
    // Sized by names, as the map counts its capacity: a count of values (any number of one
    // name) can pass the most `with_capacity` accepts and panic.
    let mut out = HeaderMap::with_capacity(headers.keys_len());
    let mut at = 0;
    for (name, value) in &headers {
        let end = at + value.len();
        // Cannot fail (the bytes were a valid value); the original is kept if it ever does.
        let copy = match HeaderValue::from_maybe_shared(buf.slice(at..end)) {
            Ok(mut v) => {
                v.set_sensitive(value.is_sensitive());
                v
            }
            Err(_) => value.clone(),
        };
        at = end;
        out.append(name.clone(), copy);
    }
    out
}

// === wire format (Redis tier) ===

/// Format version of the encoded entry.
const WIRE_VERSION: u8 = 3;
/// Bodies at least this large are lz4-compressed when that saves space.
const COMPRESS_AT: usize = 1024;
const FLAG_LZ4: u8 = 1;

/// Why an encoded entry could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("undecodable cache entry: {0}")]
pub struct DecodeError(&'static str);

/// The parts of an entry that travel through Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireEntry {
    /// Status.
    pub status: StatusCode,
    /// Prepared headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Fill time, milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
    /// Age at receipt.
    pub initial_age: Duration,
    /// Freshness left when stored.
    pub fresh_for: Duration,
    /// Stale windows.
    pub stale: StaleWindows,
    /// Scopes learnt from the response.
    pub surrogate: Vec<String>,
}

impl WireEntry {
    /// Binary encoding: version, flags, status, times, headers, then the (maybe compressed) body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let compressed = (self.body.len() >= COMPRESS_AT)
            .then(|| lz4_flex::compress_prepend_size(&self.body))
            .filter(|c| c.len() < self.body.len());
        out.push(WIRE_VERSION);
        out.push(if compressed.is_some() { FLAG_LZ4 } else { 0 });
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.extend_from_slice(&self.stored_at_ms.to_be_bytes());
        out.extend_from_slice(&millis(self.initial_age).to_be_bytes());
        out.extend_from_slice(&millis(self.fresh_for).to_be_bytes());
        out.extend_from_slice(&millis(self.stale.revalidate).to_be_bytes());
        out.extend_from_slice(&millis(self.stale.if_error).to_be_bytes());
        out.extend_from_slice(&millis(self.stale.keep).to_be_bytes());
        out.extend_from_slice(&(self.surrogate.len() as u32).to_be_bytes());
        for s in &self.surrogate {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&(self.headers.len() as u32).to_be_bytes());
        for (k, v) in &self.headers {
            out.extend_from_slice(&(k.as_str().len() as u32).to_be_bytes());
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        match compressed {
            Some(c) => out.extend_from_slice(&c),
            None => out.extend_from_slice(&self.body),
        }
    }

    /// Reads an encoding made by [`WireEntry::encode`].
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated buffer, an unknown version or bad headers.
    pub fn decode(buf: &Bytes) -> Result<WireEntry, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        if r.u8()? != WIRE_VERSION {
            return Err(DecodeError("unknown format version"));
        }
        let flags = r.u8()?;
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError("bad status"))?;
        let stored_at_ms = r.u64()?;
        let initial_age = Duration::from_millis(r.u64()?);
        let fresh_for = Duration::from_millis(r.u64()?);
        let stale = StaleWindows {
            revalidate: Duration::from_millis(r.u64()?),
            if_error: Duration::from_millis(r.u64()?),
            keep: Duration::from_millis(r.u64()?),
        };
        let n = r.u32()? as usize;
        // Capacity from what the buffer can hold, not from what it claims.
        let mut surrogate = Vec::with_capacity(n.min(buf.len() / 4).min(1024));
        for _ in 0..n {
            let s = r.slice()?;
            surrogate.push(String::from_utf8(s.to_vec()).map_err(|_| DecodeError("bad scope"))?);
        }
        let n = r.u32()? as usize;
        let mut headers = HeaderMap::with_capacity(n.min(buf.len() / 8).min(1024));
        for _ in 0..n {
            let k = r.slice()?;
            let v = r.slice()?;
            let name = http::HeaderName::from_bytes(&k).map_err(|_| DecodeError("bad header name"))?;
            let value = http::HeaderValue::from_maybe_shared(v).map_err(|_| DecodeError("bad header value"))?;
            headers.append(name, value);
        }
        let rest = buf.slice(r.pos..);
        let body = if flags & FLAG_LZ4 != 0 {
            // The values would otherwise keep the whole compressed payload alive beside the
            // decompressed body.
            headers = compact_headers(headers);
            Bytes::from(lz4_flex::decompress_size_prepended(&rest).map_err(|_| DecodeError("bad lz4 body"))?)
        } else {
            rest
        };
        Ok(WireEntry {
            status,
            headers,
            body,
            stored_at_ms,
            initial_age,
            fresh_for,
            stale,
            surrogate,
        })
    }
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(DecodeError("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn slice(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        let start = self.pos;
        self.take(n)?;
        Ok(self.buf.slice(start..start + n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: Vec<u8>) -> WireEntry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        WireEntry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from(body),
            stored_at_ms: 1_764_000_000_000,
            initial_age: Duration::from_secs(3),
            fresh_for: Duration::from_secs(600),
            stale: StaleWindows {
                revalidate: Duration::from_secs(30),
                if_error: Duration::from_secs(300),
                keep: Duration::from_secs(600),
            },
            surrogate: vec!["t:course".to_string()],
        }
    }

    #[test]
    fn round_trips_small_and_compressible_bodies() {
        for body in [b"tiny".to_vec(), vec![b'a'; 64 * 1024]] {
            let e = sample(body);
            let mut buf = Vec::new();
            e.encode(&mut buf);
            if e.body.len() > COMPRESS_AT {
                assert!(buf.len() < e.body.len() / 4, "compressible bodies are compressed");
            }
            assert_eq!(WireEntry::decode(&Bytes::from(buf)).unwrap(), e);
        }
    }

    /// Found in review: the compacted map was sized by its value count, which `HeaderMap`
    /// refuses past 24,576, so an entry read back from Redis with an lz4 body and that many
    /// values of one field panicked instead of decoding.
    #[test]
    fn entries_with_many_repeated_values_round_trip() {
        let mut e = sample(vec![b'a'; 64 * 1024]);
        for _ in 0..30_000 {
            e.headers.append("x-multi", HeaderValue::from_static("v"));
        }
        let mut buf = Vec::new();
        e.encode(&mut buf);
        assert_eq!(WireEntry::decode(&Bytes::from(buf)).unwrap(), e);
    }

    /// Values sliced out of a large buffer (as hyper's parser makes them) come out in one
    /// buffer of their own, exactly their size, in order, duplicates and sensitivity kept.
    #[test]
    fn compacted_headers_hold_nothing_of_the_buffer_they_were_parsed_from() {
        let wire = Bytes::from(format!(
            "{}text/html{}ab{}",
            "x".repeat(40_000),
            "y".repeat(100),
            "z".repeat(100)
        ));
        let at = |a: usize, b: usize| HeaderValue::from_maybe_shared(wire.slice(a..b)).unwrap();
        let mut parsed = HeaderMap::new();
        parsed.insert("content-type", at(40_000, 40_009));
        parsed.append("x-multi", at(40_109, 40_110));
        parsed.append("x-multi", at(40_110, 40_111));
        let mut secret = at(40_110, 40_111);
        secret.set_sensitive(true);
        parsed.insert("x-secret", secret);
        let out = compact_headers(parsed.clone());
        assert_eq!(out, parsed);
        assert!(out["x-secret"].is_sensitive());
        let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        let mut next = None;
        for (_, v) in &out {
            let p = v.as_bytes().as_ptr() as usize;
            assert!(!range.contains(&p), "a value still points into the parse buffer");
            if let Some(expected) = next {
                assert_eq!(p, expected, "values are contiguous in one buffer");
            }
            next = Some(p + v.len());
        }
    }

    #[test]
    fn truncated_or_unknown_encodings_are_errors() {
        let mut buf = Vec::new();
        sample(b"x".to_vec()).encode(&mut buf);
        assert!(WireEntry::decode(&Bytes::from(buf[..10].to_vec())).is_err());
        buf[0] = 99;
        assert!(WireEntry::decode(&Bytes::from(buf)).is_err());
    }
}
