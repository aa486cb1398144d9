//! The connection table: one entry per tracked flow or persistence template, shared by the
//! forwarding engine's packet threads, the sweeper, the sync stream and `conn list`.
//!
//! - [`ConnEntry`] / [`ConnKey`] / [`ReplyKey`]: the compact entry and its lookup keys
//!   (`entry`, `key`, `addr`).
//! - [`state`]: IPVS protocol states and the TCP state machine; [`Timeouts`].
//! - [`ConnTable`]: the sharded, preallocated table (`table`, `shard`, `index`, `hash`).
//! - [`CoarseClock`]: the seconds clock entry deadlines are measured on.

mod addr;
mod clock;
mod entry;
mod hash;
mod index;
mod key;
mod shard;
pub mod state;
mod table;
mod timeouts;

#[cfg(test)]
mod tests;

pub use addr::{Family, raw_to_ip};
pub use clock::CoarseClock;
pub use entry::{ConnEntry, FwdMethod, flags, refresh_period};
pub use key::{ConnKey, PersistKind, Persistence, ReplyKey, TemplateTarget};
pub use state::{Activity, Direction, SctpState, StateChange, TcpState, proto, tcp_flags};
pub use table::{
    ConfigError, ConnTable, InsertError, MAX_SHARDS, MemoryLayout, SnapshotCursor, SweepReport,
    TableConfig, TableStats,
};
pub use timeouts::Timeouts;
