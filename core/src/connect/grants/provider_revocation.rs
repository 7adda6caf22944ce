//! Revocation at the provider (RFC 7009): a grant deleted in Postbridge is also revoked where it was issued, when the
//! configuration names a revocation endpoint (Google's preset does). The local deletion never waits on the
//! provider's verdict: it is committed first, then the provider is asked once, and what it answered is recorded as
//! an event (`grant.provider_revoked` or `grant.provider_revocation_failed`), so an admin can finish the job by hand.

use std::time::Duration;

use serde_json::json;

use super::oauth_client;
use crate::context::AppContext;
use crate::error::AppResult;
use crate::observe::events;
use crate::secrets;
use crate::store::entities::{grant, token_config};

/// The longest a deletion waits for the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the provider that issued them (`config`, read with the deletion) to revoke the deleted `grant`'s refresh
/// token (its access token when it has none). Does nothing without a revocation endpoint or a token. Errors are
/// those of recording the outcome.
pub(super) async fn revoke_at_provider(ctx: &AppContext, config: &token_config::Model, grant: &grant::Model) -> AppResult<()> {
    let Some(url) = config.revocation_url.as_deref() else { return Ok(()) };
    let (sealed, column, hint) = match (&grant.refresh_token, &grant.access_token) {
        (Some(refresh), _) => (refresh, secrets::GRANT_REFRESH_TOKEN, "refresh_token"),
        (None, Some(access)) => (access, secrets::GRANT_ACCESS_TOKEN, "access_token"),
        (None, None) => return Ok(()),
    };
    let outcome = async {
        let token = column.open(&ctx.cipher, grant.tenant_id, grant.id, sealed).map_err(|e| e.to_string())?;
        let client = oauth_client(ctx, config).map_err(|e| e.to_string())?;
        match tokio::time::timeout(PROVIDER_TIMEOUT, client.revoke(url, &token, hint)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the revocation endpoint did not answer within {} s", PROVIDER_TIMEOUT.as_secs())),
        }
    }
    .await;
    let (event_type, data) = match outcome {
        Ok(()) => (events::GRANT_PROVIDER_REVOKED, json!({"subject": grant.subject, "token_type_hint": hint})),
        Err(error) => {
            tracing::warn!(grant_id = %grant.id, error = %error, "the provider did not revoke a deleted grant");
            (events::GRANT_PROVIDER_REVOCATION_FAILED, json!({"subject": grant.subject, "token_type_hint": hint, "error": error}))
        }
    };
    events::record(&ctx.db, grant.tenant_id, event_type, "grant", Some(grant.id.into()), data).await?;
    Ok(())
}
