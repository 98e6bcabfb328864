//! Core of artifactstore: domain model, validation, manifest codec, storage traits and the
//! [`Registry`] facade. Nothing here knows about HTTP; the server and the CLI sit on top.

pub mod blob_write;
pub mod claim;
pub mod digest;
pub mod error;
pub mod gc;
pub mod ids;
pub mod lease;
pub mod lifecycle;
pub mod limits;
pub mod manifest;
pub mod model;
pub mod oci;
#[cfg(feature = "openapi")]
mod openapi;
pub mod quota;
pub mod registry;
pub mod retention;
pub mod storage;
pub mod timestamp;
pub mod validate;

pub use digest::{Sha256Digest, Sha256Hasher};
pub use error::{FieldError, RegistryError};
pub use ids::{FileId, PackageId, UploadId};
pub use model::*;
pub use registry::{INLINE_FILE_BYTES, Registry, RegistryConfig};
pub use timestamp::Timestamp;
