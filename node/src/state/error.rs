//! Why a command was refused, with a kind the API maps to a gRPC code.

use serde::{Deserialize, Serialize};

use crate::model::ModelError;

/// The class of a refusal; the API maps it 1:1 to a gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The command itself is wrong (`InvalidArgument`).
    Invalid,
    /// It names a service, real server or VIP group that does not exist (`NotFound`).
    NotFound,
    /// It adds something that exists already (`AlreadyExists`).
    AlreadyExists,
    /// It is valid but conflicts with the current state or membership, e.g. a VIP group
    /// still in use or a port taken by another service (`FailedPrecondition`).
    FailedPrecondition,
}

/// A refused command. Serializable because it travels back from the leader's state machine
/// to the node that proposed the command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct StateError {
    kind: ErrorKind,
    message: String,
}

impl StateError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }

    /// A model error about how the command fits the current state, not about the command.
    pub(crate) fn conflict(err: ModelError) -> Self {
        Self::failed_precondition(err.message())
    }
}

impl From<ModelError> for StateError {
    fn from(err: ModelError) -> Self {
        Self::invalid(err.message())
    }
}
