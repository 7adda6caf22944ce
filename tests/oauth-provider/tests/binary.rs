//! Runs the `postbridge-oauth-provider` binary the way a test script would.

use std::error::Error;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use postbridge_oauth_provider::pkce_challenge;
use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::Value;
use url::Url;

/// Kills the child process it owns when dropped, so a failing test leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_serves_the_code_flow_and_introspection_for_configured_clients() -> Result<(), Box<dyn Error>> {
    let redirect_uri = "http://127.0.0.1:9/cb";
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_postbridge-oauth-provider"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--client",
                &format!("mail-app:secret:{redirect_uri}"),
                "--user",
                "carol@example.com",
                "--access-token-ttl",
                "600",
            ])
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let stdout = child.0.stdout.take().ok_or("no stdout")?;
    // Read only the first line and close the pipe, as `head -n1` in a script would; the server must keep running.
    let first_line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await??;
    let base = first_line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected first line {first_line:?}"))?
        .to_string();

    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let verifier = "binary-test-verifier-0123456789-abcdefghijklmnop";
    let challenge = pkce_challenge(verifier);
    let response = http
        .get(format!("{base}/authorize"))
        .query(&[
            ("response_type", "code"),
            ("client_id", "mail-app"),
            ("redirect_uri", redirect_uri),
            ("scope", "openid email"),
            ("state", "s1"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = Url::parse(response.headers().get(LOCATION).ok_or("no Location")?.to_str()?)?;
    let code = location.query_pairs().find(|(name, _)| name == "code").map(|(_, value)| value.into_owned()).ok_or("no code")?;

    let tokens: Value = http
        .post(format!("{base}/token"))
        .basic_auth("mail-app", Some("secret"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ])
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(tokens["expires_in"], 600);
    let access_token = tokens["access_token"].as_str().ok_or("no access token")?;

    // As Dovecot calls it: introspection_url = http://mail-app:secret@HOST:PORT/introspect, introspection_mode = post.
    let info: Value = http
        .post(format!("{base}/introspect"))
        .basic_auth("mail-app", Some("secret"))
        .form(&[("token", access_token)])
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(info["active"], true);
    assert_eq!(info["email"], "carol@example.com");
    Ok(())
}

#[test]
fn the_binary_rejects_a_malformed_client_argument() -> Result<(), Box<dyn Error>> {
    let output = Command::new(env!("CARGO_BIN_EXE_postbridge-oauth-provider"))
        .args(["--listen", "127.0.0.1:0", "--client", "no-secret-or-uri"])
        .output()?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("ID:SECRET:REDIRECT_URI"));
    Ok(())
}
