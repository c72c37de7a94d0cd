//! The Tidings benchmark tooling as a library, so the smoke test drives the same code.

pub mod abuse;
pub mod chart;
pub mod floor;
pub mod gen2;
pub mod load;
pub mod proc_stats;
pub mod receipts;
