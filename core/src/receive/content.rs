//! A received message made usable without a MIME parser on the client's side: its text and HTML bodies, its
//! threading headers, its attachments (listed; each downloadable) and a short snippet. Parsed once, when the
//! message is stored; a message that does not parse is still stored (raw) and flagged, never failing the poll.

use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};

pub(crate) use crate::protocols::error::stored_text;

pub use crate::store::json::Attachment;

/// The most of each body kept for the API; the whole message stays available at `.../raw`.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Characters of text in a snippet.
const SNIPPET_CHARS: usize = 200;
/// Attachments listed per message; a message with more lists the first ones (all stay in `.../raw`).
const MAX_ATTACHMENTS: usize = 100;
/// Bytes kept of a header value (a subject, an address, a message id): RFC 5322's longest line. Every field is
/// bounded, so a row, a list page and a `message.received` event stay small whatever the sender wrote.
pub const MAX_HEADER_BYTES: usize = 998;
/// Bytes kept of an attachment's file name.
const MAX_FILENAME_BYTES: usize = 255;
/// Bytes kept of a content type; a longer one is not a real type and reads as `application/octet-stream`.
const MAX_CONTENT_TYPE_BYTES: usize = 127;
/// Message ids kept of `References` (the most recent ones: the end of the thread).
const MAX_REFERENCES: usize = 100;
/// Bytes kept of a list of addresses (`To`, `Cc`) or message ids (`References`), whatever their count: each value is
/// bounded on its own, but a thousand of the longest would make every row of a list page a megabyte.
pub const MAX_LIST_BYTES: usize = 16 * 1024;

/// The first of `values` that fit in [`MAX_LIST_BYTES`] together.
pub(crate) fn within_list_bytes(values: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut left = MAX_LIST_BYTES;
    values
        .into_iter()
        .map_while(|value| {
            left = left.checked_sub(value.len())?;
            Some(value)
        })
        .collect()
}

/// What is kept of a parsed message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Content {
    pub text: Option<String>,
    pub html: Option<String>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    pub attachments: Vec<Attachment>,
    pub snippet: Option<String>,
    /// The message could not be parsed: only its raw bytes are stored.
    pub unparsed: bool,
}

/// Parses `raw`; `headers_only` for an oversized placeholder (no body to find).
pub fn parse(raw: &[u8], headers_only: bool) -> Content {
    // A parser bug met by a hostile message flags that message; it never fails the poll that stores the others.
    std::panic::catch_unwind(|| parse_unguarded(raw, headers_only))
        .unwrap_or_else(|_| Content { unparsed: true, ..Content::default() })
}

fn parse_unguarded(raw: &[u8], headers_only: bool) -> Content {
    let parser = MessageParser::default();
    let parsed = if headers_only { parser.parse_headers(raw) } else { parser.parse(raw) };
    let Some(message) = parsed.filter(|m| !m.parts.is_empty()) else {
        return Content { unparsed: true, ..Content::default() };
    };
    let in_reply_to = message.in_reply_to().as_text_list().and_then(|ids| ids.first()).map(|id| message_id(id));
    let references = message
        .references()
        .as_text_list()
        .map(|ids| {
            // The end of the thread is kept: the ids are taken from the last one back, then put in order again.
            let mut kept = within_list_bytes(ids.iter().rev().take(MAX_REFERENCES).map(|id| message_id(id)));
            kept.reverse();
            kept
        })
        .unwrap_or_default();
    if headers_only {
        return Content { in_reply_to, references, ..Content::default() };
    }
    let text = own_body(&message, BodyKind::Text);
    let html = own_body(&message, BodyKind::Html);
    let snippet = message.body_text(0).map(|body| stored_text(&snippet_of(&body), usize::MAX)).filter(|s| !s.is_empty());
    let attachments =
        message.attachments().take(MAX_ATTACHMENTS).zip(0..).map(|(part, index)| attachment_of(part, index)).collect();
    Content { text, html, in_reply_to, references, attachments, snippet, unparsed: false }
}

/// The decoded bytes of attachment `index` of `raw`, with its description.
pub fn attachment(raw: &[u8], index: i32) -> Option<(Attachment, Vec<u8>)> {
    let message = MessageParser::default().parse(raw)?;
    let position = u32::try_from(index).ok().filter(|i| (*i as usize) < MAX_ATTACHMENTS)?;
    let part = message.attachment(position)?;
    Some((attachment_of(part, index), part.contents().to_vec()))
}

/// A message id as stored: in angle brackets, bounded.
pub fn message_id(id: &str) -> String {
    stored_text(&format!("<{id}>"), MAX_HEADER_BYTES)
}

