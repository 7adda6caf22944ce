//! Input rules. Each failure names its field and never echoes a secret.

use crate::error::AppError;

pub fn non_empty(field: &str, value: &str, max_len: usize) -> Result<String, AppError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(AppError::validation(field, "required", format!("{field} must not be empty")));
    }
    if trimmed.chars().count() > max_len {
        return Err(AppError::validation(field, "too_long", format!("{field} must be at most {max_len} characters")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(AppError::validation(field, "invalid_characters", format!("{field} must not contain control characters")));
    }
    Ok(trimmed.to_owned())
}

pub fn slug(field: &str, value: &str) -> Result<String, AppError> {
    let ok = (2..=63).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(AppError::validation(
            field,
            "invalid_slug",
            format!("{field} must be 2 to 63 lowercase letters, digits or '-', not starting or ending with '-'"),
        ))
    }
}

/// A DNS hostname (letters, digits, '-', dots; labels of 1..=63) or an IP literal.
pub fn is_hostname(value: &str) -> bool {
    if value.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub fn hostname(field: &str, value: &str) -> Result<String, AppError> {
    let value = value.trim();
    if is_hostname(value) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(AppError::validation(field, "invalid_host", format!("{field} must be a hostname or an IP address")))
    }
}

/// A domain name with at least two labels, as used in addresses and from filters.
pub fn is_domain(value: &str) -> bool {
    value.contains('.') && value.parse::<std::net::IpAddr>().is_err() && is_hostname(value)
}

/// A plain mailbox address `local@domain` (no display name).
pub fn is_email(value: &str) -> bool {
    let Some((local, domain)) = value.rsplit_once('@') else { return false };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b));
    local_ok && value.len() <= 254 && is_domain(domain)
}

pub fn email(field: &str, value: &str) -> Result<String, AppError> {
    let value = value.trim();
    if is_email(value) {
        Ok(value.to_owned())
    } else {
        Err(AppError::validation(field, "invalid_email", format!("{field} must be an email address like name@example.com")))
    }
}

pub fn port(field: &str, value: i32) -> Result<i32, AppError> {
    if (1..=65535).contains(&value) {
        Ok(value)
    } else {
        Err(AppError::validation(field, "invalid_port", format!("{field} must be between 1 and 65535")))
    }
}

/// A from filter is a full address (exact match) or a domain (every address at it).
pub fn from_filter(field: &str, value: &str) -> Result<String, AppError> {
    let value = value.trim().to_ascii_lowercase();
    if is_email(&value) || is_domain(&value) {
        Ok(value)
    } else {
        Err(AppError::validation(
            field,
            "invalid_from_filter",
            format!("{field} must be an email address (exact match) or a domain (e.g. example.com)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for good in ["a@example.com", "first.last+tag@sub.example.co.uk", "x_y@a-b.io"] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "a@",
            "@example.com",
            "a@example",
            "a..b@example.com",
            "a b@example.com",
            "a@-x.com",
            "a@1.2.3.4",
            "Name <a@example.com>",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn hostnames_and_filters() {
        assert!(is_hostname("imap.example.com"));
        assert!(is_hostname("127.0.0.1"));
        assert!(is_hostname("::1"));
        assert!(!is_hostname("bad_host.com"));
        assert!(!is_hostname("-x.com"));
        assert!(!is_hostname("a..b"));
        assert_eq!(from_filter("f", "Sales@Example.com").expect("address"), "sales@example.com");
        assert_eq!(from_filter("f", "example.com").expect("domain"), "example.com");
        assert_eq!(from_filter("f", "not a filter").expect_err("bad").code(), "invalid_from_filter");
        assert_eq!(port("port", 0).expect_err("0").code(), "invalid_port");
        assert_eq!(port("port", 65536).expect_err("65536").code(), "invalid_port");
        assert_eq!(slug("slug", "Acme").expect_err("caps").code(), "invalid_slug");
    }
}
