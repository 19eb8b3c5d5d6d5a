//! Detectors by value: a regular expression finds candidates, and a check
//! confirms them where the format carries one (Luhn for card numbers,
//! mod 97 for IBANs, the assigned ranges of SSNs), so that order numbers
//! and timestamps of the right length are not mistaken for secrets.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

/// What a detector looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Detector {
    /// In [`Detector::ALL`]'s order: the discriminant indexes tables.
    Card,
    Email,
    Phone,
    Ssn,
    Iban,
    AwsAccessKey,
    AwsSecretKey,
    GithubToken,
    SlackToken,
    Jwt,
    PrivateKey,
    UrlPassword,
}

impl Detector {
    pub const ALL: [Detector; 12] = [
        Detector::Card,
        Detector::Email,
        Detector::Phone,
        Detector::Ssn,
        Detector::Iban,
        Detector::AwsAccessKey,
        Detector::AwsSecretKey,
        Detector::GithubToken,
        Detector::SlackToken,
        Detector::Jwt,
        Detector::PrivateKey,
        Detector::UrlPassword,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Card => "card",
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::Ssn => "ssn",
            Detector::Iban => "iban",
            Detector::AwsAccessKey => "aws_access_key",
            Detector::AwsSecretKey => "aws_secret_key",
            Detector::GithubToken => "github_token",
            Detector::SlackToken => "slack_token",
            Detector::Jwt => "jwt",
            Detector::PrivateKey => "private_key",
            Detector::UrlPassword => "url_password",
        }
    }

    pub fn parse(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.as_str() == name)
    }

    fn pattern(self) -> &'static Regex {
        &PATTERNS[self as usize]
    }

    /// The part of a match that is the secret (a URL's password, not the URL).
    fn secret_group(self) -> usize {
        match self {
            Detector::AwsSecretKey | Detector::UrlPassword => 1,
            _ => 0,
        }
    }
}

/// One detector's pattern each, in [`Detector::ALL`]'s order. ASCII word
/// boundaries: values are mostly ASCII, and the lazy DFA handles them.
static PATTERNS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        // 13-19 digits, optionally grouped by single spaces or dashes.
        r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)",
        r"(?-u:\b)[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?-u:\b)",
        // E.164 with optional grouping, or North American with separators.
        r"(?:\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,5}\)?){1,5}[0-9](?-u:\b)|(?:\([2-9][0-9]{2}\)[ ]?|(?-u:\b)[2-9][0-9]{2}[.-])[0-9]{3}[.-][0-9]{4}(?-u:\b))",
        r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)",
        r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)",
        r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
        // Named in context: `key = X`, `key: X`, `key X`, `<Key>X<`, a YAML
        // `name: KEY` / `value: X` pair.
        r#"(?i:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key|aws_?secret)["'>]?\s*[:=]?\s*(?:-?\s*value\s*:\s*)?["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|\z)"#,
        r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})(?-u:\b)",
        r"(?:(?-u:\b)xox[abposr]-[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+|https://hooks\.slack\.com/services/[A-Za-z0-9_/]+)",
        r"(?-u:\b)eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?s:.*?)(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\z)",
        r"(?-u:\b)[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:([^\s/@]+)@",
    ]
    .iter()
    .map(|p| Regex::new(p).expect("the detectors' patterns are valid"))
    .collect()
});

/// Whether the digits pass the Luhn check.
fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// A card number: the usual lengths and issuer prefixes, one kind of
/// separator at most, and the Luhn check.
fn card(candidate: &str) -> bool {
    let separators: Vec<u8> = candidate.bytes().filter(|b| !b.is_ascii_digit()).collect();
    if separators.windows(2).any(|w| w[0] != w[1]) {
        return false;
    }
    let digits: Vec<u8> = candidate.bytes().filter(u8::is_ascii_digit).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    // Grouped numbers are grouped in fours (Amex: 4-6-5).
    if !separators.is_empty() {
        let groups: Vec<usize> = candidate.split(|c: char| !c.is_ascii_digit()).map(str::len).collect();
        let fours = groups[..groups.len() - 1].iter().all(|&g| g == 4) && groups.last().is_some_and(|&g| g <= 4);
        let amex = groups == [4, 6, 5] || groups == [4, 6, 4];
        if !fours && !amex {
            return false;
        }
    }
    let prefix = |n: usize| -> u32 { std::str::from_utf8(&digits[..n]).ok().and_then(|s| s.parse().ok()).unwrap_or(0) };
    let issuer = matches!(digits[0], b'4')
        || (51..=55).contains(&prefix(2))
        || (2221..=2720).contains(&prefix(4))
        || matches!(prefix(2), 34 | 37 | 36 | 38 | 30 | 35 | 65 | 62)
        || prefix(4) == 6011
        || (644..=649).contains(&prefix(3));
    issuer && luhn(&digits)
}

