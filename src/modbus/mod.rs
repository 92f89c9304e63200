//! Modbus: register maps, value decoding, and the request plan per device.
//! Shared by `ingest` (the client) and `simulate` (the server).

pub mod map;
pub mod value;
