//! Tenants (operators) and the caller itself.

use async_graphql::{Context, Object, SimpleObject};
use postbridge_core::access::tenants;
use postbridge_core::access::tenants::{CreateTenant, Tenant, UpdateTenant};
use postbridge_core::model::{Page, Role, TenantStatus};
use uuid::Uuid;

use super::{caller, page, GqlResultExt};

/// The authenticated caller.
#[derive(SimpleObject)]
pub struct Me {
    pub subject: String,
    pub role: Role,
    pub tenant_id: Option<Uuid>,
}

#[derive(Default)]
pub struct TenantsQuery;

#[Object]
impl TenantsQuery {
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Me> {
        let (_, p) = caller(ctx)?;
        Ok(Me { subject: p.subject, role: p.role, tenant_id: p.tenant_id.map(Into::into) })
    }

    /// All tenants (operator).
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn tenants(&self, ctx: &Context<'_>, limit: Option<u64>, cursor: Option<Uuid>) -> async_graphql::Result<Page<Tenant>> {
        let (app, p) = caller(ctx)?;
        tenants::list(&app, &p, page(limit, cursor)).await.gql()
    }

    async fn tenant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Tenant> {
        let (app, p) = caller(ctx)?;
        tenants::get(&app, &p, id.into()).await.gql()
    }
}

#[derive(Default)]
pub struct TenantsMutation;

#[Object]
impl TenantsMutation {
    async fn create_tenant(&self, ctx: &Context<'_>, input: CreateTenant) -> async_graphql::Result<Tenant> {
        let (app, p) = caller(ctx)?;
        tenants::create(&app, &p, input).await.gql()
    }

    async fn update_tenant(&self, ctx: &Context<'_>, id: Uuid, input: UpdateTenant) -> async_graphql::Result<Tenant> {
        let (app, p) = caller(ctx)?;
        tenants::update(&app, &p, id.into(), input).await.gql()
    }

    async fn suspend_tenant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Tenant> {
        let (app, p) = caller(ctx)?;
        tenants::set_status(&app, &p, id.into(), TenantStatus::Suspended).await.gql()
    }

    async fn resume_tenant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Tenant> {
        let (app, p) = caller(ctx)?;
        tenants::set_status(&app, &p, id.into(), TenantStatus::Active).await.gql()
    }

    /// Returns the deleted tenant's id.
    async fn delete_tenant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Uuid> {
        let (app, p) = caller(ctx)?;
        tenants::delete(&app, &p, id.into()).await.gql()?;
        Ok(id)
    }
}