/// Whether a number's digits (all of the value) are a card number: for
/// card numbers stored as numbers.
pub fn is_card_number(value: &str) -> bool {
    (13..=19).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit()) && card(value)
}

/// An SSN as assigned: no area 000, 666 or 9xx, no group 00, no serial 0000.
fn ssn(candidate: &str) -> bool {
    let parts: Vec<&str> = candidate.split('-').collect();
    let [area, group, serial] = parts[..] else { return false };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// An IBAN: its country's length range and the mod-97 check.
fn iban(candidate: &str) -> bool {
    let compact: Vec<u8> = candidate.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    // Grouped IBANs are grouped in fours.
    if candidate.contains(' ') {
        let groups: Vec<usize> = candidate.split(' ').map(str::len).collect();
        if groups[..groups.len() - 1].iter().any(|&g| g != 4) {
            return false;
        }
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder = 0u32;
    for &b in rearranged {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 { (remainder * 100 + value) % 97 } else { (remainder * 10 + value) % 97 };
    }
    remainder == 1
}

/// A phone number: 8-15 digits in all (E.164), of which a North American
/// one has exactly 10.
fn phone(candidate: &str) -> bool {
    let digits = candidate.bytes().filter(u8::is_ascii_digit).count();
    if candidate.starts_with('+') { (8..=15).contains(&digits) } else { digits == 10 }
}

/// A JWT: its header is base64url-encoded JSON.
fn jwt(candidate: &str) -> bool {
    use base64::Engine;
    let header = candidate.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .is_ok_and(|h| h.first() == Some(&b'{') && h.last() == Some(&b'}'))
}

fn confirmed(detector: Detector, candidate: &str) -> bool {
    match detector {
        Detector::Card => card(candidate),
        Detector::Ssn => ssn(candidate),
        Detector::Iban => iban(candidate),
        Detector::Phone => phone(candidate),
        Detector::Jwt => jwt(candidate),
        _ => true,
    }
}

/// A secret found in a value: where, and by which detector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub detector: Detector,
    pub range: Range<usize>,
}

/// The order detectors claim text in: the most specific first, so that a
/// URL's password is not taken for an e-mail address's local part, nor a
/// token in a URL for anything else.
const PRECEDENCE: [Detector; 12] = [
    Detector::PrivateKey,
    Detector::Jwt,
    Detector::GithubToken,
    Detector::SlackToken,
    Detector::AwsAccessKey,
    Detector::AwsSecretKey,
    Detector::UrlPassword,
    Detector::Iban,
    Detector::Card,
    Detector::Ssn,
    Detector::Phone,
    Detector::Email,
];

/// Whether the text before a candidate rules it out: an "address" right
/// after `scheme://` is a URL's user name.
fn ruled_out(detector: Detector, before: &str) -> bool {
    detector == Detector::Email && before.ends_with("//")
}

/// The detectors whose pattern could match `value`, from one pass over its
/// bytes and a few substring searches: most values (names, statuses, ids,
/// timestamps, hashes) rule every detector out without running a pattern.
fn candidates(value: &str) -> [bool; 12] {
    let bytes = value.as_bytes();
    // One branch-free pass: which signs occur, how many digits and capitals.
    let (mut signs, mut digits, mut upper) = (0u16, 0usize, 0usize);
    for &b in bytes {
        let class = BYTE_CLASS[b as usize];
        signs |= class;
        digits += usize::from(class & DIGIT != 0);
        upper += usize::from(class & UPPER != 0);
    }
    let sign = |s: u16| signs & s != 0;
    // Substring searches only where the cheap signs allow a match.
    let has = |needle: &str| memchr::memmem::find(bytes, needle.as_bytes()).is_some();
    let long = bytes.len();
    [
        digits >= 13 && longest_digit_run(bytes) >= 13,
        sign(AT) && sign(DOT),
        (sign(PLUS) && digits >= 8) || (digits >= 10 && sign(DASH | DOT | PAREN)),
        sign(DASH) && digits >= 9,
        upper >= 2 && digits >= 2 && long >= 15,
        upper >= 4 && digits + upper >= 20 && (has("AKIA") || has("ASIA")),
        long >= 46 && bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"secret")),
        long >= 40 && sign(UNDERSCORE) && (has("gh") || has("github_pat_")),
        (sign(X) && has("xox")) || (sign(COLON) && has("hooks.slack.com")),
        sign(CAPITAL_J) && sign(DOT) && has("eyJ"),
        sign(DASH) && upper >= 10 && has("PRIVATE KEY-----"),
        sign(AT) && sign(COLON) && has("://"),
    ]
}

