//! Builds the RFC 5322 bytes of an outgoing message (lettre's message builder) from a plain description, and the SMTP
//! envelope that goes with them.
//!
//! - The output is 7-bit clean: text parts are `7bit` or quoted-printable, attachments base64, non-ASCII header values
//!   RFC 2047 encoded, so no server needs 8BITMIME.
//! - Bcc recipients are in the envelope only, never in the headers.
//! - Caller-supplied extra headers may not replace the ones Postbridge writes (From, To, Message-ID, Content-Type, ...)
//!   and no value may carry a line break (header injection).

use lettre::address::Address;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment as LettreAttachment, Mailbox as LettreMailbox, MultiPart, SinglePart};
use lettre::Message;

/// A display name and an address, e.g. `("Ann Example", "ann@example.com")`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: String,
}

impl Mailbox {
    pub fn new(name: Option<&str>, address: &str) -> Self {
        Mailbox { name: name.map(str::to_owned), address: address.to_owned() }
    }

    /// Just an address, no display name.
    pub fn address(address: &str) -> Self {
        Mailbox { name: None, address: address.to_owned() }
    }
}

/// A file attached to the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub filename: String,
    /// A MIME type such as `application/pdf` (parameters allowed).
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// What to send, as the outbox describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    /// Envelope recipients only: never written into the headers.
    pub bcc: Vec<Mailbox>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    /// Extra headers (e.g. `In-Reply-To`, `List-Unsubscribe`, `X-...`); the ones Postbridge writes are refused, see
    /// [`RESERVED_HEADERS`].
    pub headers: Vec<(String, String)>,
    pub attachments: Vec<Attachment>,
    /// `<id@domain>`, e.g. from [`new_message_id`]; kept across retries so a resent message is recognisable.
    pub message_id: String,
}

/// The message bytes and the SMTP envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Composed {
    /// The RFC 5322 message, CRLF line endings, 7-bit clean.
    pub raw: Vec<u8>,
    /// MAIL FROM (the From address).
    pub envelope_from: String,
    /// RCPT TO: To, Cc and Bcc, each address once (compared case-insensitively), in that order.
    pub envelope_to: Vec<String>,
}

/// Header names Postbridge writes itself (compared case-insensitively); every `Content-*` and `Resent-*` header is
/// refused too.
pub const RESERVED_HEADERS: &[&str] = &[
    "From",
    "Sender",
    "To",
    "Cc",
    "Bcc",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Return-Path",
    "Received",
    "DKIM-Signature",
];

/// Why a message cannot be built; `field` names the offending input (`to[1]`, `headers[0]`, `attachments[2].filename`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    #[error("{field}: {value:?} is not a valid email address")]
    InvalidAddress { field: String, value: String },
    #[error("{field}: line breaks and control characters are not allowed")]
    ControlCharacters { field: String },
    #[error("{field}: {name:?} is not a valid header name")]
    InvalidHeaderName { field: String, name: String },
    #[error("{field}: the {name} header is set by Postbridge and cannot be supplied")]
    ReservedHeader { field: String, name: String },
    #[error("{field}: the {name} header is given more than once")]
    DuplicateHeader { field: String, name: String },
    #[error("{field}: {value:?} is not a valid MIME content type")]
    InvalidContentType { field: String, value: String },
    #[error("{field}: must not be empty")]
    Empty { field: String },
    #[error("message_id: {value:?} is not of the form <id@domain>")]
    InvalidMessageId { value: String },
    #[error("to: at least one recipient (to, cc or bcc) is required")]
    NoRecipients,
    #[error("the message could not be built: {0}")]
    Build(String),
}

impl ComposeError {
    /// The input field at fault (`message` for a build failure).
    pub fn field(&self) -> &str {
        match self {
            ComposeError::InvalidAddress { field, .. }
            | ComposeError::ControlCharacters { field }
            | ComposeError::InvalidHeaderName { field, .. }
            | ComposeError::ReservedHeader { field, .. }
            | ComposeError::DuplicateHeader { field, .. }
            | ComposeError::InvalidContentType { field, .. }
            | ComposeError::Empty { field } => field,
            ComposeError::InvalidMessageId { .. } => "message_id",
            ComposeError::NoRecipients => "to",
            ComposeError::Build(_) => "message",
        }
    }
}

/// A fresh Message-ID, `<uuid@domain>` (`domain` is normally the From address's domain; an unusable one is replaced
/// by `postbridge.invalid`).
pub fn new_message_id(domain: &str) -> String {
    let domain = domain.trim().trim_start_matches('@').trim_end_matches('.').to_ascii_lowercase();
    let usable =
        !domain.is_empty() && domain.len() <= 200 && domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let domain = if usable { domain } else { "postbridge.invalid".to_owned() };
    format!("<{}@{}>", uuid::Uuid::new_v4().simple(), domain)
}

