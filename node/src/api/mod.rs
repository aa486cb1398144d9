//! The public gRPC control API (`fulcrum.v1.Cluster`, `fulcrum.v1.Config`).

mod cluster_service;
mod config_service;
mod connections_service;

pub use cluster_service::ClusterApi;
pub use config_service::ConfigApi;
pub use connections_service::ConnectionsApi;

use tonic::Status;

use crate::cluster::ClusterError;
use crate::state::ErrorKind;

/// Maps cluster errors to the gRPC code a client can act on.
pub fn status(e: ClusterError) -> Status {
    match e {
        ClusterError::Rejected { kind, message } => match kind {
            ErrorKind::Invalid => Status::invalid_argument(message),
            ErrorKind::NotFound => Status::not_found(message),
            ErrorKind::AlreadyExists => Status::already_exists(message),
            ErrorKind::FailedPrecondition => Status::failed_precondition(message),
        },
        ClusterError::Unavailable(m) => Status::unavailable(m),
        ClusterError::NotLeader(l) => {
            Status::unavailable(format!("not the leader (leader: {l:?}); retry"))
        }
        ClusterError::Internal(m) => Status::internal(m),
    }
}
