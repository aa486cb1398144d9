//! The replicated state machine: the configuration every node holds, the commands that change
//! it, and the changes they make. Pure and deterministic: no I/O, clocks or randomness, and
//! only ordered maps, so the same commands in the same order give the same state everywhere.

mod apply;
mod change;
mod command;
mod diff;
mod error;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{ClusterConfig, NodeInfo};

pub use change::{Change, ChangeOp, ObjectKind, parse_real_key, real_key};
pub use command::Command;
pub use diff::diff;
pub use error::{ErrorKind, StateError};

/// Raft members by node id, as the membership config holds them.
pub type Members = BTreeMap<u64, NodeInfo>;

/// The data every node holds; a snapshot captures it whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub config: ClusterConfig,
    /// Who owns each VIP group, as the leader assigned it (not part of the declarative
    /// config: `export` does not show it, `apply` does not change it).
    #[serde(default)]
    pub owners: BTreeMap<String, VipOwner>,
}

/// A VIP group's assignment. `epoch` grows with every change, so a decision made on a stale
/// view (an old leader's) is refused at apply time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipOwner {
    pub owner: Option<u64>,
    pub epoch: u64,
}

impl ClusterState {
    pub fn new(config: ClusterConfig) -> Self {
        Self {
            config,
            owners: BTreeMap::new(),
        }
    }

    /// The assignment of `group` (none yet: owner `None`, epoch 0).
    pub fn owner(&self, group: &str) -> VipOwner {
        self.owners.get(group).copied().unwrap_or_default()
    }
}
