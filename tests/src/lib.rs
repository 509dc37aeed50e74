//! Helpers for the end-to-end tests: the sockfarm workload, and parsers for
//! what `ss`, `lsof` and `unixtrace --json` print.

pub mod farm;
pub mod tools;
