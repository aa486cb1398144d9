//! fulcrum-node: the director daemon's library — the config model, the replicated state
//! machine, Raft storage and transport, the cluster handle and the gRPC control API.

pub mod api;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod fsutil;
pub mod metrics;
pub mod model;
pub mod raft;
pub mod replication;
pub mod state;
pub mod vip;