/// Builds the message and its envelope, or says which field is wrong.
pub fn compose(message: &OutgoingMessage) -> Result<Composed, ComposeError> {
    let from = mailbox("from", &message.from)?;
    check_message_id(&message.message_id)?;
    check_text("subject", &message.subject)?;

    let mut builder = Message::builder().from(from.clone()).subject(message.subject.clone());
    builder = builder.message_id(Some(message.message_id.clone()));
    if let Some(reply_to) = &message.reply_to {
        builder = builder.reply_to(mailbox("reply_to", reply_to)?);
    }

    let mut envelope_to: Vec<Address> = Vec::new();
    // Each recipient once, whatever its case; looked up in a set, so a long list costs no more than its length.
    let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut add_recipient = |address: &Address| {
        if known.insert(AsRef::<str>::as_ref(address).to_ascii_lowercase()) {
            envelope_to.push(address.clone());
        }
    };
    for (i, to) in message.to.iter().enumerate() {
        let mbox = mailbox(&format!("to[{i}]"), to)?;
        add_recipient(&mbox.email);
        builder = builder.to(mbox);
    }
    for (i, cc) in message.cc.iter().enumerate() {
        let mbox = mailbox(&format!("cc[{i}]"), cc)?;
        add_recipient(&mbox.email);
        builder = builder.cc(mbox);
    }
    for (i, bcc) in message.bcc.iter().enumerate() {
        // Never handed to the builder: lettre would drop a Bcc header anyway, but then nothing can go wrong.
        add_recipient(&mailbox(&format!("bcc[{i}]"), bcc)?.email);
    }
    if envelope_to.is_empty() {
        return Err(ComposeError::NoRecipients);
    }

    let mut seen_headers: Vec<String> = Vec::new();
    for (i, (name, value)) in message.headers.iter().enumerate() {
        let field = format!("headers[{i}]");
        let header_name = check_header_name(&field, name)?;
        if seen_headers.iter().any(|seen| seen.eq_ignore_ascii_case(name)) {
            return Err(ComposeError::DuplicateHeader { field, name: name.clone() });
        }
        seen_headers.push(name.clone());
        check_text(&field, value)?;
        builder = builder.raw_header(HeaderValue::new(header_name, value.clone()));
    }

    let body = body_part(message)?;
    let envelope = lettre::address::Envelope::new(Some(from.email.clone()), envelope_to.clone())
        .map_err(|e| ComposeError::Build(e.to_string()))?;
    let builder = builder.envelope(envelope);
    let built = match body {
        Body::Single(part) => builder.singlepart(part),
        Body::Multi(part) => builder.multipart(part),
    }
    .map_err(|e| ComposeError::Build(e.to_string()))?;

    Ok(Composed {
        raw: built.formatted(),
        envelope_from: from.email.to_string(),
        envelope_to: envelope_to.iter().map(ToString::to_string).collect(),
    })
}

enum Body {
    Single(SinglePart),
    Multi(MultiPart),
}

fn body_part(message: &OutgoingMessage) -> Result<Body, ComposeError> {
    let content = match (&message.text, &message.html) {
        (Some(text), Some(html)) => Body::Multi(
            MultiPart::alternative().singlepart(SinglePart::plain(text.clone())).singlepart(SinglePart::html(html.clone())),
        ),
        (None, Some(html)) => Body::Single(SinglePart::html(html.clone())),
        (Some(text), None) => Body::Single(SinglePart::plain(text.clone())),
        (None, None) => Body::Single(SinglePart::plain(String::new())),
    };
    if message.attachments.is_empty() {
        return Ok(content);
    }
    let mut mixed = match content {
        Body::Single(part) => MultiPart::mixed().singlepart(part),
        Body::Multi(part) => MultiPart::mixed().multipart(part),
    };
    for (i, attachment) in message.attachments.iter().enumerate() {
        let field = format!("attachments[{i}].filename");
        if attachment.filename.trim().is_empty() {
            return Err(ComposeError::Empty { field });
        }
        check_text(&field, &attachment.filename)?;
        let field = format!("attachments[{i}].content_type");
        check_text(&field, &attachment.content_type)?;
        let content_type = ContentType::parse(&attachment.content_type)
            .map_err(|_| ComposeError::InvalidContentType { field, value: attachment.content_type.clone() })?;
        // Bytes (not a String) are always base64-encoded.
        mixed = mixed.singlepart(LettreAttachment::new(attachment.filename.clone()).body(attachment.bytes.clone(), content_type));
    }
    Ok(Body::Multi(mixed))
}