/// `html` without scripts, event handlers, forms, styles and URL schemes other than http(s), mailto and `cid:`
/// (links to the message's inline parts), safe to show in a web page.
/// Relative and scheme-relative URLs (`/v1/...`, `//host/x`) are dropped: they would resolve against whatever page
/// shows the message.
pub fn sanitize_html(html: &str) -> String {
    ammonia::Builder::default()
        .url_schemes(["http", "https", "mailto", "cid"].into_iter().collect())
        .url_relative(ammonia::UrlRelative::Deny)
        .clean(html)
        .to_string()
}

#[derive(Clone, Copy)]
enum BodyKind {
    Text,
    Html,
}

/// The message's own first body of that kind (mail-parser would otherwise convert the other kind), bounded.
fn own_body(message: &Message<'_>, kind: BodyKind) -> Option<String> {
    let part = match kind {
        BodyKind::Text => message.text_part(0),
        BodyKind::Html => message.html_part(0),
    }?;
    let body = match (&part.body, kind) {
        (PartType::Text(text), BodyKind::Text) => text,
        (PartType::Html(html), BodyKind::Html) => html,
        _ => return None,
    };
    Some(stored_text(body, MAX_BODY_BYTES))
}

fn attachment_of(part: &MessagePart<'_>, index: i32) -> Attachment {
    let content_type = part
        .content_type()
        .map(|ct| match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_owned(),
        })
        .filter(|ct| ct.len() <= MAX_CONTENT_TYPE_BYTES && !ct.contains('\0'))
        .unwrap_or_else(|| "application/octet-stream".to_owned())
        .to_ascii_lowercase();
    Attachment {
        index,
        filename: part.attachment_name().map(|name| stored_text(name, MAX_FILENAME_BYTES)),
        content_type,
        size: part.contents().len() as i64,
        content_id: part.content_id().map(|id| stored_text(id.trim_matches(['<', '>']), MAX_HEADER_BYTES)),
        inline: part.content_disposition().is_some_and(|cd| cd.is_inline()),
    }
}

