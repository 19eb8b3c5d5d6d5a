use crate::Column;

/// Everything that can be wrong with data handed to the schema layer.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid session id {value:?}: expected a UUID such as 0192f0c1-...")]
    InvalidSessionId { value: String },
    #[error("unknown {vocabulary} {value:?}")]
    UnknownName { vocabulary: &'static str, value: String },
    #[error("column `{column}` is required for kind `{kind}` but is missing")]
    MissingColumn { column: &'static str, kind: String },
    #[error("column `{column}`: {problem}")]
    BadValue { column: &'static str, problem: String },
    #[error("canonical encoding: {0}")]
    Canonical(String),
    #[error("arrow: {0}")]
    Arrow(String),
}

impl SchemaError {
    pub(crate) fn missing(column: Column, kind: &str) -> Self {
        SchemaError::MissingColumn { column: column.name(), kind: kind.to_string() }
    }

    pub(crate) fn bad(column: Column, problem: impl Into<String>) -> Self {
        SchemaError::BadValue { column: column.name(), problem: problem.into() }
    }
}
