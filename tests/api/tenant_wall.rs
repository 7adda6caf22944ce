//! The database's own wall between tenants: row-level security on every tenant-owned table, a role that owns
//! nothing, and each request narrowed to its credential's tenant.

use postbridge_core::access::auth::authenticate;
use postbridge_core::store::entities::{email_account, tenant};
use postbridge_core::store::tenant_wall;
use std::future::Future as _;

use postbridge_tests::{spawn_app, TestApp};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Statement};
use serde_json::json;
use uuid::Uuid;

async fn tenant_with_accounts(app: &TestApp, count: usize) -> (Uuid, String) {
    let (tenant, admin) = app.tenant_with_admin().await;
    for n in 0..count {
        let reply = app
            .post(
                "/v1/accounts",
                &admin,
                json!({"protocol": "imap", "auth": "password", "login": format!("u{n}"), "password": "p", "host": "mail.example.com"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    (Uuid::parse_str(&tenant).expect("tenant id"), admin)
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let row = app.ctx.db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)).await.expect("query").expect("a row");
    row.try_get_by_index::<i64>(0).expect("a count")
}

#[tokio::test]
async fn a_query_without_a_tenant_filter_sees_only_the_scopes_tenant() {
    let app = spawn_app().await;
    let (a, _) = tenant_with_accounts(&app, 2).await;
    let (b, _) = tenant_with_accounts(&app, 3).await;

    let in_a = tenant_wall::in_tenant(a.into(), email_account::Entity::find().all(&app.ctx.db)).await.expect("query");
    assert_eq!(in_a.len(), 2);
    assert!(in_a.iter().all(|row| row.tenant_id == a));
    let tenants = tenant_wall::in_tenant(b.into(), tenant::Entity::find().all(&app.ctx.db)).await.expect("query");
    assert_eq!(tenants.iter().map(|t| t.id).collect::<Vec<_>>(), vec![b]);
    assert_eq!(tenant_wall::in_tenant(a.into(), count(&app, "SELECT count(*) FROM email_accounts")).await, 2);
    assert_eq!(tenant_wall::in_tenant(b.into(), count(&app, "SELECT count(*) FROM api_keys")).await, 1);
    // The explicit operator-wide path sees everything.
    assert_eq!(tenant_wall::system(count(&app, "SELECT count(*) FROM email_accounts")).await, 5);

    // Writes are walled too: another tenant's rows cannot be changed, nor rows written into another tenant.
    let changed = tenant_wall::in_tenant(a.into(), async {
        app.ctx.db.execute_unprepared("UPDATE email_accounts SET name = 'taken' WHERE true").await.expect("update")
    })
    .await;
    assert_eq!(changed.rows_affected(), 2);
    assert_eq!(count(&app, "SELECT count(*) FROM email_accounts WHERE name = 'taken'").await, 2);
    let smuggled = tenant_wall::in_tenant(a.into(), async {
        app.ctx
            .db
            .execute_unprepared(&format!(
                "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_hash, role) \
                 VALUES ('{}', '{b}', 'smuggled', 'abcdefabcdef', 'x', 'admin')",
                Uuid::now_v7()
            ))
            .await
    })
    .await;
    let error = smuggled.expect_err("a row of another tenant is refused");
    assert!(error.to_string().contains("row-level security"), "{error}");
}

#[tokio::test]
async fn a_tenant_credential_narrows_its_request_to_its_tenant() {
    let app = spawn_app().await;
    let (a, admin_a) = tenant_with_accounts(&app, 1).await;
    tenant_with_accounts(&app, 2).await;
    let seen = tenant_wall::request(async {
        let before = email_account::Entity::find().all(&app.ctx.db).await.expect("query").len();
        let principal = authenticate(&app.ctx, &admin_a).await.expect("authenticated");
        let after = email_account::Entity::find().all(&app.ctx.db).await.expect("query");
        (before, principal, after)
    })
    .await;
    assert_eq!(seen.0, 3, "authentication itself looks across tenants");
    assert_eq!(seen.1.tenant_id, Some(Into::into(a)));
    assert_eq!(seen.2.len(), 1);
    assert_eq!(seen.2[0].tenant_id, a);
    // An operator's request stays operator-wide.
    let operator = tenant_wall::request(async {
        authenticate(&app.ctx, &app.operator_token()).await.expect("operator");
        email_account::Entity::find().all(&app.ctx.db).await.expect("query").len()
    })
    .await;
    assert_eq!(operator, 3);
}

#[tokio::test]
async fn work_polled_in_a_scope_outside_any_request_sees_that_scope_and_keeps_its_narrowing() {
    // A WebSocket's operations are polled by the connection's task, not a request's: each poll runs in its scope.
    let app = spawn_app().await;
    let (a, admin_a) = tenant_with_accounts(&app, 1).await;
    tenant_with_accounts(&app, 2).await;
    let mut scope = tenant_wall::DbScope::Tenant(a);
    let mut query = std::pin::pin!(email_account::Entity::find().all(&app.ctx.db));
    let seen = std::future::poll_fn(|cx| tenant_wall::poll_within(&mut scope, || query.as_mut().poll(cx))).await;
    let seen = seen.expect("query");
    assert_eq!((seen.len(), seen[0].tenant_id), (1, a.into()), "only the scope's tenant");

    // Work that authenticates narrows itself, and stays narrowed at its next poll.
    let mut scope = tenant_wall::DbScope::System;
    let mut work = std::pin::pin!(async {
        authenticate(&app.ctx, &admin_a).await.expect("authenticated");
        tokio::task::yield_now().await;
        email_account::Entity::find().all(&app.ctx.db).await.expect("query").len()
    });
    let seen = std::future::poll_fn(|cx| tenant_wall::poll_within(&mut scope, || work.as_mut().poll(cx))).await;
    assert_eq!((seen, scope), (1, tenant_wall::DbScope::Tenant(a)));
}

#[tokio::test]
async fn every_tenant_owned_table_has_the_policy_and_the_app_owns_none() {
    let app = spawn_app().await;
    let unwalled = count(
        &app,
        "SELECT count(*) FROM information_schema.columns col JOIN pg_class c ON c.relname = col.table_name \
         WHERE col.table_schema = 'public' AND col.column_name = 'tenant_id' AND c.relkind = 'r' \
           AND (NOT c.relrowsecurity OR NOT EXISTS (SELECT 1 FROM pg_policies p WHERE p.tablename = col.table_name AND p.policyname = 'tenant_wall'))",
    )
    .await;
    assert_eq!(unwalled, 0, "every table with a tenant_id has row-level security and the tenant_wall policy");
    assert!(count(&app, "SELECT count(*) FROM pg_policies WHERE policyname = 'tenant_wall'").await >= 10);
    let role = app
        .ctx
        .db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT current_user::text"))
        .await
        .expect("query")
        .expect("row")
        .try_get_by_index::<String>(0)
        .expect("text");
    assert_eq!(role, "postbridge_app");
    assert_eq!(count(&app, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user").await, 0);
}
