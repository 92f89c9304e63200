//! Modbus: register maps, value decoding, the request plan per device, and
//! a pipelining TCP client. Shared by `ingest` (the client) and `simulate`
//! (the server).

pub mod client;
pub mod map;
pub mod sunspec;
pub mod value;
