//! The MLLP protocol: frame codec and a client (used by `ferry send`, the load generator and tests).

pub mod client;
pub mod codec;
