//! Fix-it hints: from what is stored about an account, a grant or a token configuration (states, statuses and the
//! providers' and servers' own words), a stable machine-readable `reason` and the specific human next step.
//!
//! Pure: no I/O. The classifier matches on the stored failure kinds (`failure::FailureKind`: the failing mail step,
//! the token failure with the provider's OAuth error and `AADSTS…` code, the identities of a wrong consent), and
//! reads only the providers' and servers' own words beyond them (Exchange Online's `5.7.139`, Gmail's IMAP alerts,
//! Google's `invalid_grant` descriptions). It never reads a sentence Postbridge wrote itself.

use async_graphql::SimpleObject;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::failure::MailStep;
use crate::failure::{aadsts_code, FailureKind};
use crate::model::{AccountState, AuthMethod, GrantStatus, Protocol, Provider};
use crate::store::entities::{email_account, grant, token_config};
use crate::store::ids::{AccountId, TokenConfigId};

mod upcoming;
use upcoming::new_secret_step;

pub use upcoming::{upcoming, Upcoming};

/// What is wrong and what to do about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct Problem {
    /// Stable snake_case code, e.g. `client_secret_expired`, `reauth_required`, `smtp_auth_disabled`, `wrong_mailbox`.
    pub reason: String,
    /// What a person should do, specifically (where to click, which setting, which API call).
    pub next_step: String,
    /// The Postbridge API call that applies the fix (e.g. re-consent), or that checks it again once the fix is made
    /// outside Postbridge (at the provider or the mail server).
    pub action: Option<ProblemAction>,
    /// Facts behind the reason, e.g. `{"consented": "a@x", "expected": "b@x"}` or the provider's error code.
    #[schema(value_type = Option<Object>)]
    pub details: Option<async_graphql::Json<serde_json::Value>>,
}

/// An API call: `POST /v1/accounts/{id}/authorize` and the like, with the ids filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct ProblemAction {
    pub method: String,
    pub path: String,
}

/// Everything the classifier may use; unknown facts stay `None`.
#[derive(Clone, Debug, Default)]
pub struct Facts<'a> {
    pub provider: Option<Provider>,
    pub protocol: Option<Protocol>,
    pub auth: Option<AuthMethod>,
    pub state: Option<AccountState>,
    pub account_id: Option<AccountId>,
    pub login: Option<&'a str>,
    pub host: Option<&'a str>,
    /// The account's (or the item's own) last error: the server's or provider's words.
    pub last_error: Option<&'a str>,
    /// What kind of failure `last_error` describes.
    pub kind: Option<&'a FailureKind>,
    pub grant_status: Option<GrantStatus>,
    pub grant_error: Option<&'a str>,
    /// What kind of failure the grant's `grant_error` describes.
    pub grant_kind: Option<&'a FailureKind>,
    pub token_config_id: Option<TokenConfigId>,
    pub client_id: Option<&'a str>,
    pub needs_admin: bool,
    pub config_error: Option<&'a str>,
    /// The configuration's client secret is past its recorded expiry date.
    pub secret_expired: bool,
    /// A Google app whose consent screen is in "Testing" (refresh tokens live 7 days).
    pub testing_app: bool,
}

/// Why a consent that names nobody is refused (written to the account's `last_error`).
pub const UNKNOWN_IDENTITY_MESSAGE: &str = "the provider did not say who signed in (no id_token with preferred_username, upn or a verified email): \
     make sure the token configuration asks for the openid scope (Microsoft: openid and profile), or mark the account as a shared mailbox";

/// The account's `last_error` after a consent by the wrong identity: names who consented and who was expected
/// (the kind, `FailureKind::WrongMailbox`, carries both).
pub fn wrong_mailbox_message(consented: &str, expected: &str) -> String {
    format!(
        "wrong mailbox: consent was given by {consented}, but this account is {expected}: sign in as {expected}, or mark the account as a shared mailbox"
    )
}

/// The provider a mail host belongs to, for accounts (which do not carry their configuration's provider).
pub fn provider_of_host(host: &str) -> Option<Provider> {
    let host = host.to_ascii_lowercase();
    if host.ends_with("office365.com") || host.ends_with("outlook.com") || host.ends_with("office.com") {
        Some(Provider::Microsoft)
    } else if host.ends_with("gmail.com") || host.ends_with("googlemail.com") || host.ends_with("google.com") {
        Some(Provider::Google)
    } else {
        None
    }
}