fn mailbox(field: &str, mbox: &Mailbox) -> Result<LettreMailbox, ComposeError> {
    let invalid = || ComposeError::InvalidAddress { field: field.to_owned(), value: mbox.address.clone() };
    if mbox.address.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid());
    }
    let address: Address = mbox.address.parse().map_err(|_| invalid())?;
    let name = match &mbox.name {
        Some(name) => {
            check_text(&format!("{field}.name"), name)?;
            let trimmed = name.trim();
            (!trimmed.is_empty()).then(|| trimmed.to_owned())
        }
        None => None,
    };
    Ok(LettreMailbox::new(name, address))
}

/// A header value or name: no CR, LF or other control character (tab allowed).
fn check_text(field: &str, value: &str) -> Result<(), ComposeError> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ComposeError::ControlCharacters { field: field.to_owned() });
    }
    Ok(())
}

fn check_header_name(field: &str, name: &str) -> Result<HeaderName, ComposeError> {
    let invalid = || ComposeError::InvalidHeaderName { field: field.to_owned(), name: name.to_owned() };
    // RFC 5322 field name: printable US-ASCII except ':'.
    if name.is_empty() || name.len() > 76 || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(invalid());
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.iter().any(|reserved| reserved.eq_ignore_ascii_case(name))
        || lower.starts_with("content-")
        || lower.starts_with("resent-")
    {
        return Err(ComposeError::ReservedHeader { field: field.to_owned(), name: name.to_owned() });
    }
    HeaderName::new_from_ascii(name.to_owned()).map_err(|_| invalid())
}

fn check_message_id(id: &str) -> Result<(), ComposeError> {
    let invalid = || ComposeError::InvalidMessageId { value: id.to_owned() };
    let inner = id.strip_prefix('<').and_then(|rest| rest.strip_suffix('>')).ok_or_else(invalid)?;
    let (left, right) = inner.split_once('@').ok_or_else(invalid)?;
    let allowed = |c: char| c.is_ascii_graphic() && !"<>()[]\\,;:\"@".contains(c);
    if id.len() > 250 || left.is_empty() || right.is_empty() || !left.chars().all(allowed) || !right.chars().all(allowed) {
        return Err(invalid());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> OutgoingMessage {
        OutgoingMessage {
            from: Mailbox::new(Some("Ann Example"), "ann@example.com"),
            reply_to: None,
            to: vec![Mailbox::address("bob@example.org")],
            cc: vec![],
            bcc: vec![Mailbox::address("hidden@example.net")],
            subject: "Hello".into(),
            text: Some("Hi".into()),
            html: None,
            headers: vec![],
            attachments: vec![],
            message_id: new_message_id("example.com"),
        }
    }

    #[test]
    fn bcc_is_in_the_envelope_only() {
        let composed = compose(&message()).unwrap();
        let raw = String::from_utf8(composed.raw).unwrap();
        assert!(!raw.to_ascii_lowercase().contains("hidden@"), "{raw}");
        assert_eq!(composed.envelope_to, vec!["bob@example.org", "hidden@example.net"]);
        assert_eq!(composed.envelope_from, "ann@example.com");
    }

    #[test]
    fn refuses_injection_and_reserved_headers() {
        let mut m = message();
        m.headers = vec![("X-Tag".into(), "a\r\nBcc: evil@example.com".into())];
        assert_eq!(compose(&m).unwrap_err(), ComposeError::ControlCharacters { field: "headers[0]".into() });
        m.headers = vec![("content-type".into(), "text/html".into())];
        assert!(matches!(compose(&m).unwrap_err(), ComposeError::ReservedHeader { .. }));
        m.headers = vec![("Bad Name".into(), "x".into())];
        assert!(matches!(compose(&m).unwrap_err(), ComposeError::InvalidHeaderName { .. }));
        m.headers = vec![];
        m.subject = "Hi\nBcc: x@example.com".into();
        assert_eq!(compose(&m).unwrap_err().field(), "subject");
    }

    #[test]
    fn message_ids() {
        let id = new_message_id("Example.COM");
        assert!(id.starts_with('<') && id.ends_with("@example.com>"), "{id}");
        assert!(new_message_id("bad domain\r\n").ends_with("@postbridge.invalid>"));
        let mut m = message();
        m.message_id = "no-brackets@example.com".into();
        assert!(matches!(compose(&m).unwrap_err(), ComposeError::InvalidMessageId { .. }));
    }
}
