//! wattmesh-store: everything the control plane persists, behind one [`Store`] trait.
//!
//! Layout:
//! - [`Store`] (`store.rs`): the async trait the control plane holds as `Arc<dyn Store>`.
//! - [`records`]: the rows it returns and the inputs it takes, in domain/proto types.
//! - [`StoreError`] (`error.rs`): typed failures the API maps to HTTP statuses.
//! - [`SqliteStore`] (`sqlite/`): the embedded default, a SQLite file in WAL mode.
//! - `migrations/`: one set of plain SQL migrations, embedded in the binary and written to be
//!   portable so the PostgreSQL implementation (not written yet) can run the same files.
//!
//! **API boundary:** the store holds no policy. It validates names and enforces uniqueness and
//! references; what to place where, and who may call what, is decided by the control plane.
//! **No plaintext secrets:** tokens and API keys arrive here already hashed.

mod error;
pub mod records;
mod sqlite;
mod store;

pub use error::StoreError;
pub use records::*;
pub use sqlite::SqliteStore;
pub use store::Store;
