//! Rendering a snapshot: a table for people, JSON Lines for programs.

pub mod escape;
pub mod json;
pub(crate) mod jsonw;
pub mod table;
pub mod term;

/// The `schema` every JSON line carries (docs/json-schema.md): raised when
/// a field changes meaning or goes away, not when one is added, so a log
/// pipeline can route or refuse lines by it.
pub const JSON_SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write output")]
    Io(#[from] std::io::Error),
    #[error("cannot encode JSON")]
    Json(#[from] serde_json::Error),
}

impl OutputError {
    /// The reader went away (`unixtrace | head`): not worth an error.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            Self::Io(e) => e.kind() == std::io::ErrorKind::BrokenPipe,
            Self::Json(e) => e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe),
        }
    }
}
