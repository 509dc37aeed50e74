//! unixtrace: who talks to whom over UNIX-domain sockets.
//!
//! Data flows one way: kernel → events → model → output.

pub mod btf;
pub mod capture;
pub mod cli;
pub mod dbus;
pub mod diag;
pub mod events;
pub mod filter;
pub mod follow;
pub mod holders;
pub mod identity;
pub mod model;
pub mod netns;
pub mod output;
pub mod payload;
pub mod pcapng;
pub mod privileges;
pub mod snapshot;
pub mod timeline;
pub mod tracefs;
