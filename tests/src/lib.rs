//! Helpers for the end-to-end tests: the sockfarm workload, parsers for what
//! `ss`, `lsof` and `unixtrace --json` print, and running the real tracer
//! against real child processes.

pub mod farm;
pub mod tools;
pub mod tracer;
