use actix_web::{web, HttpResponse};
use postbridge_core::connect::accounts;
use postbridge_core::connect::accounts::Account;
use postbridge_core::connect::accounts::CreateAccount;
use postbridge_core::connect::accounts::UpdateAccount;
use postbridge_core::connect::grants;
use postbridge_core::connect::grants::{AuthorizeAccount, AuthorizeResult, ImportGrant};
use postbridge_core::error::ErrorBody;
use postbridge_core::model::{Page, PageRequest};
use postbridge_core::receive::inbox;
use postbridge_core::receive::inbox::{InboundMessage, ReceivedFilter};
use postbridge_core::AppContext;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::Tenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/accounts", web::get().to(list))
        .route("/accounts", web::post().to(create))
        .route("/accounts/{id}", web::get().to(get))
        .route("/accounts/{id}", web::patch().to(update))
        .route("/accounts/{id}", web::delete().to(delete))
        .route("/accounts/{id}/test", web::post().to(test))
        .route("/accounts/{id}/authorize", web::post().to(authorize))
        .route("/accounts/{id}/grant", web::post().to(import_grant))
        .route("/accounts/{id}/messages", web::get().to(list_received));
}

#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", security(("bearer" = [])), params(PageRequest),
    responses((status = 200, body = Page<Account>)))]
pub async fn list(ctx: web::Data<AppContext>, Tenant(scope): Tenant, page: web::Query<PageRequest>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(accounts::list(&ctx, &scope, page.into_inner()).await?))
}

/// Add a mailbox connection (member or above); it starts in draft.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", security(("bearer" = [])), request_body = CreateAccount,
    responses((status = 201, body = Account), (status = 422, body = ErrorBody)))]
pub async fn create(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    input: web::Json<CreateAccount>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Created().json(accounts::create(&ctx, &scope, input.into_inner()).await?))
}

#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody)))]
pub async fn get(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(accounts::get(&ctx, &scope, id.into_inner().into()).await?))
}

#[utoipa::path(patch, path = "/v1/accounts/{id}", tag = "accounts", security(("bearer" = [])), request_body = UpdateAccount,
    responses((status = 200, body = Account), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    id: web::Path<Uuid>,
    input: web::Json<UpdateAccount>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(accounts::update(&ctx, &scope, id.into_inner().into(), input.into_inner()).await?))
}

/// Delete an account (its owner or an admin).
#[utoipa::path(delete, path = "/v1/accounts/{id}", tag = "accounts", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    accounts::delete(&ctx, &scope, id.into_inner().into()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// "Test & confirm": connects with the account's current credentials and moves it to confirmed, or
/// answers which step failed with the server's own words (200 either way; see `ok`).
#[utoipa::path(post, path = "/v1/accounts/{id}/test", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = postbridge_core::connect::confirm::TestResult), (status = 404, body = ErrorBody)))]
pub async fn test(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(postbridge_core::connect::confirm::test_and_confirm(&ctx, &scope, id.into_inner().into()).await?))
}

/// "Authenticate account": the provider URL to send the browser to (user flow), or an immediate
/// client-credentials authorization (app flow).
#[utoipa::path(post, path = "/v1/accounts/{id}/authorize", tag = "oauth", security(("bearer" = [])), request_body = AuthorizeAccount,
    responses((status = 200, body = AuthorizeResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn authorize(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    id: web::Path<Uuid>,
    input: Option<web::Json<AuthorizeAccount>>,
) -> ApiResult<HttpResponse> {
    let input = input.map(|i| i.into_inner()).unwrap_or_default();
    Ok(HttpResponse::Ok().json(grants::authorize(&ctx, &scope, id.into_inner().into(), input).await?))
}

/// Bring your own tokens (admin): import a refresh token obtained elsewhere for this account's mailbox; it is
/// checked with one refresh, then the account is authorized as after a consent.
#[utoipa::path(post, path = "/v1/accounts/{id}/grant", tag = "oauth", security(("bearer" = [])), request_body = ImportGrant,
    responses((status = 200, body = Account), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn import_grant(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    id: web::Path<Uuid>,
    input: web::Json<ImportGrant>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(grants::import(&ctx, &scope, id.into_inner().into(), input.into_inner()).await?))
}

/// An inbound account's received messages, newest first; filtered by folder, From and subject text, and time stored.
#[utoipa::path(get, path = "/v1/accounts/{id}/messages", tag = "messages", security(("bearer" = [])), params(PageRequest, ReceivedFilter),
    responses((status = 200, body = Page<InboundMessage>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn list_received(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    id: web::Path<Uuid>,
    page: web::Query<PageRequest>,
    filter: web::Query<ReceivedFilter>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(inbox::list(&ctx, &scope, id.into_inner().into(), page.into_inner(), filter.into_inner()).await?))
}
