//! Storage tiers. Today the memory tier; the shared Redis tier joins it behind the same facade.

pub mod memory;
pub mod redis;
