//! fulcrum-sync: the connection table and its replication between directors.
//!
//! The connection table, the sync stream and the IPVS sync v1 codec arrive with the
//! forwarding-engine and connection-sync work; the foundation only reserves the crate.
