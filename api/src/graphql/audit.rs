use async_graphql::{Context, Object};
use postbridge_core::model::Page;
use postbridge_core::observe::audit::{self, AuditEntry, AuditQuery};
use uuid::Uuid;

use super::{caller, clone_auth_error, gql_error, request_auth, GqlResultExt};

#[derive(Default)]
pub struct AuditQueryRoot;

#[Object]
impl AuditQueryRoot {
    /// Configuration changes, newest first (tenant admins: their tenant; operators: the tenant named in
    /// X-Postbridge-Tenant, or every entry).
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        resource_type: Option<String>,
        resource_id: Option<Uuid>,
        actor: Option<String>,
        limit: Option<u64>,
        cursor: Option<Uuid>,
    ) -> async_graphql::Result<Page<AuditEntry>> {
        let (app, principal) = caller(ctx)?;
        let requested = match &request_auth(ctx)?.requested_tenant {
            Ok(requested) => *requested,
            Err(err) => return Err(gql_error(clone_auth_error(err))),
        };
        let query = AuditQuery { resource_type, resource_id, actor, limit, cursor };
        audit::list(&app, &principal, requested, query).await.gql()
    }
}
