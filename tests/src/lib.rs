//! Helpers for the end-to-end tests: the sockfarm workload, the system calls
//! it and the tests' own children share, parsers for what `ss`, `lsof` and
//! `unixtrace --json` print, and running the real tracer against real child
//! processes.

pub mod capture;
pub mod farm;
pub mod sys;
pub mod tools;
pub mod tracer;
