//! The checks that confirm what the detectors' patterns find (Luhn for card
//! numbers, mod 97 for IBANs, the assigned ranges of SSNs, JWT headers),
//! and the search for card numbers and IBANs inside longer runs.
//!
//! A value built by concatenation glues a secret to what surrounds it
//! (`'x' || pan`, `lpad(pan, 120, '0')`, `string_agg(pan, '')`), so card
//! numbers and IBANs are not looked for between word boundaries only: the
//! card pattern finds runs of digits and the IBAN pattern runs of capitals
//! and digits, and the functions here find the secrets in them where their
//! format says they can start and end. Their ranges cover the secret alone,
//! so masking replaces it and leaves the glue.

use std::ops::Range;

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

/// The number the first `n` digits make (0 if there are fewer).
fn prefix(digits: &[u8], n: usize) -> u32 {
    digits.get(..n).map_or(0, |p| p.iter().fold(0, |v, d| v * 10 + u32::from(d - b'0')))
}

/// American Express: 15 digits starting 34 or 37.
fn amex(digits: &[u8]) -> bool {
    matches!(prefix(digits, 2), 34 | 37)
}

/// Whether digits start with a card issuer's prefix: Visa, Mastercard (also
/// its 2-series), American Express, Diners Club, JCB, Discover, UnionPay.
fn issuer(digits: &[u8]) -> bool {
    digits.first() == Some(&b'4')
        || (51..=55).contains(&prefix(digits, 2))
        || (2221..=2720).contains(&prefix(digits, 4))
        || matches!(prefix(digits, 2), 34 | 37 | 36 | 38 | 30 | 35 | 65 | 62)
        || prefix(digits, 4) == 6011
        || (644..=649).contains(&prefix(digits, 3))
}

/// A card number: 13-19 digits, one kind of separator at most with the
/// usual grouping (fours; Amex 4-6-5), an issuer's prefix, and the Luhn
/// check. Without allocating: it runs on every candidate.
fn card(candidate: &[u8]) -> bool {
    let mut digits = [0u8; 19];
    let mut count = 0;
    // The groups' lengths (19 digits make 19 groups at most, and a
    // trailing separator one more, empty).
    let mut groups = [0u8; 20];
    let mut group_count = 0;
    let mut separator = None;
    for &b in candidate {
        if b.is_ascii_digit() {
            if count == digits.len() {
                return false;
            }
            digits[count] = b;
            count += 1;
            groups[group_count] += 1;
        } else {
            if separator.is_some_and(|s| s != b) || groups[group_count] == 0 {
                return false;
            }
            separator = Some(b);
            group_count += 1;
        }
    }
    let groups = &groups[..=group_count];
    if count < 13 || groups.last() == Some(&0) {
        return false;
    }
    // Grouped numbers are grouped in fours (Amex: 4-6-5).
    if group_count > 0 {
        let fours = groups[..group_count].iter().all(|&g| g == 4) && groups[group_count] <= 4;
        let amex = groups == [4, 6, 5] || groups == [4, 6, 4];
        if !fours && !amex {
            return false;
        }
    }
    let digits = &digits[..count];
    issuer(digits) && luhn(digits)
}

/// Whether digits cut from a longer run are a card number: only the
/// lengths that leave little doubt (16 digits of an issuer other than
/// American Express, 15 of American Express), so that long numbers (ids,
/// timestamps) are not cut into look-alikes of every length.
fn card_inside(digits: &[u8]) -> bool {
    let amex = amex(digits);
    ((digits.len() == 16 && !amex) || (digits.len() == 15 && amex)) && issuer(digits) && luhn(digits)
}

/// Whether a number's text (all of the value) is a card number: for card
/// numbers stored as numbers (`int8`, `numeric`). A sign and a fractional
/// part are the number's, not the card's: `-4539148803436467` and
/// `4539148803436467.00` (a `numeric(20,2)`, `v + 0.0`) are card numbers;
/// the integer part's digits decide.
pub fn is_card_number(value: &str) -> bool {
    let unsigned = value.strip_prefix(['-', '+']).unwrap_or(value);
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    (13..=19).contains(&integer.len())
        && integer.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && card(integer.as_bytes())
}

