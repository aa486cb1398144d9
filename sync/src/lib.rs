//! fulcrum-sync: the connection table and its replication between directors.
//!
//! [`conn`] holds the connection table the forwarding engine uses on every packet and whose
//! entries the sync stream replicates; [`stream`] replicates it between directors over gRPC.
//! [`ipvs`] speaks the kernel's IPVS sync protocol (v1, and v0 on receive).

pub mod conn;
pub mod ipvs;
pub mod stream;
