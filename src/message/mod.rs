//! HTTP message pieces every layer shares: the body type, header hygiene, path normalisation.
//! A leaf: it imports nothing from the crate.
//!
//! # Layout
//! * [`body`]: the body type of answers (streamed, buffered, empty)
//! * [`headers`]: hop-by-hop and forwarding headers, surrogate tags, conditionals, `Age`
//! * [`path`]: request path normalisation (what is routed, keyed and forwarded)

pub mod body;
pub mod headers;
pub mod path;
