//! Secrets by name: a value whose own format no detector knows (a password,
//! an API key of some vendor, an AWS secret key under another name), found
//! by what names it and by how random it looks. In text: `name = value`,
//! `name: value`, `"name": "value"`, `<name>value`, `?name=value&...`,
//! `Authorization: Bearer value`. For a column: its name (see
//! [`names_a_secret`]), and the value alone.
//!
//! A name is one holding a word of [`secret_names!`] (case-insensitive, with
//! any prefix or suffix: `db_password`, `X-Api-Key`, `clientSecret`),
//! unless its last word says it names a fact about a secret rather than the
//! secret (`private_key_id`, `token_type`, `password_changed_at`).

use std::ops::Range;

/// The words that name a secret, as a regular expression's alternation (one
/// text for the detector's pattern, the prefilter and column names).
macro_rules! secret_names {
    () => {
        "secret|passw(?:or)?d|passphrase|pwd|token|credential|authorization|\
         (?:api|access|private|signing|encryption|master|session|auth|client)[_-]?key"
    };
}

/// The detector's pattern: a name (its word, then the rest of the name,
/// group 1), a separator (`=`, `:`, `:=`, `=>`, or the `>` of an XML
/// element; quotes around the name and the value), an optional HTTP
/// authorization scheme, and the value (group 2): 16 characters or more of
/// those keys and tokens are made of.
pub(super) const PATTERN: &str = concat!(
    "(?i-u)(?:",
    secret_names!(),
    r#")([a-z0-9_.-]*)["']?\s*(?::=|=>|[:=>])\s*["']?(?:(?:bearer|basic|token|digest)\s+)?([a-z0-9+/=_.-]{16,})"#
);

/// The words alone, for the prefilter and for column names.
pub(super) const NAMES: &str = concat!("(?i-u)", secret_names!());

static NAME: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(NAMES).expect("the secret names make a pattern"));

/// Last words of a name that say it names a fact about a secret (its id,
/// type, expiry, where it is kept), not the secret.
const ABOUT_A_SECRET: &[&str] = &[
    "id",
    "ids",
    "uuid",
    "type",
    "kind",
    "name",
    "path",
    "file",
    "filename",
    "url",
    "uri",
    "endpoint",
    "hint",
    "question",
    "length",
    "len",
    "count",
    "exp",
    "expiry",
    "expires",
    "expiration",
    "in",
    "at",
    "ttl",
    "version",
    "prefix",
    "fingerprint",
    "policy",
    "format",
    "header",
    "required",
    "enabled",
    "set",
    "changed",
    "updated",
    "created",
    "rotated",
];

/// Whether the rest of a name after its secret's word (`_id` of
/// `private_key_id`, `ExpiresAt` of `tokenExpiresAt`) still names the
/// secret: its last word (split at non-alphanumerics and where lower case
/// turns upper) is not one of [`ABOUT_A_SECRET`].
pub(super) fn still_names_the_secret(rest: &str) -> bool {
    let bytes = rest.as_bytes();
    // Nothing after the word: the name is the word's.
    let Some(last) = bytes.iter().rposition(u8::is_ascii_alphanumeric) else { return true };
    let mut start = last;
    while start > 0 {
        let (before, here) = (bytes[start - 1], bytes[start]);
        if !before.is_ascii_alphanumeric() || (before.is_ascii_lowercase() && here.is_ascii_uppercase()) {
            break;
        }
        start -= 1;
    }
    let word = &rest[start..=last];
    !ABOUT_A_SECRET.iter().any(|about| about.eq_ignore_ascii_case(word))
}

/// Whether a column's name names a secret (`password`, `db_password`,
/// `api_key`, `X-Api-Key`, `client_secret`, `refresh_token`), and not a
/// fact about one (`token_type`, `private_key_id`).
pub fn names_a_secret(name: &str) -> bool {
    NAME.find(name).is_some_and(|word| still_names_the_secret(&name[word.end()..]))
}

/// Whether a named value looks random enough to be a secret, not a word, a
/// placeholder, a path or a date: 16 characters or more, at least two of
/// lower case, upper case and digits, changing between them at least three
/// times (`prod-db-v2` does once, `4eC39HqL` six times), and at least 2.75
/// bits of Shannon entropy per character. Measured on random tokens: 97% of
/// 16 hex digits pass (99.5% of 20), all base64 of 16 or more; UUIDs pass.
pub(super) fn looks_random(value: &str) -> bool {
    value.len() >= 16 && mixed(value.as_bytes()) >= 3 && entropy(value.as_bytes()) >= 2.75
}

