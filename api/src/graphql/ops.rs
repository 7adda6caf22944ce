//! The operator overview, credential health and worker processes as a graph.

use async_graphql::{Context, Object};
use postbridge_core::jobs::workers::{self, WorkerProcess};
use postbridge_core::model::ExpiringQuery;
use postbridge_core::observe::credential_health::{self, CredentialHealth};
use postbridge_core::observe::overview::{self, OpsOverview, OverviewQuery};
use uuid::Uuid;

use super::{caller, request_auth, tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct OpsQuery;

#[Object]
impl OpsQuery {
    /// Per tenant: accounts by state, grants needing re-consent, client secrets expiring, the outbox, poll lag; and the
    /// accounts failing longest (`limit`, default 20). Operators see every tenant (or `tenantId`); tenant admins and
    /// viewers their own.
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn ops_overview(
        &self,
        ctx: &Context<'_>,
        limit: Option<u64>,
        tenant_id: Option<Uuid>,
    ) -> async_graphql::Result<OpsOverview> {
        let (app, p) = caller(ctx)?;
        overview::overview(&app, &p, OverviewQuery { limit, tenant_id }).await.gql()
    }

    /// Grants and token configurations broken or expected to break within `withinDays` (default 30), broken first,
    /// then soonest. Operators without the tenant header get every tenant's.
    async fn credential_health(
        &self,
        ctx: &Context<'_>,
        within_days: Option<i64>,
    ) -> async_graphql::Result<Vec<CredentialHealth>> {
        let query = ExpiringQuery { within_days };
        let (app, p) = caller(ctx)?;
        let names_tenant = matches!(request_auth(ctx)?.requested_tenant, Ok(Some(_)));
        if p.is_operator() && !names_tenant {
            return credential_health::for_operator(&app, &p, query).await.gql();
        }
        let (app, scope) = tenant_scope(ctx).await?;
        credential_health::for_tenant(&app, &scope, query).await.gql()
    }

    /// Worker processes: live ones and those that stopped or died in the last 24 hours (operator).
    async fn ops_workers(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<WorkerProcess>> {
        let (app, p) = caller(ctx)?;
        workers::list(&app, &p).await.gql()
    }
}
