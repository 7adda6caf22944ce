//! The page a person sees at the end of "Connect your mailbox" when the sign-in had no return URL to go back to
//! (or could not be tied to one). It speaks to that person, not to an operator: what happened, in a plain sentence,
//! and what to do next. Fixes only an administrator can make are named as such; their technical details sit in a
//! folded section (and, for a wrong or unnamed account, in the account's `last_error` in the API). The machine
//! reason is kept out of the headline, as a reference to quote.

use postbridge_core::access::tenants::Branding;
use postbridge_core::connect::grants::CallbackOutcome;

/// What the page says.
struct Copy {
    headline: &'static str,
    what_happened: String,
    next: String,
    /// Technical details worth showing to an administrator.
    admin_details: bool,
}

fn copy(outcome: &CallbackOutcome, app: &str) -> Copy {
    let mailbox = outcome.mailbox.as_deref().unwrap_or("your mailbox");
    let start_again = format!("Go back to {app} and start connecting your mailbox again.");
    let ask_admin = "Please contact your administrator and mention the reference below; there is nothing you need to change.";
    let (headline, what_happened, next, admin_details) = match outcome.reason.as_str() {
        "connected" => (
            "Your mailbox is connected",
            format!("{mailbox} is now connected to {app}."),
            format!("You can close this window and return to {app}."),
            false,
        ),
        "access_denied" => (
            "Your mailbox was not connected",
            format!("Access was not granted, so {app} cannot use {mailbox}."),
            format!("If that was a mistake, go back to {app}, connect the mailbox again and accept the request."),
            false,
        ),
        "state_expired" => ("This sign-in link has expired", "Sign-in links work for 10 minutes.".to_owned(), start_again, false),
        "state_used" => ("This sign-in link was already used", "Each sign-in link works once.".to_owned(), start_again, false),
        "invalid_state" => {
            ("This sign-in link is not valid", format!("The link is incomplete or was not issued by {app}."), start_again, false)
        }
        "wrong_mailbox" => (
            "You signed in with a different account",
            match outcome.signed_in_as.as_deref() {
                Some(who) => format!("You signed in as {who}, but this connection is for {mailbox}."),
                None => format!("This connection is for {mailbox}, but you signed in with another account."),
            },
            format!(
                "Go back to {app}, start again and sign in as {mailbox}. If it is a shared mailbox you open with your own \
                 account, ask your administrator to set it up as a shared mailbox."
            ),
            false,
        ),
        "unknown_identity" => (
            "Your mailbox could not be connected",
            "Your mail provider did not say which account you signed in with.".to_owned(),
            ask_admin.to_owned(),
            false,
        ),
        "invalid_client" | "issuer_mismatch" | "id_token_mismatch" | "no_refresh_token" | "provider_error" => (
            "Your mailbox could not be connected",
            format!("{app}'s connection to your mail provider needs attention from an administrator."),
            ask_admin.to_owned(),
            true,
        ),
        _ => (
            "Your mailbox could not be connected",
            "Something went wrong while finishing the sign-in.".to_owned(),
            format!(
                "Go back to {app} and try again. If it keeps failing, contact your administrator and mention the \
                 reference below."
            ),
            true,
        ),
    };
    Copy { headline, what_happened, next, admin_details }
}

/// The whole page. Everything shown is escaped; the logo is an https URL checked when the tenant set it.
pub fn render(outcome: &CallbackOutcome, branding: Option<&Branding>) -> String {
    let app = branding.map(|b| b.name.as_str()).unwrap_or("the app");
    let copy = copy(outcome, app);
    let logo = branding
        .and_then(|b| b.logo_url.as_deref())
        .map(|url| format!(r#"<img class="logo" src="{}" alt="{}" referrerpolicy="no-referrer">"#, escape(url), escape(app)))
        .unwrap_or_default();
    let details = if copy.admin_details {
        format!("<details><summary>Details for your administrator</summary><p>{}</p></details>", escape(&outcome.message))
    } else {
        String::new()
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{headline}</title>
<style>
body {{ margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa; }}
main {{ max-width: 32rem; margin: 12vh auto 0; padding: 2rem; background: #fff; border: 1px solid #d0d7de; border-radius: 12px; }}
.logo {{ max-height: 48px; max-width: 12rem; margin-bottom: 1rem; }}
h1 {{ font-size: 1.4rem; margin: 0 0 1rem; }}
.reference {{ color: #59636e; font-size: 0.85rem; margin-top: 2rem; }}
details {{ font-size: 0.9rem; color: #59636e; }}
</style>
</head>
<body>
<main class="{status}">
{logo}
<h1>{headline}</h1>
<p>{what_happened}</p>
<p>{next}</p>
{details}
<p class="reference">Reference: <code>{reason}</code></p>
</main>
</body>
</html>
"#,
        headline = escape(copy.headline),
        status = if outcome.success { "success" } else { "error" },
        what_happened = escape(&copy.what_happened),
        next = escape(&copy.next),
        reason = escape(&outcome.reason),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(reason: &str) -> CallbackOutcome {
        CallbackOutcome {
            success: reason == "connected",
            reason: reason.to_owned(),
            message: "the provider refused: invalid_client <b>".to_owned(),
            account_id: None,
            return_url: None,
            tenant_id: None,
            mailbox: Some("ada@example.com".to_owned()),
            signed_in_as: Some("eve@example.com".to_owned()),
        }
    }

    #[test]
    fn the_page_speaks_to_the_person_and_escapes_what_it_shows() {
        let branding =
            Branding { name: "Acme <CRM>".to_owned(), logo_url: Some("https://acme.example/logo.png?a=1&b=\"".to_owned()) };
        let page = render(&outcome("wrong_mailbox"), Some(&branding));
        assert!(page.contains("<h1>You signed in with a different account</h1>"), "{page}");
        assert!(page.contains("You signed in as eve@example.com, but this connection is for ada@example.com."), "{page}");
        assert!(page.contains("ask your administrator"), "an end user cannot change the account: {page}");
        assert!(!page.contains("mark the account"), "{page}");
        assert!(page.contains("Acme &lt;CRM&gt;") && !page.contains("<CRM>"), "{page}");
        assert!(page.contains(r#"src="https://acme.example/logo.png?a=1&amp;b=&quot;""#), "{page}");
        assert!(page.contains(r#"<html lang="en">"#) && page.contains(r#"name="viewport""#));

        let admin = render(&outcome("invalid_client"), None);
        assert!(admin.contains("the app&#39;s connection to your mail provider needs attention"), "{admin}");
        assert!(admin.contains("Details for your administrator") && admin.contains("invalid_client &lt;b&gt;"), "{admin}");
        assert!(!admin.contains("<h1>invalid_client"), "the reason is a reference, not the headline");
        let connected = render(&outcome("connected"), None);
        assert!(connected.contains("You can close this window"), "{connected}");
        assert!(!connected.contains("<details>"), "{connected}");
    }
}
