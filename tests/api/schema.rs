//! The published contracts: schema.graphql, the OpenAPI document, the docs pages, and the migrations.

use postbridge_tests::{admin_database_url, create_database, spawn_app};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use sea_orm_migration::MigratorTrait;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn committed_schema_graphql_matches_the_schema_the_code_builds() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema.graphql");
    let committed = std::fs::read_to_string(path).expect("schema.graphql is committed");
    let built = postbridge_api::graphql::sdl();
    assert!(
        committed == built,
        "schema.graphql is out of date: run `cargo run -p postbridge-api -- print-schema > schema.graphql`"
    );
}

#[tokio::test]
async fn openapi_document_covers_every_rest_route() {
    let app = spawn_app().await;
    let doc = app.request(reqwest::Method::GET, "/openapi.json", None, None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let routes = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/auth/token", "post"),
        ("/v1/tenants", "get"),
        ("/v1/tenants", "post"),
        ("/v1/tenants/{id}", "get"),
        ("/v1/tenants/{id}", "patch"),
        ("/v1/tenants/{id}", "delete"),
        ("/v1/tenants/{id}/suspend", "post"),
        ("/v1/tenants/{id}/resume", "post"),
        ("/v1/api-keys", "get"),
        ("/v1/api-keys", "post"),
        ("/v1/api-keys/{id}", "get"),
        ("/v1/api-keys/{id}", "delete"),
        ("/v1/audit-log", "get"),
        ("/v1/events", "get"),
        ("/v1/events/{id}", "get"),
        ("/v1/token-configs", "get"),
        ("/v1/token-configs", "post"),
        ("/v1/token-configs/{id}", "get"),
        ("/v1/token-configs/{id}", "patch"),
        ("/v1/token-configs/{id}", "delete"),
        ("/v1/accounts", "get"),
        ("/v1/accounts", "post"),
        ("/v1/accounts/{id}", "get"),
        ("/v1/accounts/{id}", "patch"),
        ("/v1/accounts/{id}", "delete"),
        ("/v1/accounts/{id}/authorize", "post"),
        ("/v1/grants", "get"),
        ("/v1/grants/{id}", "get"),
        ("/v1/grants/{id}", "delete"),
        ("/v1/token-configs/expiring", "get"),
        ("/oauth/callback", "get"),
        ("/v1/accounts/{id}/test", "post"),
        ("/v1/accounts/{id}/messages", "get"),
        ("/v1/received-messages/{id}", "get"),
        ("/v1/received-messages/{id}/raw", "get"),
        ("/v1/received-messages/{id}/attachments/{index}", "get"),
        ("/v1/accounts/{id}/grant", "post"),
        ("/v1/messages", "post"),
        ("/v1/messages", "get"),
        ("/v1/messages/{id}", "get"),
        ("/v1/messages/{id}/cancel", "post"),
        ("/v1/messages/{id}/retry", "post"),
        ("/v1/messages/{id}/resolve", "post"),
        ("/v1/routing", "get"),
        ("/v1/webhooks", "get"),
        ("/v1/webhooks", "post"),
        ("/v1/webhooks/{id}", "get"),
        ("/v1/webhooks/{id}", "patch"),
        ("/v1/webhooks/{id}", "delete"),
        ("/v1/webhooks/{id}/rotate-secret", "post"),
        ("/v1/webhooks/{id}/deliveries", "get"),
        ("/v1/webhooks/{id}/attempts", "get"),
        ("/v1/webhooks/{id}/deliveries/{event_id}/redeliver", "post"),
        ("/v1/ops/overview", "get"),
        ("/v1/ops/credential-health", "get"),
        ("/v1/credential-health", "get"),
        ("/v1/ops/workers", "get"),
    ];
    for (path, method) in routes {
        assert!(doc.body["paths"][path][method].is_object(), "OpenAPI lacks {method} {path}");
    }
    let documented: usize =
        doc.body["paths"].as_object().expect("paths").values().map(|p| p.as_object().map_or(0, |m| m.len())).sum();
    assert_eq!(documented, routes.len(), "every documented operation is a real route and vice versa");
    assert!(doc.body["components"]["schemas"]["ErrorBody"].is_object());
    assert_eq!(doc.body["components"]["securitySchemes"]["bearer"]["scheme"], json!("bearer"));
}

#[tokio::test]
async fn docs_page_and_graphiql_are_served() {
    let app = spawn_app().await;
    let redirect = app.request(reqwest::Method::GET, "/docs", None, None, None).await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    let docs = app.request(reqwest::Method::GET, "/docs/", None, None, None).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.text.to_lowercase().contains("swagger"), "{}", docs.text);
    let graphiql = app.request(reqwest::Method::GET, "/graphql", None, None, None).await;
    assert_eq!(graphiql.status, StatusCode::OK);
    assert!(graphiql.text.to_lowercase().contains("graphiql"));
}

async fn public_tables(db: &sea_orm::DatabaseConnection) -> Vec<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT table_name::text AS t FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        ))
        .await
        .expect("list tables");
    rows.iter().map(|r| r.try_get::<String>("", "t").expect("name")).collect()
}

#[tokio::test]
async fn migrations_apply_and_revert_cleanly_on_an_empty_database() {
    let name = format!("{}{}", postbridge_tests::test_database_prefix(), Uuid::new_v4().simple());
    let db = create_database(&name).await;
    let tables = public_tables(&db).await;
    for expected in [
        "api_keys",
        "email_accounts",
        "events",
        "grants",
        "inbound_messages",
        "oauth_states",
        "outbound_messages",
        "tenants",
        "token_configs",
    ] {
        assert!(tables.iter().any(|t| t == expected), "{expected} missing after up: {tables:?}");
    }
    postbridge_migration::Migrator::down(&db, None).await.expect("down applies");
    assert_eq!(public_tables(&db).await, vec!["seaql_migrations".to_owned()]);
    postbridge_migration::Migrator::up(&db, None).await.expect("up applies again");
    assert_eq!(public_tables(&db).await.len(), tables.len());
    db.close().await.ok();
    let admin = Database::connect(admin_database_url()).await.expect("admin");
    admin.execute_unprepared(&format!("DROP DATABASE \"{name}\" WITH (FORCE)")).await.expect("drop");
}
