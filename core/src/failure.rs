//! Why an account or a grant failed, as data. `last_error` keeps the words (the server's or provider's own, for a
//! person to read); `last_error_kind` keeps this kind beside them, so the fix-it hints (`hints`) match on kinds and
//! never on sentences Postbridge wrote itself. Rewording an error changes no `reason`.
//!
//! A leaf: the protocols name their failures in these terms (`MailStep`, `TokenError::failure_kind`), never the
//! other way round.

use std::fmt;

use sea_orm::FromJsonQueryResult;
use serde::{Deserialize, Serialize};

/// Where a mail session failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailStep {
    /// The host name could not be resolved.
    Dns,
    /// The SSRF guard refused the host's address (a deployment policy; retrying does not help).
    Forbidden,
    /// No TCP connection (refused, unreachable, connect timeout), or the connection was lost mid-session.
    Connect,
    /// TLS handshake or certificate verification (implicit TLS or STARTTLS / STLS).
    Tls,
    /// The server's greeting was missing, malformed or a refusal.
    Greeting,
    /// Authentication was refused (wrong password, invalid / revoked token, mechanism not offered).
    Auth,
    /// The folder (mailbox) does not exist or cannot be selected.
    Folder,
    /// A command after login failed (the server answered NO / BAD / -ERR / 5xx, or the reply was malformed).
    Command,
    /// The server did not answer within the I/O timeout.
    Timeout,
    /// Anything else.
    Unknown,
}

impl MailStep {
    pub fn as_str(self) -> &'static str {
        match self {
            MailStep::Dns => "dns",
            MailStep::Forbidden => "forbidden",
            MailStep::Connect => "connect",
            MailStep::Tls => "tls",
            MailStep::Greeting => "greeting",
            MailStep::Auth => "auth",
            MailStep::Folder => "folder",
            MailStep::Command => "command",
            MailStep::Timeout => "timeout",
            MailStep::Unknown => "unknown",
        }
    }
}

impl fmt::Display for MailStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
