//! Detectors by value: a regular expression finds candidates, and a check
//! confirms them where the format carries one (Luhn for card numbers,
//! mod 97 for IBANs, the assigned ranges of SSNs), so that order numbers
//! and timestamps of the right length are not mistaken for secrets.
//!
//! Formats that cannot be mistaken inside a longer token are found there
//! too, glued to whatever a query concatenated them with: prefixed tokens
//! by prefix and length (`AKIA`, `ghp_`, `xoxb-`, `eyJ`), card numbers and
//! IBANs by their own lengths and checks ([`super::checks`]). Formats that
//! glued digits make ambiguous (SSNs, phone numbers) keep their word
//! boundaries. Secrets without a format of their own are found by their
//! names ([`super::by_name`]).

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

use super::{by_name, checks};

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
    SecretByName,
}

impl Detector {
    pub const ALL: [Detector; 13] = [
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
        Detector::SecretByName,
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
            Detector::SecretByName => "secret_by_name",
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
            Detector::SecretByName => 2,
            _ => 0,
        }
    }
}

/// One detector's pattern each, in [`Detector::ALL`]'s order. ASCII word
/// boundaries: values are mostly ASCII, and the lazy DFA handles them.
static PATTERNS: LazyLock<Vec<Regex>> =
    LazyLock::new(|| PATTERN_TEXT.iter().map(|p| Regex::new(p).expect("the detectors' patterns are valid")).collect());

/// The detectors matched by an ahead-of-time DFA instead: those without a
/// capture group whose patterns are ASCII throughout (the same matches; a
/// test compares them), built on first use.
static DFAS: LazyLock<Vec<Option<regex_automata::dfa::regex::Regex>>> = LazyLock::new(|| {
    use regex_automata::{dfa, util::syntax};
    Detector::ALL
        .iter()
        .map(|d| {
            let ahead = matches!(
                d,
                Detector::Card
                    | Detector::Phone
                    | Detector::Ssn
                    | Detector::Iban
                    | Detector::AwsAccessKey
                    | Detector::GithubToken
                    | Detector::SlackToken
                    | Detector::Jwt
            );
            ahead.then(|| {
                dfa::regex::Regex::builder()
                    .syntax(syntax::Config::new().unicode(false).utf8(false))
                    .build(PATTERN_TEXT[*d as usize])
                    .expect("the detectors' patterns make DFAs")
            })
        })
        .collect()
});

/// The prefilter of secrets by name: an ahead-of-time DFA for the words
/// that name a secret, case-insensitive (one pass, stopping at the first),
/// built on first use.
static SECRET_NAMES: LazyLock<regex_automata::dfa::dense::DFA<Vec<u32>>> = LazyLock::new(|| {
    use regex_automata::{dfa, util::syntax};
    dfa::dense::Builder::new()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .build(by_name::NAMES)
        .expect("the secret names make a DFA")
});

/// Whether a word that names a secret occurs in `bytes` (if the DFA cannot
/// tell, the pattern runs).
fn may_name_a_secret(bytes: &[u8]) -> bool {
    use regex_automata::{Input, dfa::Automaton};
    SECRET_NAMES.try_search_fwd(&Input::new(bytes).earliest(true)).map_or(true, |m| m.is_some())
}

/// Each match of `detector` in `value`, whole.
fn matches(detector: Detector, value: &str, mut each: impl FnMut(Range<usize>)) {
    use regex_automata::Input;
    if let Some(dfa) = &DFAS[detector as usize] {
        let mut from = 0;
        while from < value.len() {
            match dfa.try_search(&Input::new(value.as_bytes()).range(from..)) {
                Ok(Some(m)) => {
                    each(m.range());
                    // No pattern matches the empty string; still, never stall.
                    from = m.end().max(from + 1);
                }
                Ok(None) => return,
                // Not expected of these patterns; the lazy DFA then.
                Err(_) => break,
            }
        }
        if from < value.len() {
            detector.pattern().find_iter(value).filter(|m| m.start() >= from).for_each(|m| each(m.range()));
        }
        return;
    }
    for m in detector.pattern().find_iter(value) {
        each(m.range());
    }
}

