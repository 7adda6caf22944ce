//! Why an account or a grant failed, as data. `last_error` keeps the words (the server's or provider's own, for a
//! person to read); `last_error_kind` keeps this kind beside them, so the fix-it hints (`hints`) match on kinds and
//! never on sentences Postbridge wrote itself. Rewording an error changes no `reason`.

use sea_orm::FromJsonQueryResult;
use serde::{Deserialize, Serialize};

use crate::protocols::error::MailStep;
use crate::protocols::oauth::TokenError;

/// The failure behind an account's or a grant's `last_error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureKind {
    /// A mail session failed at `step`; `reply_code` is the server's numeric reply where the protocol has one.
    Mail {
        step: MailStep,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_code: Option<u16>,
    },
    /// The provider no longer accepts the grant (`invalid_grant`, `consent_required` …): someone consents again.
    ReauthRequired { oauth_error: Option<String>, provider_code: Option<String> },
    /// The grant holds no refresh token, so it cannot be renewed: someone consents again (offline access).
    RefreshTokenMissing,
    /// The provider refused the configuration's client credentials (`invalid_client`, `unauthorized_client`).
    ClientRefused { oauth_error: Option<String>, provider_code: Option<String> },
    /// The provider could not be reached (network, 5xx, 429); nothing is wrong with the grant.
    ProviderUnavailable,
    /// The provider answered something unusable (another OAuth error, not OAuth at all, an unusable configuration).
    ProviderAnswer { oauth_error: Option<String>, provider_code: Option<String> },
    /// A consent was given by another identity than the account's mailbox.
    WrongMailbox { consented: String, expected: String },
    /// A consent named nobody, and the account is not a shared mailbox.
    UnknownIdentity,
    /// Postbridge itself failed (stored tokens that do not decrypt, the database).
    Internal,
}

impl FailureKind {
    /// Re-consent needed, without a provider's answer to say why (an endpoint moved, a grant found dead).
    pub const REAUTH_REQUIRED: FailureKind = FailureKind::ReauthRequired { oauth_error: None, provider_code: None };

    /// The kind of a failed token request.
    pub fn of_token_error(error: &TokenError) -> Self {
        let (oauth_error, provider_code) = match error {
            TokenError::Rejected { error, description } => {
                (Some(error.clone()), description.as_deref().and_then(aadsts_code).map(str::to_owned))
            }
            TokenError::Unavailable { .. } => return FailureKind::ProviderUnavailable,
            TokenError::Configuration(_) | TokenError::Protocol(_) => (None, None),
        };
        if error.needs_reauth() {
            FailureKind::ReauthRequired { oauth_error, provider_code }
        } else if error.needs_admin() {
            FailureKind::ClientRefused { oauth_error, provider_code }
        } else {
            FailureKind::ProviderAnswer { oauth_error, provider_code }
        }
    }

    /// Whether someone must consent again.
    pub fn needs_reconsent(&self) -> bool {
        matches!(self, FailureKind::ReauthRequired { .. } | FailureKind::RefreshTokenMissing)
    }

    /// The provider's OAuth error code, where the provider gave one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            FailureKind::ReauthRequired { oauth_error, .. }
            | FailureKind::ClientRefused { oauth_error, .. }
            | FailureKind::ProviderAnswer { oauth_error, .. } => oauth_error.as_deref(),
            _ => None,
        }
    }

    /// The provider's own error code (Microsoft `AADSTS…`), where its description carried one.
    pub fn provider_code(&self) -> Option<&str> {
        match self {
            FailureKind::ReauthRequired { provider_code, .. }
            | FailureKind::ClientRefused { provider_code, .. }
            | FailureKind::ProviderAnswer { provider_code, .. } => provider_code.as_deref(),
            _ => None,
        }
    }
}

/// The first `AADSTS<digits>` code in a provider's text.
pub fn aadsts_code(text: &str) -> Option<&str> {
    let start = text.find("AADSTS")?;
    let digits = text[start + 6..].bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0).then(|| &text[start..start + 6 + digits])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_keep_the_providers_codes() {
        let refused = TokenError::Rejected {
            error: "invalid_grant".into(),
            description: Some("AADSTS700082: The refresh token has expired due to inactivity.".into()),
        };
        assert_eq!(
            FailureKind::of_token_error(&refused),
            FailureKind::ReauthRequired { oauth_error: Some("invalid_grant".into()), provider_code: Some("AADSTS700082".into()) }
        );
        let client = TokenError::Rejected { error: "invalid_client".into(), description: None };
        assert!(matches!(FailureKind::of_token_error(&client), FailureKind::ClientRefused { .. }));
        let outage = TokenError::Unavailable { reason: "HTTP 503".into(), retry_after: None };
        assert_eq!(FailureKind::of_token_error(&outage), FailureKind::ProviderUnavailable);
    }

    #[test]
    fn kinds_are_stored_as_tagged_json() {
        let kind = FailureKind::Mail { step: MailStep::Tls, reply_code: None };
        assert_eq!(serde_json::to_value(&kind).ok(), Some(serde_json::json!({"kind": "mail", "step": "tls"})));
        let wrong = serde_json::json!({"kind": "wrong_mailbox", "consented": "a@x", "expected": "b@x"});
        assert_eq!(
            serde_json::from_value::<FailureKind>(wrong).ok(),
            Some(FailureKind::WrongMailbox { consented: "a@x".into(), expected: "b@x".into() })
        );
    }
}