const DIGIT: u16 = 1;
const UPPER: u16 = 1 << 1;
const AT: u16 = 1 << 2;
const DASH: u16 = 1 << 3;
const PLUS: u16 = 1 << 4;
const DOT: u16 = 1 << 5;
const COLON: u16 = 1 << 6;
const X: u16 = 1 << 7;
const CAPITAL_J: u16 = 1 << 8;
const UNDERSCORE: u16 = 1 << 9;
const PAREN: u16 = 1 << 10;

/// The signs each byte gives.
static BYTE_CLASS: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'0'..=b'9' => DIGIT,
            b'J' => UPPER | CAPITAL_J,
            b'A'..=b'Z' => UPPER,
            b'@' => AT,
            b'-' => DASH,
            b'+' => PLUS,
            b'.' => DOT,
            b':' => COLON,
            b'x' => X,
            b'_' => UNDERSCORE,
            b'(' => PAREN,
            _ => 0,
        };
        b += 1;
    }
    table
};

/// The longest run of digits, allowing one space or dash between groups
/// (card numbers are written grouped).
fn longest_digit_run(bytes: &[u8]) -> usize {
    let (mut run, mut longest, mut previous_separator) = (0usize, 0usize, false);
    for &b in bytes {
        if b.is_ascii_digit() {
            run += 1;
            longest = longest.max(run);
            previous_separator = false;
        } else if matches!(b, b' ' | b'-') && !previous_separator && run > 0 {
            previous_separator = true;
        } else {
            run = 0;
            previous_separator = false;
        }
    }
    longest
}

/// Every confirmed finding of `detectors` in `value`, in order. Where two
/// overlap, the more specific detector claims the text; two that find the
/// very same text (a token used as a URL's password) are both reported.
pub fn find(value: &str, detectors: &[Detector]) -> Vec<Finding> {
    let mut found: Vec<Finding> = Vec::new();
    let possible = candidates(value);
    if !detectors.iter().any(|d| possible[*d as usize]) {
        return found;
    }
    let mut claim = |detector: Detector, whole: regex::Match<'_>, secret: regex::Match<'_>| {
        if !confirmed(detector, whole.as_str()) || ruled_out(detector, &value[..whole.start()]) {
            return;
        }
        let range = secret.range();
        if found.len() >= MAX_FINDINGS
            || found.iter().any(|f| f.range.start < range.end && range.start < f.range.end && f.range != range)
        {
            return;
        }
        found.push(Finding { detector, range });
    };
    for detector in PRECEDENCE.into_iter().filter(|d| possible[*d as usize] && detectors.contains(d)) {
        let group = detector.secret_group();
        if group == 0 {
            for whole in detector.pattern().find_iter(value) {
                claim(detector, whole, whole);
            }
        } else {
            for captures in detector.pattern().captures_iter(value) {
                if let (Some(whole), Some(secret)) = (captures.get(0), captures.get(group)) {
                    claim(detector, whole, secret);
                }
            }
        }
    }
    // A value crowded with findings (a hostile one, or a dump) is masked
    // whole rather than searched without bound.
    if found.len() >= MAX_FINDINGS {
        let detector = found[0].detector;
        return vec![Finding { detector, range: 0..value.len() }];
    }
    found.sort_by_key(|f| f.range.start);
    found
}

/// Findings in one value beyond which it is masked whole.
const MAX_FINDINGS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn detected(value: &str) -> Vec<&'static str> {
        find(value, &Detector::ALL).iter().map(|f| f.detector.as_str()).collect()
    }

    #[test]
    fn detectors_index_their_tables_by_discriminant() {
        for (i, d) in Detector::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i, "{d:?}");
        }
    }

    #[test]
    fn checksums_tell_secrets_from_look_alikes() {
        assert_eq!(detected("4111 1111 1111 1111"), ["card"]);
        assert_eq!(detected("4111-1111-1111-1112"), Vec::<&str>::new(), "Luhn fails");
        assert_eq!(detected("3782 822463 10005"), ["card"], "Amex 4-6-5");
        assert_eq!(detected("order 4111111111111112"), Vec::<&str>::new());
        assert_eq!(detected("DE89 3704 0044 0532 0130 00"), ["iban"]);
        assert_eq!(detected("DE88 3704 0044 0532 0130 00"), Vec::<&str>::new(), "mod 97 fails");
        assert_eq!(detected("123-45-6789"), ["ssn"]);
        assert_eq!(detected("666-45-6789"), Vec::<&str>::new());
        assert_eq!(detected("2024-05-06"), Vec::<&str>::new());
    }

    #[test]
    fn the_secret_part_of_a_match_is_what_is_found() {
        let url = "postgres://app:s3cr3t@db:5432/app";
        let found = find(url, &Detector::ALL);
        assert_eq!(found.len(), 1);
        assert_eq!(&url[found[0].range.clone()], "s3cr3t");
        let line = "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let found = find(line, &Detector::ALL);
        assert_eq!(&line[found[0].range.clone()], "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
    }
}
