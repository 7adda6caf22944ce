//! Provider presets: what the vendors' setup guides make administrators type by hand.

use crate::model::{OAuthFlow, Protocol, Provider, Security};

pub const MICROSOFT_USER_SCOPES: &[&str] = &[
    "offline_access",
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "openid",
    // `profile` brings preferred_username and oid, the identity claims a consent is checked with.
    "profile",
    "email",
];
pub const MICROSOFT_APP_SCOPES: &[&str] = &["https://outlook.office365.com/.default"];
pub const GOOGLE_USER_SCOPES: &[&str] = &["https://mail.google.com/", "openid", "email"];

/// Microsoft directories that name no single tenant; fine for consent, not for client credentials.
pub const MICROSOFT_MULTI_TENANT_DIRECTORIES: &[&str] = &["common", "organizations", "consumers"];

pub struct Endpoints {
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
    /// RFC 7009 token revocation; Microsoft offers none.
    pub revocation_url: Option<String>,
    pub scopes: Vec<String>,
    pub extra_auth_params: Vec<(String, String)>,
}

/// Endpoints and scopes derived from the provider; `generic` derives nothing.
pub fn endpoints(provider: Provider, flow: OAuthFlow, directory: Option<&str>) -> Endpoints {
    let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match provider {
        Provider::Microsoft => {
            let dir = directory.unwrap_or("organizations");
            Endpoints {
                auth_url: Some(format!("https://login.microsoftonline.com/{dir}/oauth2/v2.0/authorize")),
                token_url: Some(format!("https://login.microsoftonline.com/{dir}/oauth2/v2.0/token")),
                revocation_url: None,
                scopes: owned(if flow == OAuthFlow::App { MICROSOFT_APP_SCOPES } else { MICROSOFT_USER_SCOPES }),
                extra_auth_params: Vec::new(),
            }
        }
        Provider::Google => Endpoints {
            auth_url: Some("https://accounts.google.com/o/oauth2/v2/auth".to_owned()),
            token_url: Some("https://oauth2.googleapis.com/token".to_owned()),
            revocation_url: Some("https://oauth2.googleapis.com/revoke".to_owned()),
            scopes: owned(GOOGLE_USER_SCOPES),
            // Google returns a refresh token only when the user is shown the consent screen.
            extra_auth_params: vec![
                ("access_type".to_owned(), "offline".to_owned()),
                ("prompt".to_owned(), "consent".to_owned()),
            ],
        },
        Provider::Generic => {
            Endpoints { auth_url: None, token_url: None, revocation_url: None, scopes: Vec::new(), extra_auth_params: Vec::new() }
        }
    }
}

/// The issuer an authorization server names itself with (RFC 9207 `iss` on the authorization response).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedIssuer {
    Exact(String),
    /// Microsoft with a directory that is not a tenant GUID (`common`, `organizations`, `consumers`, a domain):
    /// the issuer names the consenting user's tenant, `https://login.microsoftonline.com/{tenant GUID}/v2.0`.
    MicrosoftAnyTenant,
    /// A generic configuration without a configured issuer: nothing to compare with.
    Unknown,
}

impl ExpectedIssuer {
    /// Whether a returned `iss` is this issuer (RFC 9207 compares by simple string comparison).
    pub fn accepts(&self, iss: &str) -> bool {
        match self {
            ExpectedIssuer::Exact(expected) => iss == expected,
            ExpectedIssuer::MicrosoftAnyTenant => iss
                .strip_prefix("https://login.microsoftonline.com/")
                .and_then(|rest| rest.strip_suffix("/v2.0"))
                .is_some_and(|tenant| uuid::Uuid::parse_str(tenant).is_ok_and(|id| id.hyphenated().to_string() == tenant)),
            ExpectedIssuer::Unknown => true,
        }
    }
}

/// The issuer a configuration's authorization server must name: the presets know theirs, a generic
/// configuration may carry one.
pub fn expected_issuer(provider: Provider, directory: Option<&str>, configured: Option<&str>) -> ExpectedIssuer {
    match provider {
        Provider::Microsoft => match directory.map(uuid::Uuid::parse_str) {
            Some(Ok(tenant)) => ExpectedIssuer::Exact(format!("https://login.microsoftonline.com/{}/v2.0", tenant.hyphenated())),
            _ => ExpectedIssuer::MicrosoftAnyTenant,
        },
        Provider::Google => ExpectedIssuer::Exact("https://accounts.google.com".to_owned()),
        Provider::Generic => configured.map_or(ExpectedIssuer::Unknown, |issuer| ExpectedIssuer::Exact(issuer.to_owned())),
    }
}