/// The card numbers in a run of digits grouped by single spaces or dashes
/// (as the card pattern finds it), by their ranges in the run:
/// - whole groups of the usual grouping (`4111 1111 1111 1111`), from any
///   group on, the longest first;
/// - a group of 13-19 digits that is a card number;
/// - in a longer group, 16-digit (Amex: 15) card numbers at its start and
///   at its end, and right after those (`string_agg` of card numbers), but
///   never in the middle of unrelated digits.
pub(super) fn cards_in_run(run: &[u8], mut each: impl FnMut(Range<usize>)) {
    let mut start = 0;
    while start < run.len() {
        let group_end = start + run[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        if let Some(end) = grouped_card(run, start) {
            each(start..end);
            start = end + 1;
            continue;
        }
        if group_end - start >= 13 {
            cards_in_digits(&run[start..group_end], |r| each(start + r.start..start + r.end));
        }
        start = group_end + 1;
    }
}

/// The end of the longest card number of two groups or more starting at
/// `start` (a group's first digit), if there is one.
fn grouped_card(run: &[u8], start: usize) -> Option<usize> {
    // Every grouping of card numbers starts with four digits (which also
    // keeps a hostile run of single digits linear).
    if run.get(start + 4).is_none_or(u8::is_ascii_digit) || !run[start..start + 4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Where each group after the first ends while there are 13-19 digits
    // (7 such ends at most) and one kind of separator.
    let mut ends = [0usize; 7];
    let mut count = 0;
    let mut digits = 0;
    let mut separator = None;
    for (i, &b) in run.iter().enumerate().skip(start) {
        if b.is_ascii_digit() {
            digits += 1;
            if digits > 19 {
                break;
            }
            let group_ends = !run.get(i + 1).is_some_and(u8::is_ascii_digit);
            if group_ends && separator.is_some() && digits >= 13 && count < ends.len() {
                ends[count] = i + 1;
                count += 1;
            }
        } else if separator.is_some_and(|s| s != b) {
            break;
        } else {
            separator = Some(b);
        }
    }
    ends[..count].iter().rev().copied().find(|&end| card(&run[start..end]))
}

/// The card numbers in a group of digits: the whole group, or 16-digit
/// (Amex: 15) numbers tiling it from its start and from its end.
fn cards_in_digits(digits: &[u8], mut each: impl FnMut(Range<usize>)) {
    if digits.len() <= 19 && card(digits) {
        each(0..digits.len());
        return;
    }
    let mut start = 0;
    while let Some(len) = [16, 15].into_iter().find(|&len| digits[start..].get(..len).is_some_and(card_inside)) {
        each(start..start + len);
        start += len;
    }
    let mut end = digits.len();
    while let Some(len) = [16, 15].into_iter().find(|&len| end - start >= len && card_inside(&digits[end - len..end])) {
        each(end - len..end);
        end -= len;
    }
}

/// Each country's IBAN length, from the SWIFT IBAN registry (its 89
/// countries as of 2025; territories use their country's code). An IBAN is exactly this long, so one glued to
/// capitals or digits is still found, and its end is known.
const IBAN_LENGTHS: [(&[u8; 2], u8); 89] = [
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HN", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

/// [`IBAN_LENGTHS`] by `(first letter - 'A') * 26 + (second - 'A')`; 0 for
/// a country without IBANs.
static IBAN_LENGTH: [u8; 26 * 26] = {
    let mut table = [0u8; 26 * 26];
    let mut i = 0;
    while i < IBAN_LENGTHS.len() {
        let (code, length) = IBAN_LENGTHS[i];
        table[(code[0] - b'A') as usize * 26 + (code[1] - b'A') as usize] = length;
        i += 1;
    }
    table
};

/// The IBANs in a run of capitals and digits (single spaces within, as the
/// IBAN pattern finds it), by their ranges in the run. One may start at any
/// character: after a letter or a digit glued to it too.
pub(super) fn ibans_in_run(run: &[u8], mut each: impl FnMut(Range<usize>)) {
    let mut start = 0;
    while start + 4 <= run.len() {
        match iban_at(&run[start..]) {
            Some(len) => {
                each(start..start + len);
                start += len;
            }
            None => start += 1,
        }
    }
}

/// The length in the text of the IBAN `text` starts with, if it does: a
/// country with IBANs, two check digits, exactly the country's length in
/// capitals and digits (grouped in fours by single spaces, or not at all),
/// and the mod-97 check. What follows it does not matter.
fn iban_at(text: &[u8]) -> Option<usize> {
    let [a, b, c, d, ..] = *text else { return None };
    if !(a.is_ascii_uppercase() && b.is_ascii_uppercase() && c.is_ascii_digit() && d.is_ascii_digit()) {
        return None;
    }
    let length = usize::from(IBAN_LENGTH[usize::from(a - b'A') * 26 + usize::from(b - b'A')]);
    if length == 0 {
        return None;
    }
    // Country and check digits go last; the rest is read first.
    let mut compact = [0u8; 34];
    let mut taken = 0;
    let mut end = 0;
    // Grouped IBANs are grouped in fours: a space after every fourth
    // character from the first group on, or none at all.
    let mut last_space: Option<usize> = None;
    for (i, &byte) in text.iter().enumerate() {
        if taken == length {
            break;
        }
        match byte {
            b' ' if taken == last_space.map_or(4, |at| at + 4) => last_space = Some(taken),
            b'0'..=b'9' | b'A'..=b'Z' if last_space.is_none_or(|at| taken < at + 4) => {
                compact[taken] = byte;
                taken += 1;
                end = i + 1;
            }
            _ => return None,
        }
    }
    if taken < length {
        return None;
    }
    let rearranged = compact[4..length].iter().chain(&compact[..4]);
    let mut remainder = 0u32;
    for &byte in rearranged {
        remainder = match byte {
            b'0'..=b'9' => (remainder * 10 + u32::from(byte - b'0')) % 97,
            _ => (remainder * 100 + u32::from(byte - b'A') + 10) % 97,
        };
    }
    (remainder == 1).then_some(end)
}

/// An SSN as assigned: no area 000, 666 or 9xx, no group 00, no serial 0000.
pub(super) fn ssn(candidate: &str) -> bool {
    let mut parts = candidate.split('-');
    let (Some(area), Some(group), Some(serial), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// A phone number: 8-15 digits in all (E.164), of which a North American
/// one has exactly 10.
pub(super) fn phone(candidate: &str) -> bool {
    let digits = candidate.bytes().filter(u8::is_ascii_digit).count();
    if candidate.starts_with('+') { (8..=15).contains(&digits) } else { digits == 10 }
}

/// A JWT: its header is base64url-encoded JSON.
pub(super) fn jwt(candidate: &str) -> bool {
    use base64::Engine;
    let header = candidate.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .is_ok_and(|h| h.first() == Some(&b'{') && h.last() == Some(&b'}'))
}