/// The start of `text` with its whitespace folded, at most [`SNIPPET_CHARS`] characters.
fn snippet_of(text: &str) -> String {
    text.split_whitespace()
        .flat_map(|word| word.chars().chain([' ']))
        .take(SNIPPET_CHARS)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: Report\r\nMessage-ID: <m2@example.net>\r\n\
In-Reply-To: <m1@example.net>\r\nReferences: <m0@example.net> <m1@example.net>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello   there,\r\nthe report is attached.\r\n--alt\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n<p>Hello there, <img src=\"cid:logo@x\"></p>\r\n--alt--\r\n--outer\r\n\
Content-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n\
--outer\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--outer--\r\n";

    #[test]
    fn bodies_threading_and_attachments_are_found() {
        let content = parse(MIXED, false);
        assert_eq!(content.text.as_deref().map(str::trim_end), Some("Hello   there,\r\nthe report is attached."));
        assert!(content.html.as_deref().is_some_and(|h| h.contains("cid:logo@x")));
        assert_eq!(content.in_reply_to.as_deref(), Some("<m1@example.net>"));
        assert_eq!(content.references, vec!["<m0@example.net>", "<m1@example.net>"]);
        assert_eq!(content.snippet.as_deref(), Some("Hello there, the report is attached."));
        assert!(!content.unparsed);
        let names: Vec<_> =
            content.attachments.iter().map(|a| (a.index, a.filename.clone(), a.content_type.clone(), a.inline)).collect();
        assert_eq!(
            names,
            vec![
                (0, None, "image/png".to_owned(), true),
                (1, Some("report.pdf".to_owned()), "application/pdf".to_owned(), false)
            ]
        );
        assert_eq!(content.attachments[0].content_id.as_deref(), Some("logo@x"));
        let (pdf, bytes) = attachment(MIXED, 1).expect("attachment 1");
        assert_eq!(bytes, b"%PDF-1.4\n");
        assert_eq!(pdf.size, 9);
        assert!(attachment(MIXED, 2).is_none() && attachment(MIXED, -1).is_none());
    }

    #[test]
    fn a_plain_message_has_no_html_and_a_placeholder_keeps_its_threading() {
        let plain = b"Subject: hi\r\nIn-Reply-To: <x@y>\r\n\r\njust text\r\n";
        let content = parse(plain, false);
        assert_eq!(content.text.as_deref().map(str::trim_end), Some("just text"));
        assert_eq!(content.html, None, "not converted from the text");
        let head = parse(b"Subject: big\r\nIn-Reply-To: <x@y>\r\n\r\n", true);
        assert_eq!((head.in_reply_to.as_deref(), head.text, head.unparsed), (Some("<x@y>"), None, false));
        assert!(parse(b"", false).unparsed);
    }

    #[test]
    fn sanitised_html_keeps_the_text_and_inline_images_and_loses_what_runs() {
        let clean = sanitize_html("<p onclick=\"x()\">Hi <b>there</b><script>alert(1)</script><img src=\"cid:logo@x\"><a href=\"javascript:x()\">y</a></p>");
        assert!(clean.contains("Hi <b>there</b>") && clean.contains("cid:logo@x"), "{clean}");
        assert!(!clean.contains("script") && !clean.contains("onclick") && !clean.contains("javascript"), "{clean}");
        let links = sanitize_html(
            "<a href=\"//evil.example/x\">a</a><a href=\"/v1/accounts\">b</a><a href=\"ssh://h\">c</a>\
             <a href=\"tel:123\">d</a><a href=\"https://ok.example/\">e</a><a href=\"mailto:a@b.c\">f</a>",
        );
        for gone in ["evil.example", "/v1/accounts", "ssh:", "tel:"] {
            assert!(!links.contains(gone), "{gone} kept: {links}");
        }
        assert!(links.contains("https://ok.example/") && links.contains("mailto:a@b.c"), "{links}");
    }

    #[test]
    fn what_a_sender_writes_is_stored_without_nul_and_bounded() {
        let long = "x".repeat(5000);
        let raw = format!(
            "From: a@example.net\r\nSubject: =?utf-8?q?a=00b?=\r\nIn-Reply-To: <{long}@x>\r\nReferences: {refs}\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nbefore=00after\r\n--b\r\n\
             Content-Type: application/{long}\r\n\
             Content-ID: <{long}>\r\nContent-Disposition: attachment; filename*=utf-8''a%00{long}.txt\r\n\r\nbody\r\n--b--\r\n",
            refs = (0..300).map(|i| format!("<r{i}@x>")).collect::<Vec<_>>().join(" ")
        );
        let content = parse(raw.as_bytes(), false);
        assert!(!content.unparsed);
        let text = content.text.as_deref().expect("text body");
        assert!(text.starts_with("before\u{FFFD}after"), "{text:?}");
        let html = parse(b"Subject: x\r\nContent-Type: text/html\r\n\r\n<p>x\0y</p>\r\n", false).html;
        assert_eq!(html.as_deref().map(str::trim_end), Some("<p>x\u{FFFD}y</p>"));
        assert!(content.snippet.as_deref().is_some_and(|s| s.starts_with("before\u{FFFD}after")), "{:?}", content.snippet);
        assert!(content.in_reply_to.as_deref().is_some_and(|id| id.len() <= MAX_HEADER_BYTES));
        assert_eq!(content.references.len(), MAX_REFERENCES);
        assert_eq!(content.references.last().map(String::as_str), Some("<r299@x>"), "the end of the thread is kept");
        // A hundred of the longest ids would be 100 KB: the last ones within the list's bytes are kept, in order.
        let long_ids: Vec<String> = (0..100).map(|i| format!("<{i}{}@x>", "r".repeat(900))).collect();
        let threaded = parse(format!("Subject: x\r\nReferences: {}\r\n\r\nbody\r\n", long_ids.join(" ")).as_bytes(), false);
        let kept = threaded.references.iter().map(String::len).sum::<usize>();
        assert!(kept <= MAX_LIST_BYTES && kept > MAX_LIST_BYTES - 1000, "{kept} bytes kept");
        assert_eq!(threaded.references.last(), long_ids.last(), "the end of the thread is kept");
        assert_eq!(threaded.references[..], long_ids[100 - threaded.references.len()..], "in order");
        let attached = &content.attachments[0];
        assert_eq!(attached.content_type, "application/octet-stream", "an oversized type is no type");
        let name = attached.filename.as_deref().expect("a file name");
        assert!(name.starts_with("a\u{FFFD}x") && name.len() <= MAX_FILENAME_BYTES, "{name:?}");
        assert!(attached.content_id.as_deref().is_some_and(|id| id.len() <= MAX_HEADER_BYTES));
        let stored = serde_json::to_string(&content.attachments).expect("serialises");
        assert!(!stored.contains("\\u0000"), "jsonb refuses \\u0000: {stored}");
    }

    #[test]
    fn bodies_are_cut_on_a_character_boundary() {
        assert_eq!(crate::protocols::error::cut_at_char("aé", 2), "a");
        assert_eq!(snippet_of("  a\r\n\tb  "), "a b");
    }
}
