//! unixtrace: who talks to whom over UNIX-domain sockets.
//!
//! Data flows one way: kernel → events → model → output.

pub mod cli;
pub mod diag;
pub mod filter;
pub mod holders;
pub mod model;
pub mod netns;
pub mod output;
pub mod snapshot;