/// The provider's mail server for a protocol, with its security.
pub fn mail_host(provider: Provider, protocol: Protocol) -> Option<(&'static str, i32, Security)> {
    match (provider, protocol) {
        (Provider::Microsoft, Protocol::Imap) => Some(("outlook.office365.com", 993, Security::Tls)),
        (Provider::Microsoft, Protocol::Pop3) => Some(("outlook.office365.com", 995, Security::Tls)),
        (Provider::Microsoft, Protocol::Smtp) => Some(("smtp.office365.com", 587, Security::Starttls)),
        (Provider::Google, Protocol::Imap) => Some(("imap.gmail.com", 993, Security::Tls)),
        (Provider::Google, Protocol::Pop3) => Some(("pop.gmail.com", 995, Security::Tls)),
        (Provider::Google, Protocol::Smtp) => Some(("smtp.gmail.com", 465, Security::Tls)),
        (Provider::Generic, _) => None,
    }
}

/// The only mail hosts a Microsoft or Google configuration's tokens are ever sent to (`None`: generic, where the
/// configuration's admin-set list decides).
pub fn provider_mail_hosts(provider: Provider) -> Option<&'static [&'static str]> {
    match provider {
        Provider::Microsoft => Some(&[
            "outlook.office365.com",
            "smtp.office365.com",
            "outlook.office.com",
            "imap-mail.outlook.com",
            "pop-mail.outlook.com",
            "smtp-mail.outlook.com",
        ]),
        Provider::Google => Some(&["imap.gmail.com", "pop.gmail.com", "smtp.gmail.com"]),
        Provider::Generic => None,
    }
}

/// Whether `host` is on `allowed`: exact names (any case), and `*.example.com` for the subdomains of example.com.
pub fn host_on_list<S: AsRef<str>>(allowed: &[S], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|entry| {
        let entry = entry.as_ref().to_ascii_lowercase();
        match entry.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
            None => host == entry,
        }
    })
}

pub fn default_security(protocol: Protocol) -> Security {
    match protocol {
        Protocol::Imap | Protocol::Pop3 => Security::Tls,
        Protocol::Smtp => Security::Starttls,
    }
}

pub fn default_port(protocol: Protocol, security: Security) -> i32 {
    match (protocol, security) {
        (Protocol::Imap, Security::Tls) => 993,
        (Protocol::Imap, _) => 143,
        (Protocol::Pop3, Security::Tls) => 995,
        (Protocol::Pop3, _) => 110,
        (Protocol::Smtp, Security::Tls) => 465,
        (Protocol::Smtp, Security::Starttls) => 587,
        (Protocol::Smtp, Security::None) => 25,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists_match_exact_names_and_subdomain_wildcards_only() {
        let allowed = ["mail.example.com", "*.corp.example"];
        assert!(host_on_list(&allowed, "MAIL.example.com"));
        assert!(host_on_list(&allowed, "mail.example.com."));
        assert!(host_on_list(&allowed, "imap.corp.example"));
        assert!(!host_on_list(&allowed, "corp.example"));
        assert!(!host_on_list(&allowed, "evilcorp.example"));
        assert!(!host_on_list(&allowed, "mail.example.com.evil.test"));
        assert!(!host_on_list(&allowed, "example.com"));
    }

    #[test]
    fn provider_presets_allow_their_own_mail_hosts() {
        for provider in [Provider::Microsoft, Provider::Google] {
            let allowed = provider_mail_hosts(provider).expect("preset list");
            for protocol in [Protocol::Imap, Protocol::Pop3, Protocol::Smtp] {
                let (host, _, _) = mail_host(provider, protocol).expect("preset host");
                assert!(host_on_list(allowed, host), "{provider:?} {host}");
            }
        }
        assert!(provider_mail_hosts(Provider::Generic).is_none());
    }

    #[test]
    fn preset_issuers_are_known_and_a_generic_one_is_configured() {
        let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let single = expected_issuer(Provider::Microsoft, Some(tenant), None);
        assert!(single.accepts(&format!("https://login.microsoftonline.com/{tenant}/v2.0")));
        assert!(!single.accepts("https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0"));
        let multi = expected_issuer(Provider::Microsoft, Some("organizations"), None);
        assert!(multi.accepts(&format!("https://login.microsoftonline.com/{tenant}/v2.0")));
        assert!(!multi.accepts("https://login.microsoftonline.com.evil.example/x/v2.0"));
        assert!(!multi.accepts("https://login.microsoftonline.com/organizations/v2.0"));
        let google = expected_issuer(Provider::Google, None, None);
        assert!(google.accepts("https://accounts.google.com"));
        assert!(!google.accepts("https://accounts.google.com/"));
        assert!(expected_issuer(Provider::Generic, None, None).accepts("https://anything.example"));
        let generic = expected_issuer(Provider::Generic, None, Some("https://id.example.com"));
        assert!(generic.accepts("https://id.example.com"));
        assert!(!generic.accepts("https://id.example.com.evil.example"));
    }
}