const PATTERN_TEXT: [&str; 13] = [
    // A run of 13 digits or more, grouped by single spaces or dashes or
    // not: the card numbers in it are found by [`checks::cards_in_run`].
    r"[0-9](?:[ -]?[0-9]){12,}",
    r"(?-u:\b)[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?-u:\b)",
    // E.164 with optional grouping, or North American with separators.
    r"(?:\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,5}\)?){1,5}[0-9](?-u:\b)|(?:\([2-9][0-9]{2}\)[ ]?|(?-u:\b)[2-9][0-9]{2}[.-])[0-9]{3}[.-][0-9]{4}(?-u:\b))",
    r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)",
    // A run of capitals and digits (single spaces within) with a country
    // and check digits in it: the IBANs in it are found by
    // [`checks::ibans_in_run`].
    r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,}",
    // Prefixed tokens: their prefix and length, wherever they are.
    r"(?:AKIA|ASIA)[A-Z0-9]{16}",
    // Named in context: `key = X`, `key: X`, `key X`, `<Key>X<`, a YAML
    // `name: KEY` / `value: X` pair.
    r#"(?i:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key|aws_?secret)["'>]?\s*[:=]?\s*(?:-?\s*value\s*:\s*)?["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|\z)"#,
    // A fine-grained token's 82 characters are an id of 22 and a secret of
    // 59 (the `_` between them kept out of the repetitions: tokens started
    // inside a token would make the DFA's states explode).
    r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}",
    r"xox[abposr]-[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+|https://hooks\.slack\.com/services/[A-Za-z0-9_/]+",
    r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?s:.*?)(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\z)",
    r"(?-u:\b)[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:([^\s/@]+)@",
    by_name::PATTERN,
];

/// E-mail addresses, found without the regular expression: from each `@`,
/// the domain's labels forward and the local part back. The same matches as
/// the e-mail pattern (a test compares them), at a fraction of its cost on
/// short values, which is what result rows hold.
fn emails(value: &str, mut each: impl FnMut(Range<usize>)) {
    let bytes = value.as_bytes();
    let word = |i: usize| bytes.get(i).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let local = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-');
    let mut from = 0;
    while let Some(found) = memchr::memchr(b'@', &bytes[from..]) {
        let at = from + found;
        let Some(end) = email_domain_end(bytes, at + 1) else {
            from = at + 1;
            continue;
        };
        // The local part: the run of its characters before the `@` (not
        // before `from`), starting at its first word boundary.
        let mut run = at;
        while run > from && local(bytes[run - 1]) {
            run -= 1;
        }
        let start = (run..at).find(|&s| (s > 0 && word(s - 1)) != word(s));
        match start {
            Some(start) => {
                each(start..end);
                from = end;
            }
            None => from = at + 1,
        }
        if from >= bytes.len() {
            break;
        }
    }
}

/// Where an e-mail address's domain starting at `at` ends: labels of
/// letters, digits and inner hyphens joined by dots, the last one a
/// top-level domain of 2-24 letters ending at a word boundary. The longest
/// such run of labels wins, as the pattern's greedy repetition has it.
fn email_domain_end(bytes: &[u8], at: usize) -> Option<usize> {
    let label_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
    let tld_end = |dot: usize| {
        let letters = bytes[dot + 1..].iter().take(25).take_while(|b| b.is_ascii_alphabetic()).count();
        let end = dot + 1 + letters;
        let boundary = !bytes.get(end).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        ((2..=24).contains(&letters) && boundary).then_some(end)
    };
    // The labels, each the whole run of label characters, while each starts
    // and ends with a letter or digit and is followed by a dot; the address
    // ends at the top-level domain after the last such dot that has one.
    let mut found = None;
    let mut at = at;
    loop {
        let end = at + bytes[at..].iter().take_while(|b| label_char(**b)).count();
        let valid = end > at && bytes[at].is_ascii_alphanumeric() && bytes[end - 1].is_ascii_alphanumeric();
        if !valid || bytes.get(end) != Some(&b'.') {
            return found;
        }
        found = tld_end(end).or(found);
        at = end + 1;
    }
}

fn confirmed(detector: Detector, candidate: &str) -> bool {
    match detector {
        Detector::Ssn => checks::ssn(candidate),
        Detector::Phone => checks::phone(candidate),
        Detector::Jwt => checks::jwt(candidate),
        _ => true,
    }
}

/// A value's findings (mostly none or one: kept inline).
pub type Findings = smallvec::SmallVec<[Finding; 4]>;

/// A secret found in a value: where, and by which detector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub detector: Detector,
    pub range: Range<usize>,
}