/// An account's problem: while it is in error, or while its last test or poll left an error (disabled: none).
pub fn for_account(model: &email_account::Model) -> Option<Problem> {
    let state = Some(model.state);
    if state == Some(AccountState::Disabled) || (state != Some(AccountState::Error) && model.last_error.is_none()) {
        return None;
    }
    classify(&Facts {
        provider: provider_of_host(&model.host),
        protocol: Some(model.protocol),
        auth: Some(model.auth_method),
        state,
        account_id: Some(model.id),
        login: Some(&model.login),
        host: Some(&model.host),
        last_error: model.last_error.as_deref(),
        kind: model.last_error_kind.as_ref(),
        token_config_id: model.token_config_id,
        ..Facts::default()
    })
}

/// A grant's problem: while it needs re-consent, or while its last refresh failed.
pub fn for_grant(model: &grant::Model) -> Option<Problem> {
    let status = Some(model.status);
    let dead = status == Some(GrantStatus::ReauthRequired);
    if !dead && model.last_error.is_none() {
        return None;
    }
    classify(&Facts {
        grant_status: status,
        grant_error: model.last_error.as_deref(),
        grant_kind: model.last_error_kind.as_ref(),
        login: Some(&model.subject).filter(|s| s.as_str() != "app").map(String::as_str),
        token_config_id: Some(model.token_config_id),
        ..Facts::default()
    })
}

/// A token configuration's problem: while the provider refuses its client credentials, or its secret is past the
/// recorded expiry date.
pub fn for_token_config(model: &token_config::Model, today: chrono::NaiveDate) -> Option<Problem> {
    let secret_expired = model.client_secret_expires_at.is_some_and(|d| d <= today);
    if !model.needs_admin && !secret_expired {
        return None;
    }
    classify(&Facts {
        provider: Some(model.provider),
        token_config_id: Some(model.id),
        client_id: Some(&model.client_id),
        needs_admin: model.needs_admin,
        config_error: model.last_error.as_deref(),
        secret_expired,
        testing_app: model.testing_app,
        ..Facts::default()
    })
}

/// The API calls a problem can point at; each route is spelled here only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fix {
    /// Consent again: `POST /v1/accounts/{id}/authorize`.
    Reconsent { account_id: AccountId },
    /// Test & confirm again, once the fix is made outside Postbridge: `POST /v1/accounts/{id}/test`.
    Retest { account_id: AccountId },
    /// Change the account's settings: `PATCH /v1/accounts/{id}`.
    EditAccount { account_id: AccountId },
    /// Change the token configuration: `PATCH /v1/token-configs/{id}`.
    EditTokenConfig { token_config_id: TokenConfigId },
}

impl From<Fix> for ProblemAction {
    fn from(fix: Fix) -> Self {
        let (method, path) = match fix {
            Fix::Reconsent { account_id } => ("POST", format!("/v1/accounts/{account_id}/authorize")),
            Fix::Retest { account_id } => ("POST", format!("/v1/accounts/{account_id}/test")),
            Fix::EditAccount { account_id } => ("PATCH", format!("/v1/accounts/{account_id}")),
            Fix::EditTokenConfig { token_config_id } => ("PATCH", format!("/v1/token-configs/{token_config_id}")),
        };
        ProblemAction { method: method.to_owned(), path }
    }
}

/// The call fixing the account or configuration `id` names, where the facts know it.
fn action<Id>(id: Option<Id>, fix: impl FnOnce(Id) -> Fix) -> Option<ProblemAction> {
    id.map(|id| fix(id).into())
}

fn problem(reason: &str, next_step: String, action: Option<ProblemAction>, details: Option<serde_json::Value>) -> Problem {
    Problem { reason: reason.to_owned(), next_step, action, details: details.map(async_graphql::Json) }
}

