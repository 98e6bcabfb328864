//! The end of a package's life shared by requests and retention: deletion, with its event.

use crate::error::{RegistryError, Resource, Result};
use crate::ids::PackageId;
use crate::model::*;
use crate::storage::{MetadataStore, StoreError};

/// Deletes a package (open or finalized) that is not held, with its `package.deleted` event
/// saying why; bytes no remaining file uses are left to garbage collection.
pub(crate) async fn delete(
    meta: &dyn MetadataStore,
    tenant: &str,
    id: PackageId,
    reason: DeleteReason,
) -> Result<()> {
    let event: EventFor = Box::new(move |p: &Package| {
        let mut event = new_event(EventType::PackageDeleted, &p.tenant, p.id, &());
        event.data = serde_json::json!({
            "reason": reason.as_str(),
            "file_count": p.file_count,
            "total_size": p.total_size,
        });
        event
    });
    match meta.delete_package(tenant, id, event).await {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound) => Err(RegistryError::NotFound(Resource::Package)),
        Err(StoreError::Held) => Err(RegistryError::PackageHeld),
        Err(e) => Err(e.into()),
    }
}
