//! How Raft messages travel inside `RaftPayload.data`: JSON. openraft's types carry serde
//! attributes (`skip_serializing_if`) that break non-self-describing formats, and the messages
//! are configuration-rate, so a self-describing format is the safe choice.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(|e| Status::internal(format!("encode: {e}")))
}

pub fn decode<T: DeserializeOwned>(data: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(data).map_err(|e| Status::invalid_argument(format!("decode: {e}")))
}
