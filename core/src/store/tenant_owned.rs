//! Finders that cannot forget the tenant (svix's `secure_find` pattern). Every table a tenant owns is read and
//! changed through `in_tenant`, `update_in_tenant`, `delete_in_tenant` or [`find_in_tenant`], so no query spells
//! its tenant filter by hand. Row-level security (`tenant_wall`) stands behind this as a second wall.

use sea_orm::{ColumnTrait, ConnectionTrait, DeleteMany, EntityTrait, PrimaryKeyTrait, QueryFilter, Select, UpdateMany};

use crate::error::{AppError, AppResult};
use crate::store::entities::{api_key, email_account, grant, inbound_message, oauth_state, outbound_message, token_config};
use crate::store::ids::TenantId;

/// A table whose rows belong to one tenant each.
pub trait TenantOwned: EntityTrait {
    /// What a missing row is called in the 404 (`grant not found`).
    const RESOURCE: &'static str;

    fn tenant_column() -> Self::Column;

    /// Every row of the tenant's.
    fn in_tenant(tenant_id: TenantId) -> Select<Self> {
        Self::find().filter(Self::tenant_column().eq(tenant_id))
    }

    /// An update of the tenant's rows (narrow it further with filters).
    fn update_in_tenant(tenant_id: TenantId) -> UpdateMany<Self> {
        Self::update_many().filter(Self::tenant_column().eq(tenant_id))
    }

    /// A delete of the tenant's rows (narrow it further with filters).
    fn delete_in_tenant(tenant_id: TenantId) -> DeleteMany<Self> {
        Self::delete_many().filter(Self::tenant_column().eq(tenant_id))
    }
}

/// One row of the tenant's by its id; another tenant's row is as missing as one that never was (404).
pub async fn find_in_tenant<E, C>(
    db: &C,
    tenant_id: TenantId,
    id: <E::PrimaryKey as PrimaryKeyTrait>::ValueType,
) -> AppResult<E::Model>
where
    E: TenantOwned,
    C: ConnectionTrait,
{
    E::find_by_id(id).filter(E::tenant_column().eq(tenant_id)).one(db).await?.ok_or(AppError::not_found(E::RESOURCE))
}

macro_rules! tenant_owned {
    ($($module:ident => $resource:literal),+ $(,)?) => {$(
        impl TenantOwned for $module::Entity {
            const RESOURCE: &'static str = $resource;

            fn tenant_column() -> Self::Column {
                $module::Column::TenantId
            }
        }
    )+};
}

tenant_owned!(
    api_key => "api key",
    token_config => "token configuration",
    email_account => "account",
    grant => "grant",
    oauth_state => "authorization",
    inbound_message => "message",
    outbound_message => "message",
);
