//! Where release state, backend overrides and history are kept: the [`store::StateStore`]
//! trait and its file store (written temp + fsync + rename, so a failed write leaves the old
//! state intact).

pub mod config_files;
pub mod etcd;
#[cfg(test)]
pub mod memory;
pub mod store;
