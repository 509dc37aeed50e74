//! unixtrace: who talks to whom over UNIX-domain sockets.
//!
//! Data flows one way: kernel → events → model → output.