/// Classifies the facts; `None` when nothing is wrong.
pub fn classify(facts: &Facts<'_>) -> Option<Problem> {
    let grant_dead = facts.grant_status == Some(GrantStatus::ReauthRequired);
    let in_trouble = facts.state == Some(AccountState::Error)
        || facts.last_error.is_some()
        || grant_dead
        || facts.grant_error.is_some()
        || facts.needs_admin
        || facts.secret_expired;
    if !in_trouble {
        return None;
    }
    // The providers' and servers' own words, for what no kind says (their alerts and reply texts).
    let texts: Vec<&str> = [facts.last_error, facts.grant_error, facts.config_error].into_iter().flatten().collect();
    let all = texts.join("\n");
    let lower = all.to_lowercase();
    let has = |needle: &str| lower.contains(&needle.to_lowercase());
    let kinds: Vec<&FailureKind> = [facts.kind, facts.grant_kind].into_iter().flatten().collect();
    let oauth = |error: &str| kinds.iter().any(|k| k.oauth_error() == Some(error));
    let code = kinds.iter().find_map(|k| k.provider_code()).or_else(|| aadsts_code(&all));
    // A generic configuration may still point at Microsoft or Google: let the texts and the host tell.
    let provider = facts
        .provider
        .filter(|p| *p != Provider::Generic)
        .or(code.map(|_| Provider::Microsoft))
        .or_else(|| facts.host.and_then(provider_of_host));
    let login = facts.login.unwrap_or("the mailbox user");
    let reconsent = action(facts.account_id, |account_id| Fix::Reconsent { account_id });
    let retest = action(facts.account_id, |account_id| Fix::Retest { account_id });
    let edit_account = action(facts.account_id, |account_id| Fix::EditAccount { account_id });
    let edit_config = action(facts.token_config_id, |token_config_id| Fix::EditTokenConfig { token_config_id });
    let config_path =
        facts.token_config_id.map(|id| format!("/v1/token-configs/{id}")).unwrap_or("/v1/token-configs/{id}".into());
    let account_path = facts.account_id.map(|id| format!("/v1/accounts/{id}")).unwrap_or("/v1/accounts/{id}".into());
    let app = facts.client_id.map(|c| format!("the app with client id {c}")).unwrap_or_else(|| "<app>".to_owned());
    let code_details = code.map(|c| serde_json::json!({ "provider_code": c }));

    // Consent by the wrong identity: nothing broke, but this mailbox is not connected.
    if let Some(FailureKind::WrongMailbox { consented, expected }) = facts.kind {
        return Some(problem(
            "wrong_mailbox",
            format!(
                "{consented} consented, but this account is {expected}: start the sign-in again (POST {account_path}/authorize) \
                 and sign in as {expected} at the provider (sign out of {consented} first or use a private window); if \
                 {consented} is meant to act for {expected} (a shared or delegated mailbox), an admin sets shared_mailbox: \
                 true (PATCH {account_path}) and consents again"
            ),
            reconsent,
            Some(serde_json::json!({"consented": consented, "expected": expected})),
        ));
    }

    // Exchange Online: 535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant/Mailbox.
    if has("5.7.139") || has("SmtpClientAuthentication") {
        let tenant_wide = has("disabled for the tenant");
        let org = if tenant_wide {
            "It is off for the whole organisation: Microsoft 365 admin center → Settings → Org settings → Mail flow settings \
             → turn off \"Turn off SMTP AUTH protocol for your organization\" (or Set-TransportConfig \
             -SmtpClientAuthenticationDisabled $false), then enable it for the mailbox: "
        } else {
            "An Exchange admin enables it for the mailbox: "
        };
        return Some(problem(
            "smtp_auth_disabled",
            format!(
                "SMTP AUTH is disabled for this Microsoft 365 mailbox. {org}Microsoft 365 admin center → Users → Active users → \
                 {login} → Mail → Manage email apps → tick Authenticated SMTP, or Set-CASMailbox -Identity {login} \
                 -SmtpClientAuthenticationDisabled $false; it can take up to an hour to apply, then test again (POST \
                 {account_path}/test)"
            ),
            retest,
            Some(serde_json::json!({"tenant_wide": tenant_wide, "reply_code": "5.7.139"})),
        ));
    }

    // IMAP/POP switched off for the mailbox.
    if has("not enabled for IMAP") || has("not enabled for POP") || has("User is authenticated but not connected") {
        let pop = facts.protocol == Some(Protocol::Pop3) || has("enabled for POP");
        let (name, flag) = if pop { ("POP", "PopEnabled") } else { ("IMAP", "ImapEnabled") };
        let step = match provider {
            Some(Provider::Google) => format!(
                "{name} access is off for this Gmail account: Gmail → Settings → See all settings → Forwarding and POP/IMAP \
                 → enable {name} (Google Workspace: the admin allows it in Admin console → Apps → Google Workspace → Gmail \
                 → End User Access), then test again (POST {account_path}/test)"
            ),
            _ => format!(
                "{name} is disabled for this Microsoft 365 mailbox (or the app lacks the mailbox permission): Microsoft 365 \
                 admin center → Users → Active users → {login} → Mail → Manage email apps → tick {name}, or Set-CASMailbox \
                 -Identity {login} -{flag} $true; then test again (POST {account_path}/test)"
            ),
        };
        return Some(problem("imap_disabled", step, retest, None));
    }

    // The app registration's credentials.
    let secret_expired_text = code == Some("AADSTS7000222") || (has("client secret keys") && has("expired"));
    if facts.secret_expired || secret_expired_text {
        return Some(problem(
            "client_secret_expired",
            new_secret_step(provider, &app, &config_path, true),
            edit_config,
            code_details,
        ));
    }
    if code == Some("AADSTS700016") {
        return Some(problem(
            "client_id_unknown",
            format!(
                "Microsoft does not know this application in the directory: check the Application (client) ID and the \
                 Directory (tenant) ID in Azure portal → App registrations → {app} → Overview, and correct them here (PATCH \
                 {config_path} client_id / directory_tenant_id)"
            ),
            edit_config,
            code_details,
        ));
    }
    if facts.needs_admin || code == Some("AADSTS7000215") || kinds.iter().any(|k| matches!(k, FailureKind::ClientRefused { .. }))
    {
        return Some(problem(
            "client_secret_invalid",
            new_secret_step(provider, &app, &config_path, false),
            edit_config,
            code_details,
        ));
    }

    // Consent (admin or user) withdrawn or never given.
    if matches!(code, Some("AADSTS65001" | "AADSTS90094" | "AADSTS90008")) || oauth("consent_required") {
        return Some(problem(
            "admin_consent_required",
            format!(
                "The permissions were not consented (or consent was withdrawn). A Microsoft Entra admin grants them: Azure \
                 portal → Enterprise applications → {app} → Permissions → Grant admin consent (or the user consents \
                 again); then start the sign-in again (POST {account_path}/authorize)"
            ),
            reconsent,
            code_details,
        ));
    }

    if kinds.iter().any(|k| matches!(k, FailureKind::RefreshTokenMissing)) {
        let step = match provider {
            Some(Provider::Microsoft) => format!(
                "Microsoft returned no refresh token: the configuration must ask for the offline_access scope (PATCH \
                 {config_path} scopes); then consent again (POST {account_path}/authorize)"
            ),
            _ => format!(
                "The provider returned no refresh token (Google sends one only on a consent screen, with access_type=offline): \
                 consent again with POST {account_path}/authorize, which asks with prompt=consent; if it persists, remove \
                 the app at https://myaccount.google.com/permissions for {login} and consent again"
            ),
        };
        return Some(problem("refresh_token_missing", step, reconsent, None));
    }

    // The grant is dead: someone must sign in again.
    let reauth = kinds.iter().any(|k| k.needs_reconsent())
        || oauth("invalid_grant")
        || oauth("interaction_required")
        || oauth("login_required")
        || has("Token has been expired or revoked");
    if grant_dead || reauth {
        let why = match code {
            Some("AADSTS700082") => "the refresh token expired after 90 days without use".to_owned(),
            Some("AADSTS50173") => "the grant expired because the user's password changed or their sessions were revoked".into(),
            Some("AADSTS50076" | "AADSTS50079") => "the directory now requires multi-factor sign-in".into(),
            Some("AADSTS50057") => "the user account is disabled in the directory".into(),
            _ if has("Token has been expired or revoked") && facts.testing_app => {
                "the Google app is in \"Testing\", so its refresh tokens expire after 7 days (publish the app: Google Cloud \
                 console → APIs & Services → OAuth consent screen → Publish app)"
                    .into()
            }
            _ if has("Token has been expired or revoked") => {
                "Google says the token expired or was revoked (the user removed access, changed the password, or the app is \
                 in \"Testing\" with 7-day tokens)"
                    .into()
            }
            _ => "the provider no longer accepts the grant (revoked, expired or consent withdrawn)".into(),
        };
        return Some(problem(
            "reauth_required",
            format!("Sign-in needed again: {why}. {login} consents again with POST {account_path}/authorize (the browser goes to the returned authorization_url)"),
            reconsent,
            code_details,
        ));
    }

    // Mail-server failures, by the step that failed.
    let step = match facts.kind {
        Some(FailureKind::Mail { step, .. }) => Some(*step),
        _ => None,
    };
    if has("Application-specific password required") || (has("5.7.9") && has("password")) {
        return Some(problem(
            "app_password_required",
            format!(
                "The account uses 2-step verification, so the server wants an app password: create one (Google Account → \
                 Security → 2-Step Verification → App passwords) and store it (PATCH {account_path} password), or switch the \
                 account to oauth2 with a token configuration"
            ),
            edit_account,
            None,
        ));
    }
    if step == Some(MailStep::Auth) {
        let next = if facts.auth == Some(AuthMethod::Oauth2) {
            format!(
                "The mail server refused the access token for {login}: check that the app has the IMAP/POP/SMTP permission and \
                 that the account's login is the consented mailbox, then consent again (POST {account_path}/authorize)"
            )
        } else {
            format!(
                "The server refused the login or password for {login}: store the right password or an app password (PATCH \
                 {account_path} password), then test again (POST {account_path}/test)"
            )
        };
        let fix = if facts.auth == Some(AuthMethod::Oauth2) { reconsent } else { edit_account };
        return Some(problem("authentication_failed", next, fix, None));
    }
    if step == Some(MailStep::Tls) {
        return Some(problem(
            "tls_failed",
            format!(
                "The TLS handshake or certificate check failed: check host, port and security (tls for 993/995/465, starttls \
                 for 143/110/587) and that the server's certificate is valid for the host name (PATCH {account_path})"
            ),
            edit_account,
            None,
        ));
    }
    if step == Some(MailStep::Forbidden) {
        return Some(problem(
            "host_forbidden",
            format!("The host resolves to an address this deployment does not connect to (private, loopback or metadata): use the mail server's public host name (PATCH {account_path})"),
            edit_account,
            None,
        ));
    }
    if step == Some(MailStep::Folder) {
        return Some(problem(
            "folder_not_found",
            format!("The folder does not exist or cannot be selected: set an existing folder (PATCH {account_path} folder), e.g. INBOX"),
            edit_account,
            None,
        ));
    }
    if has("[INUSE]") || has("[IN-USE]") {
        return Some(problem(
            "mailbox_busy",
            "Another session holds the mailbox; Postbridge retries by itself. If it persists, close other clients that keep the mailbox locked".to_owned(),
            retest,
            None,
        ));
    }
    if let Some(step @ (MailStep::Dns | MailStep::Connect | MailStep::Timeout | MailStep::Greeting)) = step {
        return Some(problem(
            "server_unreachable",
            format!(
                "The mail server could not be reached ({step}): Postbridge retries with backoff; if it persists, check the \
                 host name and port (PATCH {account_path}) and that the server accepts connections from this deployment"
            ),
            retest,
            None,
        ));
    }
    if kinds.iter().any(|k| matches!(k, FailureKind::ProviderUnavailable)) {
        return Some(problem(
            "provider_unavailable",
            "The OAuth provider did not answer (network, 5xx or 429): nothing is lost, Postbridge retries with backoff"
                .to_owned(),
            None,
            None,
        ));
    }
    Some(problem(
        "unknown",
        match facts.account_id {
            Some(_) => {
                format!("Read last_error (the server's own words), fix the cause, then test again (POST {account_path}/test)")
            }
            None => "Read last_error (the provider's own words) and fix the cause".to_owned(),
        },
        retest,
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The action a test expects, spelled out as the API shows it.
    fn action(method: &str, path: String) -> Option<ProblemAction> {
        Some(ProblemAction { method: method.to_owned(), path })
    }

    use crate::protocols::oauth::TokenError;

    /// An account in error as its writers leave it: the words, and the kind beside them.
    fn failed(kind: FailureKind, error: &str) -> Facts<'static> {
        Facts {
            state: Some(AccountState::Error),
            account_id: Some(AccountId::from(uuid::Uuid::nil())),
            login: Some("ann@contoso.com"),
            last_error: Some(Box::leak(error.to_owned().into_boxed_str())),
            kind: Some(Box::leak(Box::new(kind))),
            auth: Some(AuthMethod::Oauth2),
            ..Facts::default()
        }
    }

    /// An account whose mail session failed at `step` with the server's `words`.
    fn account(step: MailStep, words: &str) -> Facts<'static> {
        failed(FailureKind::Mail { step, reply_code: None }, &format!("{step}: {words}"))
    }

    /// The kind of a provider's refusal, as the token code records it.
    fn rejected(error: &str, description: Option<&str>) -> FailureKind {
        TokenError::Rejected { error: error.to_owned(), description: description.map(str::to_owned) }.failure_kind()
    }

    fn reason(facts: &Facts<'_>) -> String {
        classify(facts).expect("a problem").reason
    }

    const NIL_ACCOUNT: &str = "/v1/accounts/00000000-0000-0000-0000-000000000000";

    #[test]
    fn nothing_wrong_is_no_problem() {
        assert_eq!(classify(&Facts { state: Some(AccountState::Confirmed), ..Facts::default() }), None);
        assert_eq!(classify(&Facts { grant_status: Some(GrantStatus::Valid), ..Facts::default() }), None);
    }

    #[test]
    fn expired_client_secret_points_at_azure_certificates_and_secrets() {
        let config = TokenConfigId::from(uuid::Uuid::nil());
        let facts = Facts {
            needs_admin: true,
            provider: Some(Provider::Microsoft),
            token_config_id: Some(config),
            client_id: Some("1111"),
            config_error: Some("the provider refused: invalid_client (AADSTS7000222: The provided client secret keys for app '1111' are expired.)"),
            ..Facts::default()
        };
        let p = classify(&facts).expect("problem");
        assert_eq!(p.reason, "client_secret_expired");
        assert!(
            p.next_step.contains("App registrations → the app with client id 1111 → Certificates & secrets → New client secret"),
            "{}",
            p.next_step
        );
        assert_eq!(p.action, action("PATCH", format!("/v1/token-configs/{config}")));
        assert_eq!(p.details.map(|d| d.0), Some(serde_json::json!({"provider_code": "AADSTS7000222"})));
        // A recorded expiry date in the past says the same without any provider text.
        assert_eq!(reason(&Facts { secret_expired: true, ..Facts::default() }), "client_secret_expired");
    }

    #[test]
    fn invalid_client_secret() {
        let facts = Facts {
            needs_admin: true,
            config_error: Some("the provider refused: invalid_client (AADSTS7000215: Invalid client secret provided.)"),
            ..Facts::default()
        };
        let p = classify(&facts).expect("problem");
        assert_eq!(p.reason, "client_secret_invalid");
        assert!(p.next_step.contains("Azure portal"), "the AADSTS code says Microsoft: {}", p.next_step);
        // The account side of the same failure.
        assert_eq!(
            reason(&failed(
                rejected("invalid_client", Some("bad secret")),
                "auth: the token configuration needs its admin: the provider refused: invalid_client (bad secret)"
            )),
            "client_secret_invalid"
        );
        assert_eq!(
            reason(&Facts {
                needs_admin: true,
                config_error: Some("the provider refused: invalid_client"),
                provider: Some(Provider::Google),
                ..Facts::default()
            }),
            "client_secret_invalid"
        );
    }

    #[test]
    fn unknown_application() {
        let words = "AADSTS700016: Application with identifier 'x' was not found in the directory 'contoso'.";
        let facts = failed(
            rejected("unauthorized_client", Some(words)),
            &format!("auth: the token configuration needs its admin: the provider refused: unauthorized_client ({words})"),
        );
        assert_eq!(reason(&facts), "client_id_unknown");
    }

    #[test]
    fn refresh_token_expired_by_inactivity_needs_reconsent() {
        let words = "AADSTS700082: The refresh token has expired due to inactivity. The token was issued on 2024-01-01 and was inactive for 90.00:00:00.";
        let facts = failed(
            rejected("invalid_grant", Some(words)),
            &format!("sign-in needed again: the provider refused: invalid_grant ({words})"),
        );
        let p = classify(&facts).expect("problem");
        assert_eq!(p.reason, "reauth_required");
        assert!(p.next_step.contains("90 days without use"), "{}", p.next_step);
        assert_eq!(p.action, action("POST", format!("{NIL_ACCOUNT}/authorize")));
    }

    #[test]
    fn password_change_revocation_and_google_expiry_need_reconsent() {
        let words = "AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth token is needed.";
        let p = classify(&failed(
            rejected("invalid_grant", Some(words)),
            &format!("sign-in needed again: the provider refused: invalid_grant ({words})"),
        ))
        .expect("problem");
        assert_eq!(p.reason, "reauth_required");
        assert!(p.next_step.contains("password changed"), "{}", p.next_step);
        let google = classify(&Facts {
            grant_status: Some(GrantStatus::ReauthRequired),
            grant_error: Some("the provider refused: invalid_grant (Token has been expired or revoked.)"),
            ..Facts::default()
        })
        .expect("problem");
        assert_eq!(google.reason, "reauth_required");
        assert!(google.next_step.contains("expired or was revoked"), "{}", google.next_step);
        let testing = classify(&Facts {
            grant_status: Some(GrantStatus::ReauthRequired),
            grant_error: Some("the provider refused: invalid_grant (Token has been expired or revoked.)"),
            testing_app: true,
            ..Facts::default()
        })
        .expect("problem");
        assert!(testing.next_step.contains("Publish app"), "{}", testing.next_step);
        assert_eq!(
            reason(&failed(
                rejected("interaction_required", Some("AADSTS50076: multi-factor")),
                "auth: the grant needs re-consent: the provider refused: interaction_required (AADSTS50076: multi-factor)"
            )),
            "reauth_required"
        );
        // A dead grant without any text still needs re-consent.
        assert_eq!(reason(&Facts { grant_status: Some(GrantStatus::ReauthRequired), ..Facts::default() }), "reauth_required");
    }

    #[test]
    fn missing_consent() {
        let words = "AADSTS65001: The user or administrator has not consented to use the application with ID '1111'.";
        let p = classify(&failed(
            rejected("invalid_grant", Some(words)),
            &format!("sign-in needed again: the provider refused: invalid_grant ({words})"),
        ))
        .expect("problem");
        assert_eq!(p.reason, "admin_consent_required");
        assert!(p.next_step.contains("Grant admin consent"), "{}", p.next_step);
        assert_eq!(
            reason(&failed(
                rejected("consent_required", None),
                "auth: the grant needs re-consent: the provider refused: consent_required"
            )),
            "admin_consent_required"
        );
    }

    #[test]
    fn no_refresh_token_from_google_means_reconsent_with_prompt_consent() {
        let facts = Facts {
            host: Some("imap.gmail.com"),
            ..failed(
                FailureKind::RefreshTokenMissing,
                "sign-in needed again: the provider refused: invalid_grant (no refresh token stored)",
            )
        };
        let p = classify(&facts).expect("problem");
        assert_eq!(p.reason, "refresh_token_missing");
        assert!(p.next_step.contains("prompt=consent"), "{}", p.next_step);
        assert_eq!(p.action, action("POST", format!("{NIL_ACCOUNT}/authorize")));
        let microsoft = Facts { provider: Some(Provider::Microsoft), ..facts };
        assert!(classify(&microsoft).expect("problem").next_step.contains("offline_access"));
    }

    #[test]
    fn wrong_mailbox_names_who_consented_and_who_was_expected() {
        let message = wrong_mailbox_message("bob@contoso.com", "ann@contoso.com");
        let kind = FailureKind::WrongMailbox { consented: "bob@contoso.com".into(), expected: "ann@contoso.com".into() };
        let facts = Facts { state: Some(AccountState::Draft), ..failed(kind, &message) };
        let p = classify(&facts).expect("problem");
        assert_eq!(p.reason, "wrong_mailbox");
        assert_eq!(
            p.details.map(|d| d.0),
            Some(serde_json::json!({"consented": "bob@contoso.com", "expected": "ann@contoso.com"}))
        );
        assert!(p.next_step.contains("shared_mailbox"), "{}", p.next_step);
        // The kind decides, not the words: the same sentence as a server's reply is no wrong mailbox.
        assert_eq!(reason(&account(MailStep::Auth, &message)), "authentication_failed");
    }

    #[test]
    fn smtp_auth_disabled_names_the_admin_setting() {
        let p = classify(&account(
            MailStep::Auth,
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled",
        ))
        .expect("problem");
        assert_eq!(p.reason, "smtp_auth_disabled");
        assert!(p.next_step.contains("Manage email apps → tick Authenticated SMTP"), "{}", p.next_step);
        assert!(
            p.next_step.contains("Set-CASMailbox -Identity ann@contoso.com -SmtpClientAuthenticationDisabled $false"),
            "{}",
            p.next_step
        );
        assert_eq!(p.action, action("POST", format!("{NIL_ACCOUNT}/test")));
        let tenant = classify(&account(
            MailStep::Auth,
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
        ))
        .expect("problem");
        assert!(tenant.next_step.contains("Set-TransportConfig"), "{}", tenant.next_step);
    }

    #[test]
    fn imap_disabled_per_provider() {
        let gmail = Facts { host: Some("imap.gmail.com"), ..account(MailStep::Auth, "[ALERT] Your account is not enabled for IMAP use. Please visit your Gmail settings page and enable your account for IMAP access.") };
        let p = classify(&gmail).expect("problem");
        assert_eq!(p.reason, "imap_disabled");
        assert!(p.next_step.contains("Forwarding and POP/IMAP"), "{}", p.next_step);
        let m365 = classify(&account(MailStep::Command, "User is authenticated but not connected.")).expect("problem");
        assert_eq!(m365.reason, "imap_disabled");
        assert!(m365.next_step.contains("-ImapEnabled $true"), "{}", m365.next_step);
    }

    #[test]
    fn mail_server_steps() {
        let password = |e: &str| Facts { auth: Some(AuthMethod::Password), ..account(MailStep::Auth, e) };
        let auth = classify(&password("535 5.7.8 Error: authentication failed")).expect("problem");
        assert_eq!(auth.reason, "authentication_failed");
        assert_eq!(auth.action, action("PATCH", NIL_ACCOUNT.to_owned()));
        assert_eq!(reason(&password("534-5.7.9 Application-specific password required.")), "app_password_required");
        assert_eq!(reason(&account(MailStep::Auth, "[AUTHENTICATIONFAILED] Authentication failed.")), "authentication_failed");
        assert_eq!(reason(&account(MailStep::Tls, "invalid peer certificate: UnknownIssuer")), "tls_failed");
        assert_eq!(reason(&account(MailStep::Connect, "Connection refused (os error 111)")), "server_unreachable");
        assert_eq!(reason(&account(MailStep::Dns, "no address for mail.example.invalid")), "server_unreachable");
        assert_eq!(reason(&account(MailStep::Timeout, "no answer to the greeting within 60s")), "server_unreachable");
        assert_eq!(reason(&account(MailStep::Forbidden, "10.0.0.1 is a private address")), "host_forbidden");
        assert_eq!(reason(&account(MailStep::Folder, "Mailbox doesn't exist: Archive")), "folder_not_found");
        assert_eq!(reason(&account(MailStep::Command, "[INUSE] Mailbox is locked by another session")), "mailbox_busy");
        assert_eq!(reason(&account(MailStep::Command, "something nobody expected")), "unknown");
    }

    #[test]
    fn provider_outage_on_a_grant() {
        let facts = Facts {
            grant_status: Some(GrantStatus::Valid),
            grant_error: Some("the provider is unavailable: HTTP 503"),
            grant_kind: Some(&FailureKind::ProviderUnavailable),
            ..Facts::default()
        };
        let p = classify(&facts).expect("problem");
        assert_eq!((p.reason.as_str(), p.action), ("provider_unavailable", None));
    }

    #[test]
    fn upcoming_breaks_say_what_to_do_before() {
        let on = chrono::NaiveDate::from_ymd_opt(2030, 1, 31).expect("date");
        let facts = Facts {
            provider: Some(Provider::Microsoft),
            token_config_id: Some(TokenConfigId::from(uuid::Uuid::nil())),
            ..account(MailStep::Unknown, "")
        };
        let secret = upcoming(Upcoming::ClientSecretExpiry, &facts, on);
        assert_eq!(secret.reason, "client_secret_expiring");
        assert!(
            secret
                .next_step
                .starts_with("The client secret expires on 2030-01-31; before then: Azure portal → App registrations"),
            "{}",
            secret.next_step
        );
        let inactive = upcoming(Upcoming::RefreshTokenInactivity, &facts, on);
        assert_eq!(
            (inactive.reason.as_str(), inactive.action),
            ("refresh_token_inactive", action("POST", format!("{NIL_ACCOUNT}/authorize")))
        );
        let testing = upcoming(Upcoming::TestingAppConsentExpiry, &facts, on);
        assert_eq!(testing.reason, "testing_app_consent_expiring");
        assert!(testing.next_step.contains("Publish app"), "{}", testing.next_step);
    }

    #[test]
    fn rewording_an_error_changes_no_reason() {
        for words in ["sign-in needed again: the provider refused: invalid_grant", "any other sentence at all", ""] {
            assert_eq!(reason(&failed(rejected("invalid_grant", None), words)), "reauth_required");
            assert_eq!(reason(&failed(rejected("invalid_client", None), words)), "client_secret_invalid");
            assert_eq!(reason(&failed(FailureKind::ProviderUnavailable, words)), "provider_unavailable");
            assert_eq!(reason(&failed(FailureKind::Mail { step: MailStep::Tls, reply_code: None }, words)), "tls_failed");
        }
    }

    #[test]
    fn hosts_name_their_provider() {
        assert_eq!(provider_of_host("outlook.office365.com"), Some(Provider::Microsoft));
        assert_eq!(provider_of_host("smtp.gmail.com"), Some(Provider::Google));
        assert_eq!(provider_of_host("mail.example.com"), None);
    }
}
