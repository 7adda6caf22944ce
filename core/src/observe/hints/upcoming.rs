//! Warnings ahead of a known break: a client secret near its expiry, a Google Testing app's 7-day refresh tokens.

use super::problem;
use super::Facts;
use super::Problem;
use super::{action, Fix};
use crate::model::Provider;

/// A credential that still works but is expected to break on a known date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upcoming {
    /// The client secret's recorded expiry date.
    ClientSecretExpiry,
    /// Microsoft refresh tokens die after 90 days without use.
    RefreshTokenInactivity,
    /// Google apps in "Testing" get refresh tokens that die 7 days after consent.
    TestingAppConsentExpiry,
}

/// What to do before an expected break on `on`, so it does not happen.
pub fn upcoming(kind: Upcoming, facts: &Facts<'_>, on: chrono::NaiveDate) -> Problem {
    let login = facts.login.unwrap_or("the mailbox user");
    let account_path = facts.account_id.map(|id| format!("/v1/accounts/{id}")).unwrap_or("/v1/accounts/{id}".into());
    let config_path =
        facts.token_config_id.map(|id| format!("/v1/token-configs/{id}")).unwrap_or("/v1/token-configs/{id}".into());
    let reconsent = action(facts.account_id, |account_id| Fix::Reconsent { account_id });
    match kind {
        Upcoming::ClientSecretExpiry => {
            let app = facts.client_id.map(|c| format!("the app with client id {c}")).unwrap_or_else(|| "<app>".to_owned());
            let step = new_secret_step(facts.provider, &app, &config_path, false);
            let (_, fix) = step.split_once(": ").unwrap_or(("", step.as_str()));
            problem(
                "client_secret_expiring",
                format!("The client secret expires on {on}; before then: {fix}"),
                action(facts.token_config_id, |token_config_id| Fix::EditTokenConfig { token_config_id }),
                Some(serde_json::json!({"expires_on": on})),
            )
        }
        Upcoming::RefreshTokenInactivity => problem(
            "refresh_token_inactive",
            format!(
                "Microsoft expires refresh tokens that are not used for 90 days; this grant's runs out on {on}. Keep the \
                 mailbox in use (an enabled, confirmed account polls or sends and so refreshes the token), or have {login} \
                 consent again before then (POST {account_path}/authorize)"
            ),
            reconsent,
            Some(serde_json::json!({"inactivity_limit_days": 90, "breaks_on": on})),
        ),
        Upcoming::TestingAppConsentExpiry => problem(
            "testing_app_consent_expiring",
            format!(
                "The Google app's consent screen is in \"Testing\", so Google expires its refresh tokens 7 days after consent \
                 (this one on {on}). Publish the app (Google Cloud console → APIs & Services → OAuth consent screen → Publish \
                 app) and set testing_app to false (PATCH {config_path}); until then {login} must consent again every 7 days \
                 (POST {account_path}/authorize)"
            ),
            reconsent,
            Some(serde_json::json!({"consent_lifetime_days": 7, "breaks_on": on})),
        ),
    }
}

/// Where to create a new client secret, per provider.
pub(super) fn new_secret_step(provider: Option<Provider>, app: &str, config_path: &str, expired: bool) -> String {
    let what = if expired { "The client secret has expired" } else { "The provider refuses the client id or secret" };
    let at_provider = match provider {
        Some(Provider::Microsoft) => {
            format!("Azure portal → App registrations → {app} → Certificates & secrets → New client secret")
        }
        Some(Provider::Google) => {
            format!("Google Cloud console → APIs & Services → Credentials → OAuth 2.0 Client IDs → {app} → Add secret")
        }
        _ => format!("create a new client secret for {app} at the provider"),
    };
    format!(
        "{what}: {at_provider}, then paste it into this token configuration (PATCH {config_path} with client_secret, and \
         client_secret_expires_at set to the new expiry date); every grant of the app works again on its next refresh"
    )
}