/// The order detectors claim text in: the most specific first, so that a
/// URL's password is not taken for an e-mail address's local part, nor a
/// token in a URL for anything else. A secret by name comes last: it takes
/// only text no other detector found any of.
const PRECEDENCE: [Detector; 13] = [
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
    Detector::SecretByName,
];

/// Whether the text before a candidate rules it out: an "address" right
/// after `scheme://` is a URL's user name.
fn ruled_out(detector: Detector, before: &str) -> bool {
    detector == Detector::Email && before.ends_with("//")
}

/// A set of detectors (a bit per discriminant).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Detectors(u16);

impl Detectors {
    pub fn of(detectors: &[Detector]) -> Detectors {
        Detectors(detectors.iter().fold(0, |set, d| set | 1 << *d as u16))
    }

    pub fn contains(self, detector: Detector) -> bool {
        self.0 & 1 << detector as u16 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The detectors whose pattern could match `value`, from one pass over its
/// bytes and a few substring searches: most values (names, statuses, ids,
/// timestamps, hashes) rule every detector out without running a pattern.
/// Only the `wanted` ones are checked.
fn candidates(value: &str, wanted: Detectors) -> Detectors {
    let bytes = value.as_bytes();
    // One branch-free pass: which signs occur (OR of the low bits), and how
    // many digits and capitals (the table's counting fields, summed). A
    // field holds 16 bits: long values are summed in chunks.
    let (mut signs, mut digits, mut upper) = (0u16, 0usize, 0usize);
    for chunk in bytes.chunks(u16::MAX as usize) {
        let (mut any, mut sum) = (0u64, 0u64);
        for &b in chunk {
            let entry = BYTE_CLASS[b as usize];
            any |= entry;
            sum += entry;
        }
        signs |= any as u16;
        digits += (sum >> DIGITS_AT & 0xffff) as usize;
        upper += (sum >> CAPITALS_AT & 0xffff) as usize;
    }
    let sign = |s: u16| signs & s != 0;
    // Substring searches only where the cheap signs allow a match.
    let has = |needle: &str| memchr::memmem::find(bytes, needle.as_bytes()).is_some();
    let long = bytes.len();
    let wants = |d: Detector| wanted.contains(d);
    let checks = [
        wants(Detector::Card) && digits >= 13 && longest_digit_run(bytes) >= 13,
        wants(Detector::Email) && sign(AT) && sign(DOT),
        wants(Detector::Phone) && ((sign(PLUS) && digits >= 8) || (digits >= 10 && sign(DASH | DOT | PAREN))),
        wants(Detector::Ssn) && sign(DASH) && digits >= 9,
        wants(Detector::Iban) && upper >= 2 && digits >= 2 && long >= 15,
        wants(Detector::AwsAccessKey) && upper >= 4 && digits + upper >= 20 && (has("AKIA") || has("ASIA")),
        wants(Detector::AwsSecretKey) && long >= 46 && bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"secret")),
        wants(Detector::GithubToken) && long >= 40 && sign(UNDERSCORE) && (has("gh") || has("github_pat_")),
        wants(Detector::SlackToken) && ((sign(X) && has("xox")) || (sign(COLON) && has("hooks.slack.com"))),
        wants(Detector::Jwt) && sign(CAPITAL_J) && sign(DOT) && has("eyJ"),
        wants(Detector::PrivateKey) && sign(DASH) && upper >= 10 && has("PRIVATE KEY-----"),
        wants(Detector::UrlPassword) && sign(AT) && sign(COLON) && has("://"),
        // The shortest: `pwd=` and 16 characters.
        wants(Detector::SecretByName) && long >= 20 && sign(COLON | ASSIGN) && may_name_a_secret(bytes),
    ];
    let possible = checks.iter().enumerate().fold(0u16, |set, (i, &maybe)| set | u16::from(maybe) << i);
    Detectors(possible)
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
/// A space: card numbers are grouped by spaces or dashes.
const SEPARATOR: u16 = 1 << 11;
/// `=` or `>`: what follows a name (with `:`), in `key=value`, `key => value`
/// and `<key>value`.
const ASSIGN: u16 = 1 << 12;

/// Where a byte's table entry counts digits and capitals (a byte's signs
/// are below 2^13, so a chunk's sums of 2^16 bytes stay below bit 32).
const DIGITS_AT: u32 = 32;
const CAPITALS_AT: u32 = 48;

/// The signs each byte gives (low 16 bits), and whether it is a digit or a
/// capital, in the counting fields.
static BYTE_CLASS: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let signs = match b as u8 {
            b'0'..=b'9' => DIGIT,
            b'J' => UPPER | CAPITAL_J,
            b'A'..=b'Z' => UPPER,
            b'@' => AT,
            b'-' => DASH | SEPARATOR,
            b' ' => SEPARATOR,
            b'+' => PLUS,
            b'.' => DOT,
            b':' => COLON,
            b'x' => X,
            b'_' => UNDERSCORE,
            b'(' => PAREN,
            b'=' | b'>' => ASSIGN,
            _ => 0,
        };
        let counts = ((signs & DIGIT != 0) as u64) << DIGITS_AT | ((signs & UPPER != 0) as u64) << CAPITALS_AT;
        table[b] = signs as u64 | counts;
        b += 1;
    }
    table
};

