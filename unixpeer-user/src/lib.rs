//! unixtrace: who talks to whom over UNIX-domain sockets.
//!
//! Data flows one way: kernel → events → model → output.

pub mod btf;
pub mod capture;
pub mod events;
pub mod follow;
pub mod live;
pub mod privileges;
pub mod tracefs;
