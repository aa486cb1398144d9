//! The userspace forwarding engine.

pub mod afpacket;
pub mod engine;
pub mod filter;
pub mod forward;
pub mod neigh;
pub mod packet;
pub mod sched;
pub mod services;