/// The longest run of digits, allowing spaces and dashes within (a card
/// number's shape, loosely: the pattern decides). Branch-free: values
/// with many digits (hashes, ids) mix them with letters unpredictably.
fn longest_digit_run(bytes: &[u8]) -> usize {
    let (mut run, mut longest) = (0usize, 0usize);
    for &b in bytes {
        let class = BYTE_CLASS[b as usize] as u16;
        let keeps = usize::from(class & (DIGIT | SEPARATOR) != 0);
        run = (run + usize::from(class & DIGIT != 0)) & keeps.wrapping_neg();
        longest = longest.max(run);
    }
    longest
}

/// Every confirmed finding of `detectors` in `value`, in order. Where two
/// overlap, the more specific detector claims the text; two that find the
/// very same text (a token used as a URL's password) are both reported.
pub fn find(value: &str, detectors: &[Detector]) -> Findings {
    find_in(value, Detectors::of(detectors))
}

/// [`find`] with the detectors as a set.
pub fn find_in(value: &str, detectors: Detectors) -> Findings {
    let mut found = Findings::new();
    if detectors.is_empty() {
        return found;
    }
    let possible = candidates(value, detectors);
    if possible.is_empty() {
        return found;
    }
    let claim = |found: &mut Findings, detector: Detector, whole: regex::Match<'_>, secret: regex::Match<'_>| {
        if confirmed(detector, whole.as_str()) && !ruled_out(detector, &value[..whole.start()]) {
            claim_range(found, detector, secret.range());
        }
    };
    let bytes = value.as_bytes();
    for detector in PRECEDENCE.into_iter().filter(|d| possible.contains(*d)) {
        let group = detector.secret_group();
        match detector {
            Detector::Email => emails(value, |range| {
                if !ruled_out(detector, &value[..range.start]) {
                    claim_range(&mut found, detector, range);
                }
            }),
            // The patterns find runs; the secrets are found in them.
            Detector::Card => matches(detector, value, |run| {
                let at = run.start;
                checks::cards_in_run(&bytes[run], |r| claim_range(&mut found, detector, at + r.start..at + r.end));
            }),
            Detector::Iban => matches(detector, value, |run| {
                let at = run.start;
                checks::ibans_in_run(&bytes[run], |r| claim_range(&mut found, detector, at + r.start..at + r.end));
            }),
            Detector::SecretByName => {
                for captures in detector.pattern().captures_iter(value) {
                    if let (Some(rest), Some(secret)) = (captures.get(1), captures.get(group))
                        && by_name::still_names_the_secret(rest.as_str())
                        && by_name::looks_random(secret.as_str())
                    {
                        claim_untouched(&mut found, detector, secret.range());
                    }
                }
            }
            _ if group == 0 => matches(detector, value, |whole| {
                if confirmed(detector, &value[whole.clone()]) && !ruled_out(detector, &value[..whole.start]) {
                    claim_range(&mut found, detector, whole);
                }
            }),
            _ => {
                for captures in detector.pattern().captures_iter(value) {
                    if let (Some(whole), Some(secret)) = (captures.get(0), captures.get(group)) {
                        claim(&mut found, detector, whole, secret);
                    }
                }
            }
        }
    }
    // A value crowded with findings (a hostile one, or a dump) is masked
    // whole rather than searched without bound.
    if found.len() >= MAX_FINDINGS {
        let detector = found[0].detector;
        return smallvec::smallvec![Finding { detector, range: 0..value.len() }];
    }
    found.sort_by_key(|f| f.range.start);
    found
}

