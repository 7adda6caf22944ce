//! Runs the Postbridge OAuth2/OIDC provider stand-in as a process, for test scripts (e.g. next to a mail server).
//!
//! Prints `listening on http://HOST:PORT` on the first line of stdout once it accepts connections, then the endpoint
//! URLs, and runs until interrupted.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;

use clap::Parser;
use postbridge_oauth_provider::MockProvider;

/// A local OAuth2 / OpenID Connect provider stand-in (authorization code + PKCE, refresh, client credentials,
/// introspection, userinfo).
#[derive(Debug, Parser)]
#[command(name = "postbridge-oauth-provider", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// A client as ID:SECRET:REDIRECT_URI (empty SECRET = public client); repeat, also with the same ID to add
    /// redirect URIs.
    #[arg(long = "client", value_name = "ID:SECRET:REDIRECT_URI")]
    clients: Vec<String>,

    /// The user who signs in and consents at /authorize.
    #[arg(long, value_name = "EMAIL")]
    user: Option<String>,

    /// `expires_in` of access tokens, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = postbridge_oauth_provider::DEFAULT_ACCESS_TOKEN_TTL_SECONDS,
        allow_negative_numbers = true
    )]
    access_token_ttl: i64,

    /// Keep refresh tokens valid on refresh instead of rotating them.
    #[arg(long)]
    no_rotate_refresh_tokens: bool,

    /// Return no refresh token from code exchanges.
    #[arg(long)]
    no_refresh_token: bool,

    /// Return no id_token.
    #[arg(long)]
    no_id_token: bool,

    /// Deny consent at /authorize (error=access_denied).
    #[arg(long)]
    deny_consent: bool,
}

/// A client as registered: secret and redirect URIs.
type Clients = BTreeMap<String, (Option<String>, Vec<String>)>;

/// Parses the `--client` values, merging repeated ids.
fn parse_clients(values: &[String]) -> anyhow::Result<Clients> {
    let mut clients = Clients::new();
    for value in values {
        let mut parts = value.splitn(3, ':');
        let (Some(id), Some(secret), Some(redirect_uri)) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("--client {value:?}: expected ID:SECRET:REDIRECT_URI");
        };
        if id.is_empty() || redirect_uri.is_empty() {
            anyhow::bail!("--client {value:?}: ID and REDIRECT_URI must not be empty");
        }
        let secret = (!secret.is_empty()).then(|| secret.to_string());
        let entry = clients.entry(id.to_string()).or_insert_with(|| (secret.clone(), Vec::new()));
        if entry.0 != secret {
            anyhow::bail!("--client {value:?}: client {id:?} was given with two different secrets");
        }
        entry.1.push(redirect_uri.to_string());
    }
    Ok(clients)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let clients = parse_clients(&args.clients)?;
    let provider = MockProvider::start_on(args.listen).await?;
    for (id, (secret, redirect_uris)) in &clients {
        let redirect_uris: Vec<&str> = redirect_uris.iter().map(String::as_str).collect();
        provider.register_client(id, secret.as_deref(), &redirect_uris);
    }
    if let Some(user) = &args.user {
        provider.set_consenting_user(user);
    }
    provider.set_access_token_ttl(args.access_token_ttl);
    provider.set_rotate_refresh_tokens(!args.no_rotate_refresh_tokens);
    provider.set_issue_refresh_token(!args.no_refresh_token);
    provider.set_include_id_token(!args.no_id_token);
    provider.set_deny_consent(args.deny_consent);

    let banner = format!(
        "listening on {}\nauthorize {}\ntoken {}\nintrospect {}\nuserinfo {}\ndiscovery {}\n",
        provider.base_url(),
        provider.authorize_url(),
        provider.token_url(),
        provider.introspection_url(),
        provider.userinfo_url(),
        provider.openid_configuration_url(),
    );
    // A script may read only the first line and close the pipe (`head -n1`): keep serving regardless.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    drop(out);

    tokio::signal::ctrl_c().await?;
    provider.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_merge_and_keep_colons_in_redirect_uris() -> anyhow::Result<()> {
        let clients = parse_clients(&[
            "app:s3cret:http://127.0.0.1:8080/oauth/callback".to_string(),
            "app:s3cret:http://localhost:8080/cb".to_string(),
            "spa::http://127.0.0.1/cb".to_string(),
        ])?;
        assert_eq!(
            clients.get("app"),
            Some(&(
                Some("s3cret".to_string()),
                vec!["http://127.0.0.1:8080/oauth/callback".to_string(), "http://localhost:8080/cb".to_string()]
            ))
        );
        assert_eq!(clients.get("spa"), Some(&(None, vec!["http://127.0.0.1/cb".to_string()])));
        assert!(parse_clients(&["nocolon".to_string()]).is_err());
        assert!(parse_clients(&["a:x:http://h/1".to_string(), "a:y:http://h/2".to_string()]).is_err());
        Ok(())
    }
}
