//! The userspace forwarding engine.

pub mod afpacket;
pub mod filter;
pub mod neigh;
pub mod sched;
pub mod services;
