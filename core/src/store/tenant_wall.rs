//! The database's own wall between tenants (row-level security), behind the `tenant_id` filter every service
//! query carries.
//!
//! Every tenant-owned table has a policy: a row is visible and writable only when its `tenant_id` is the
//! session's `postbridge.tenant`, or when the session is in the explicit operator-wide scope
//! (`postbridge.scope = 'all'`). The pool connects as (or switches to) a role that does not own the tables, so the
//! policies apply to it, and sets both values on every connection it hands out, from the task's [`DbScope`].
//!
//! An API request made with a tenant's credential is narrowed to that tenant as soon as it is authenticated
//! ([`narrow_request`]): from then on even a query that forgot its tenant filter sees only that tenant's rows.
//! Each worker job runs in the scope of the tenant owning its row: the job carries an id, [`tenant_of`] looks the
//! owner up operator-wide, and the job itself runs under [`in_tenant`]. Operator-wide work (authentication itself,
//! the ops views, the scheduler's claims, the background loops) runs in [`DbScope::System`] explicitly.

use crate::store::ids::{AccountId, GrantId, OutboundMessageId, TenantId, WebhookEndpointId};
use std::cell::Cell;
use std::future::Future;

use sea_orm::{ConnectOptions, ConnectionTrait, DatabaseConnection, DbErr, Statement};
use uuid::Uuid;

/// Which rows the database lets the current task see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbScope {
    /// Operator-wide: every tenant's rows (authentication, ops views, scheduler, worker jobs).
    System,
    /// One tenant's rows only.
    Tenant(Uuid),
}

tokio::task_local! {
    /// Set per API request (starting as `System`, narrowed once a tenant credential is authenticated) and per
    /// explicit `in_tenant`/`system` block.
    static SCOPE: Cell<DbScope>;
}

/// Runs `work` seeing only `tenant_id`'s rows.
pub async fn in_tenant<F: Future>(tenant_id: TenantId, work: F) -> F::Output {
    SCOPE.scope(Cell::new(DbScope::Tenant(tenant_id.into())), work).await
}

/// Runs `work` operator-wide (the explicit path for cross-tenant reads and writes).
pub async fn system<F: Future>(work: F) -> F::Output {
    SCOPE.scope(Cell::new(DbScope::System), work).await
}

/// Runs one API request: operator-wide until [`narrow_request`] names its tenant.
pub async fn request<F: Future>(work: F) -> F::Output {
    system(work).await
}

/// Narrows the current request to one tenant for the rest of it. Outside a request or explicit scope it does
/// nothing (there is nothing to narrow).
pub fn narrow_request(tenant_id: TenantId) {
    let _ = SCOPE.try_with(|scope| scope.set(DbScope::Tenant(tenant_id.into())));
}

/// Runs `poll` in `scope`, then keeps the scope as `poll` left it (an operator's request narrowed to the tenant it
/// named stays narrowed): for work polled outside a request's own task, such as an operation on a WebSocket.
pub fn poll_within<T>(scope: &mut DbScope, poll: impl FnOnce() -> T) -> T {
    SCOPE.sync_scope(Cell::new(*scope), || {
        let polled = poll();
        *scope = current();
        polled
    })
}

/// The current task's scope. Tasks outside any scope (background loops, the scheduler) are operator-wide: they
/// are Postbridge's own, never a tenant's request.
pub fn current() -> DbScope {
    SCOPE.try_with(Cell::get).unwrap_or(DbScope::System)
}

/// The row a worker job carries the id of; the job runs in the scope of the tenant owning that row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobRoot {
    Account(AccountId),
    OutboundMessage(OutboundMessageId),
    WebhookEndpoint(WebhookEndpointId),
    Grant(GrantId),
}

impl JobRoot {
    /// The query finding the row's tenant. Table names are fixed here, never taken from input.
    fn tenant_query(self) -> (&'static str, sea_orm::Value) {
        match self {
            JobRoot::Account(id) => ("SELECT tenant_id FROM email_accounts WHERE id = $1", id.into()),
            JobRoot::OutboundMessage(id) => ("SELECT tenant_id FROM outbound_messages WHERE id = $1", id.into()),
            JobRoot::WebhookEndpoint(id) => ("SELECT tenant_id FROM webhook_endpoints WHERE id = $1", id.into()),
            JobRoot::Grant(id) => ("SELECT tenant_id FROM grants WHERE id = $1", id.into()),
        }
    }
}

/// The tenant owning a job's row, looked up operator-wide; `None` when the row is gone (the job has nothing left
/// to do).
pub async fn tenant_of(db: &DatabaseConnection, root: JobRoot) -> Result<Option<TenantId>, DbErr> {
    let (sql, id) = root.tenant_query();
    let statement = Statement::from_sql_and_values(db.get_database_backend(), sql, [id]);
    let row = system(db.query_one_raw(statement)).await?;
    row.map(|row| row.try_get::<TenantId>("", "tenant_id")).transpose()
}

/// The `set_config` values for a scope: (`postbridge.scope`, `postbridge.tenant`).
fn settings_of(scope: DbScope) -> (&'static str, String) {
    match scope {
        DbScope::System => ("all", String::new()),
        DbScope::Tenant(id) => ("tenant", id.to_string()),
    }
}

async fn apply(conn: &mut sqlx::postgres::PgConnection, scope: DbScope) -> Result<(), sqlx::Error> {
    let (kind, tenant) = settings_of(scope);
    sqlx::query("SELECT set_config('postbridge.scope', $1, false), set_config('postbridge.tenant', $2, false)")
        .bind(kind)
        .bind(tenant)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Installs the wall on a pool: new connections switch to `role` (unless empty) and every connection handed out
/// carries the acquiring task's scope. Setting the scope also proves the connection alive, so the pool's own ping
/// before each acquire is left out.
pub fn install(options: &mut ConnectOptions, role: Option<String>) {
    options.test_before_acquire(false);
    options.map_sqlx_postgres_before_acquire(|conn, _meta| {
        let scope = current();
        Box::pin(async move { apply(conn, scope).await.map(|_| true) })
    });
    options.map_sqlx_postgres_pool_opts(move |pool| {
        let role = role.clone();
        pool.after_connect(move |conn, _meta| {
            let role = role.clone();
            let scope = current();
            Box::pin(async move {
                if let Some(role) = role {
                    // A quoted identifier: the role name comes from configuration, never from a request.
                    let quoted = format!("SET ROLE \"{}\"", role.replace('"', "\"\""));
                    sqlx::raw_sql(sqlx::AssertSqlSafe(quoted)).execute(&mut *conn).await?;
                }
                apply(conn, scope).await
            })
        })
    });
}
