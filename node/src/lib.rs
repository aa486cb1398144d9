//! fulcrum-node: the director daemon's library.
