//! fulcrum-sync: the connection table and its replication between directors.
//!
//! [`conn`] holds the connection table the forwarding engine uses on every packet and whose
//! entries the sync stream replicates; the sync stream and the IPVS sync v1 codec come next.

pub mod conn;
