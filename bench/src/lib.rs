//! Pieces shared by the Cairn benchmarks (`cairn-bench`, `cairn-attack`): a simulated
//! device on a real websocket ([`device`]) and the servers under test run as child
//! processes ([`server`]).

#![warn(missing_docs)]

pub mod device;
pub mod server;
