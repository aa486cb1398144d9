//! Generated protobuf and gRPC code for Fulcrum. No hand-written logic lives here.

/// The public control API: cluster and configuration services.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fulcrum.v1");
}

/// The internal Raft transport between `fulcrumd` nodes.
pub mod raft {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fulcrum.raft.v1");
}

/// Connection-table replication between directors.
pub mod sync {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fulcrum.sync.v1");
}