/// Records a finding unless it overlaps one already made (by a more specific
/// detector) other than on the very same text.
fn claim_range(found: &mut Findings, detector: Detector, range: Range<usize>) {
    if found.len() >= MAX_FINDINGS
        || found.iter().any(|f| f.range.start < range.end && range.start < f.range.end && f.range != range)
    {
        return;
    }
    found.push(Finding { detector, range });
}

/// Records a finding unless it overlaps any made before: a secret by name
/// whose value holds a token another detector found is that token (its
/// detector masks it), and the rest (a credential's scope after an access
/// key id) is not taken for a secret.
fn claim_untouched(found: &mut Findings, detector: Detector, range: Range<usize>) {
    if found.iter().all(|f| f.range.end <= range.start || range.end <= f.range.start) {
        claim_range(found, detector, range);
    }
}

/// Findings in one value beyond which it is masked whole.
const MAX_FINDINGS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn detected(value: &str) -> Vec<&'static str> {
        find(value, &Detector::ALL).iter().map(|f| f.detector.as_str()).collect()
    }

    /// Random digits (ids, timestamps, tracking numbers) are taken for card
    /// numbers about as often as the Luhn check and the issuers' prefixes
    /// let through, for runs of every length (printed with `--nocapture`):
    /// about 3% of 13-16 digits (the whole run checked, as before glued
    /// digits were looked into), 8% of 17-19 (the whole run, and 16 or 15
    /// digits at either end), 5.5% of longer ones (the ends only).
    #[test]
    fn random_digit_runs_are_rarely_taken_for_cards() {
        let mut next = random(0x853c_49e6_748f_ea9b);
        let mut rates = Vec::new();
        for len in 13..=40 {
            let trials = 20_000;
            let mut hits = 0;
            for _ in 0..trials {
                let value: String = (0..len).map(|_| char::from(b'0' + (next() % 10) as u8)).collect();
                hits += usize::from(!find(&value, &[Detector::Card]).is_empty());
            }
            let rate = hits as f64 / trials as f64;
            rates.push(format!("{len}: {:.2}%", 100.0 * rate));
            // One Luhn check in ten passes; within 13-19 digits the whole
            // run is checked, beyond 16 four more ways (16 or 15 digits at
            // either end).
            let bound = if len < 16 {
                0.04
            } else if len <= 19 {
                0.09
            } else {
                0.07
            };
            assert!(rate < bound, "{len} digits: {rate}");
        }
        println!("random digit runs taken for card numbers: {}", rates.join(", "));
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

    /// The e-mail scanner finds what the e-mail pattern finds: on values
    /// made of the characters that matter to either, and on the corpus.
    #[test]
    fn the_email_scanner_matches_the_email_pattern() {
        let by_pattern = |v: &str| Detector::Email.pattern().find_iter(v).map(|m| m.range()).collect::<Vec<_>>();
        let by_scanner = |v: &str| {
            let mut found = Vec::new();
            emails(v, |r| found.push(r));
            found
        };
        let alphabet = b"aZ09._%+-@@..-_ xy\tcom:/()";
        let mut next = random(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for _ in 0..200_000 {
            let len = (next() % 24) as usize;
            let value: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char).collect();
            assert_eq!(by_scanner(&value), by_pattern(&value), "{value:?}");
            checked += usize::from(!by_pattern(&value).is_empty());
        }
        // Address-shaped values with pieces mutated: labels, dots, hyphens,
        // top-level domains of every length, what follows them.
        let pieces = [
            "ada",
            "x.y",
            "_",
            "-",
            ".",
            "@",
            "ex-ample",
            "a",
            "com",
            "c0m",
            "io",
            "abcdefghijklmnopqrstuvwxyz",
            "9",
            " ",
            "é",
            "_z",
        ];
        for _ in 0..200_000 {
            let mut piece = || pieces[(next() % pieces.len() as u64) as usize];
            let value = format!("{}{}@{}{}.{}{}", piece(), piece(), piece(), piece(), piece(), piece());
            assert_eq!(by_scanner(&value), by_pattern(&value), "{value:?}");
            checked += usize::from(!by_pattern(&value).is_empty());
        }
        assert!(checked > 10_000, "the random values hold addresses too ({checked})");
        let fixed = [
            "ada@example.com",
            "a_b@x.com",
            "x@a.b.c.museum",
            "x@a-.com",
            "x@-a.com",
            "x@a.com-x",
            "x@a.co1",
            "x@a.comcomcomcomcomcomcomcomcom",
            "a@b@example.com",
            "mailto://u@example.com",
            "two a@b.io, c@d.org.",
            "é@x.com and ü.x@y.de",
            "x@averyveryverylonglabel.abcdefghijklmnopqrstuvwx",
            "x@y.abcdefghijklmnopqrstuvwxy",
        ];
        for value in fixed {
            assert_eq!(by_scanner(value), by_pattern(value), "{value:?}");
        }
        for value in corpus_values() {
            assert_eq!(by_scanner(&value), by_pattern(&value), "{value:?}");
        }
    }

    /// The ahead-of-time DFAs find what the patterns find.
    #[test]
    fn the_dfas_match_the_patterns() {
        let mut values: Vec<String> = corpus_values();
        // Values built of pieces of every format and of what separates them.
        let pieces = [
            "4111",
            "1111",
            "0",
            "37",
            "82246",
            " ",
            "-",
            ".",
            "+",
            "+1",
            "+44",
            "415",
            "555",
            "(",
            ")",
            "0123",
            "26",
            "219-09-9999",
            "DE89",
            "3704",
            "0044",
            "GB82WEST",
            "AKIA",
            "ASIA",
            "IOSFODNN7EXAMPLE",
            "ghp_",
            "xoxb-",
            "https://hooks.slack.com/services/",
            "eyJhbGciOi",
            "eyJzdWIi",
            "J9",
            "abcdefghijklmnopqrstuvwxyz0123456789",
            "_",
            "x",
            "é",
            "\n",
            "a",
            "4539148803436467",
            "1",
            "DE89370400440532013000",
            "AKIAIOSFODNN7EXAMPLE",
            "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",
            "X",
        ];
        let mut next = random(0x2545_f491_4f6c_dd1d);
        for _ in 0..100_000 {
            let count = 1 + (next() % 10) as usize;
            values.push((0..count).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect());
        }
        let mut hits = 0;
        for detector in Detector::ALL.into_iter().filter(|d| DFAS[*d as usize].is_some()) {
            for value in &values {
                let by_pattern: Vec<_> = detector.pattern().find_iter(value).map(|m| m.range()).collect();
                let mut by_dfa = Vec::new();
                matches(detector, value, |r| by_dfa.push(r));
                assert_eq!(by_dfa, by_pattern, "{detector:?} on {value:?}");
                hits += by_pattern.len();
            }
        }
        assert!(hits > 10_000, "only {hits} matches compared");
    }

    /// The prefilter of secrets by name finds what the names' pattern finds.
    #[test]
    fn the_secret_names_dfa_matches_the_names_pattern() {
        let names = Regex::new(by_name::NAMES).unwrap();
        let mut values = corpus_values();
        values.extend(
            ["API-KEY", "apikey", "Api_Key", "x-api-kex", "PassWd", "passwrd", "tok en", "SeCrEt"].map(String::from),
        );
        let mut hits = 0;
        for value in &values {
            assert_eq!(may_name_a_secret(value.as_bytes()), names.is_match(value), "{value:?}");
            hits += usize::from(names.is_match(value));
        }
        assert!(hits > 100, "only {hits} names compared");
    }

    /// A fixed sequence of pseudo-random numbers (xorshift), from `seed`.
    fn random(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    fn corpus_values() -> Vec<String> {
        let corpora =
            [include_str!("../tests/data/masking_corpus.jsonl"), include_str!("../tests/data/masking_holdout.jsonl")];
        corpora
            .iter()
            .flat_map(|c| c.lines())
            .filter(|l| !l.trim().is_empty())
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["value"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn long_values_are_counted_in_chunks() {
        // More digits and capitals than a counting field holds.
        let mut value = "7A".repeat(100_000);
        value.push_str(" DE89 3704 0044 0532 0130 00 and 4111 1111 1111 1111");
        assert_eq!(detected(&value), ["iban", "card"]);
        let possible = candidates(&"9".repeat(70_000), Detectors::of(&Detector::ALL));
        assert!(possible.contains(Detector::Card), "a digit count past 65,535 does not wrap");
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