/// A column's whole value named like a secret: trimmed, 8 printable ASCII
/// characters or more without spaces, at least two of lower case, upper
/// case and digits, and at least 2.5 bits of entropy per character (the
/// name already says a secret is there: `Winter2024!` is one, `true`,
/// `********`, `2024-05-06` and `changeme` are not). Its range, if so.
pub(super) fn secret_value(value: &str) -> Option<Range<usize>> {
    let start = value.len() - value.trim_ascii_start().len();
    let bytes = value.trim_ascii().as_bytes();
    let fits =
        bytes.len() >= 8 && bytes.iter().all(u8::is_ascii_graphic) && classes(bytes) >= 2 && entropy(bytes) >= 2.5;
    fits.then(|| start..start + bytes.len())
}

/// A character's class: lower case, upper case, digit, or other (0).
fn class(b: u8) -> u8 {
    match b {
        b'a'..=b'z' => 1,
        b'A'..=b'Z' => 2,
        b'0'..=b'9' => 3,
        _ => 0,
    }
}

/// How many of lower case, upper case and digits occur.
fn classes(bytes: &[u8]) -> u32 {
    let seen = bytes.iter().fold(0u8, |seen, &b| seen | (1 << class(b)));
    (seen >> 1).count_ones()
}

/// How often consecutive letters and digits change class (symbols
/// skipped), if at least two classes occur; else 0.
fn mixed(bytes: &[u8]) -> u32 {
    if classes(bytes) < 2 {
        return 0;
    }
    let mut changes = 0;
    let mut previous = 0;
    for &b in bytes {
        let c = class(b);
        if c != 0 {
            changes += u32::from(previous != 0 && c != previous);
            previous = c;
        }
    }
    changes
}

/// Shannon entropy in bits per character of the first 256 bytes (enough
/// to tell random from not; bounded work for long values).
fn entropy(bytes: &[u8]) -> f64 {
    let bytes = &bytes[..bytes.len().min(256)];
    let mut counts = [0u16; 256];
    for &b in bytes {
        counts[usize::from(b)] += 1;
    }
    let n = bytes.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / n).map(|p| -p * p.log2()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_whether_they_name_the_secret_or_a_fact_about_it() {
        for name in [
            "password",
            "db_password",
            "DB_PASSWORD",
            "passwd",
            "pwd",
            "secret",
            "client_secret",
            "clientSecret",
            "api_key",
            "apikey",
            "X-Api-Key",
            "access_key",
            "private_key",
            "credentials",
            "refresh_token",
            "password_hash",
            "stripe_secret_key",
        ] {
            assert!(names_a_secret(name), "{name}");
        }
        for name in [
            "private_key_id",
            "token_type",
            "tokenType",
            "password_changed_at",
            "tokenExpiresAt",
            "refresh_token_expires_in",
            "secret_name",
            "api_key_url",
            "key_id",
            "primary_key",
            "name",
            "email",
            "passport",
        ] {
            assert!(!names_a_secret(name), "{name}");
        }
    }

    #[test]
    fn random_values_are_told_from_words_paths_and_dates() {
        for value in [
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "3f9a1c2e7b10d4e5",
            "550e8400-e29b-41d4-a716-446655440000",
            "cGFzc3dvcmQxMjM0NTY=",
        ] {
            assert!(looks_random(value), "{value}");
        }
        for value in [
            "YOUR_API_KEY_HERE",
            "REPLACE_WITH_YOUR_TOKEN",
            "prod-db-credentials-v2",
            "acme-tls-cert-2024",
            "/var/lib/postgresql/16/main",
            "us-east-1.amazonaws.com",
            "xxxxxxxxxxxxxxxxxxxx",
            "AAAAAAAAAAAAAAAA1",
            "2024-05-06T10-11-12",
            "short1A",
        ] {
            assert!(!looks_random(value), "{value}");
        }
        assert_eq!(secret_value("  Winter2024!  "), Some(2..13));
        for value in ["true", "********", "2024-05-06", "changeme", "N/A", "a phrase with spaces in it"] {
            assert_eq!(secret_value(value), None, "{value}");
        }
    }
}
