//! Where release state, backend overrides and history are kept: written temp + fsync +
//! rename, so a failed write leaves the old state intact.

pub mod store;
