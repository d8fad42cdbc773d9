//! The store's typed errors: the control plane turns each into one HTTP status, so the
//! variants follow what a caller can do about them, not what the database said.

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named object (or one it refers to) does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// The object exists already, or is still referenced by others.
    #[error("{0}")]
    Conflict(String),
    /// The input breaks a rule of the schema (a bad name, a number out of range).
    #[error("{0}")]
    Invalid(String),
    /// The database failed; details are for the log, not for API clients.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    pub(crate) fn not_found(kind: &'static str, name: &str) -> Self {
        StoreError::NotFound {
            kind,
            name: name.to_owned(),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Db(sqlx::Error::Migrate(Box::new(e)))
    }
}
