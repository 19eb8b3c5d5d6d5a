//! Terminal and command output masked as it streams, for the client and
//! the recording alike.
//!
//! A secret may arrive in two writes (a card number printed in two pieces),
//! and terminal output interleaves colour codes with text. So output is held
//! back until a line ends — at most [`HOLD`] bytes of an unfinished line,
//! for at most [`DELAY`] — and the detectors read each piece as the screen
//! shows it: escape sequences left out, a secret found across them. A
//! secret found is replaced in the bytes (the escape sequences inside it go
//! with it); everything else passes byte for byte.
//!
//! What this cannot do: a secret whose pieces arrive more than [`DELAY`]
//! apart on one unfinished line, or one longer than [`HOLD`], is read in
//! pieces; the detectors find what each piece holds.

use std::time::{Duration, Instant};

use proctor_gateway_core::masking::{Counts, Finding, Masker};

/// The most of an unfinished line held back.
pub const HOLD: usize = 4096;
/// What stays held of a line longer than [`HOLD`] when the rest goes: a
/// secret cut there is read whole with what follows.
pub const TAIL: usize = 256;
/// The longest an unfinished line's end that looks like the start of a
/// secret (a run of digits, a word with `@`) is held back: a number typed
/// at a prompt echoes key by key, and is read whole only once it is
/// complete (its echo waits until a letter or Enter ends it, at most this).
pub const SECRET_HOLD: Duration = Duration::from_secs(2);
/// The longest an unfinished line is held back.
pub const DELAY: Duration = Duration::from_millis(25);
/// Output this short (a keystroke's echo, a redraw of a character or two)
/// goes at once unless it ends like the start of a secret.
pub const ECHO: usize = 8;

/// One output stream's masking.
#[derive(Default)]
pub struct OutputMasker {
    held: Vec<u8>,
    /// When what is held came.
    since: Option<Instant>,
    /// Secrets replaced in place, each by as many bytes (output that is
    /// no terminal's: a program reading it may count its bytes, as legacy
    /// scp's does).
    pub in_place: bool,
}

impl OutputMasker {
    /// Takes output; returns what may go now, masked (possibly nothing: an
    /// unfinished line is held back), and how many bytes of output it was
    /// before masking.
    pub fn push(&mut self, masker: &Masker, data: &[u8], now: Instant, counts: &mut Counts) -> (Vec<u8>, usize) {
        self.held.extend_from_slice(data);
        let cut = match self.held.iter().rposition(|&b| b == b'\n') {
            Some(at) => at + 1,
            None => 0,
        };
        // Of a line too long to hold, all but its last bytes go (cut
        // between characters).
        let cut = if self.held.len() - cut > HOLD {
            let mut at = self.held.len() - TAIL;
            while at > 0 && (self.held[at] & 0xc0) == 0x80 {
                at -= 1;
            }
            at
        } else {
            cut
        };
        // A keystroke's echo (a few bytes) that does not look like the
        // start of a secret goes at once: typing is not held back.
        let cut = if cut == 0 && data.len() <= ECHO && secret_like_end(&self.held) == self.held.len() {
            self.held.len()
        } else {
            cut
        };
        if cut == 0 {
            self.since.get_or_insert(now);
            return (Vec::new(), 0);
        }
        let ready: Vec<u8> = self.held.drain(..cut).collect();
        self.since = (!self.held.is_empty()).then_some(now);
        (mask_with(masker, &ready, counts, self.in_place), ready.len())
    }

    /// When what is held must go (all but an end that looks like the start
    /// of a secret, which may wait longer).
    pub fn due(&self) -> Option<Instant> {
        let since = self.since?;
        Some(if secret_like_end(&self.held) == 0 { since + SECRET_HOLD } else { since + DELAY })
    }

    /// What is held, masked, and how long it was before masking: all of it
    /// (`all`), or, at `now`, all but an end that looks like the start of a
    /// secret and has not waited [`SECRET_HOLD`] yet.
    pub fn flush(&mut self, masker: &Masker, counts: &mut Counts, all: bool, now: Instant) -> (Vec<u8>, usize) {
        let waited = self.since.is_some_and(|since| now >= since + SECRET_HOLD);
        let keep = if all || waited { self.held.len() } else { secret_like_end(&self.held) };
        let held: Vec<u8> = self.held.drain(..keep).collect();
        if self.held.is_empty() {
            self.since = None;
        }
        if held.is_empty() { (held, 0) } else { (mask_with(masker, &held, counts, self.in_place), held.len()) }
    }
}

/// Where the end of `held` that looks like the start of a secret begins
/// (`held.len()` if none): a run of digits among spaces, dashes, dots and
/// colour codes, or a last word holding `@`.
fn secret_like_end(held: &[u8]) -> usize {
    let mut at = held.len();
    let mut digits = 0;
    while at > 0 {
        let b = held[at - 1];
        if b.is_ascii_digit() {
            digits += 1;
        } else if !matches!(b, b' ' | b'-' | b'.' | 0x1b | b'[' | b';' | b'm') {
            break;
        }
        at -= 1;
    }
    let digits_from = if digits >= 1 { at } else { held.len() };
    let word = held.iter().rposition(u8::is_ascii_whitespace).map_or(0, |w| w + 1);
    let address_from = if held[word..].contains(&b'@') { word } else { held.len() };
    digits_from.min(address_from)
}

/// `bytes` with what the detectors find in their screen text replaced.
pub fn mask_bytes(masker: &Masker, bytes: &[u8], counts: &mut Counts) -> Vec<u8> {
    mask_with(masker, bytes, counts, false)
}

/// [`mask_bytes`], each replacement made as long as what it replaces (cut,
/// or `*` put before it): for bytes whose places are counted (a file read
/// at offsets).
pub fn mask_bytes_in_place(masker: &Masker, bytes: &[u8], counts: &mut Counts) -> Vec<u8> {
    mask_with(masker, bytes, counts, true)
}

fn mask_with(masker: &Masker, bytes: &[u8], counts: &mut Counts, in_place: bool) -> Vec<u8> {
    let found = replacements(masker, bytes, counts, in_place, |_| true);
    if found.is_empty() {
        return bytes.to_vec();
    }
    let mut out = Vec::with_capacity(bytes.len() + 32);
    let mut done = 0;
    for replacement in found {
        out.extend_from_slice(&bytes[done..replacement.raw.start]);
        out.extend_from_slice(&replacement.bytes);
        done = replacement.raw.end;
    }
    out.extend_from_slice(&bytes[done..]);
    out
}

/// A secret found in bytes: where it is, and what replaces it.
#[derive(Debug)]
pub struct Replacement {
    pub raw: std::ops::Range<usize>,
    pub bytes: Vec<u8>,
}

/// What the detectors find in the screen text of `bytes`, in order and
/// apart: each secret's place in the bytes and what replaces it (as long
/// as it, `in_place`). Those starting where `counted` says are counted.
pub fn replacements(
    masker: &Masker,
    bytes: &[u8],
    counts: &mut Counts,
    in_place: bool,
    counted: impl Fn(usize) -> bool,
) -> Vec<Replacement> {
    // The screen text, and where each of its characters is in the bytes.
    let mut visible = String::new();
    let mut places: Vec<(usize, usize, usize)> = Vec::new();
    let mut escape = Escape::None;
    let mut at = 0;
    for chunk in bytes.utf8_chunks() {
        for (offset, c) in chunk.valid().char_indices() {
            let raw = at + offset;
            if escape.step(c) {
                continue;
            }
            if c.is_control() && c != '\n' && c != '\t' {
                continue;
            }
            places.push((visible.len(), raw, raw + c.len_utf8()));
            visible.push(c);
        }
        at += chunk.valid().len() + chunk.invalid().len();
        if !chunk.invalid().is_empty() {
            // Bytes that are not text end any value being read.
            visible.push('\n');
            places.push((visible.len() - 1, at, at));
        }
    }
    let findings = masker.findings(&visible);
    let place = |index: usize| places.binary_search_by_key(&index, |p| p.0);
    let mut found = Vec::new();
    let mut done_visible = 0;
    let mut scratch = Counts::new();
    for finding in findings.iter() {
        let (Ok(first), Ok(last)) = (place(finding.range.start), place(prev_char(&visible, finding.range.end))) else {
            continue;
        };
        let (raw_start, raw_end) = (places[first].1, places[last].2);
        let counts = if counted(raw_start) { &mut *counts } else { &mut scratch };
        if finding.range.start < done_visible {
            // The same text found twice is masked once.
            proctor_gateway_core::masking::count(counts, finding.detector.as_str());
            continue;
        }
        let value = &visible[finding.range.clone()];
        let whole = Finding { detector: finding.detector, range: 0..value.len() };
        let mut replaced = Vec::new();
        masker.write_masked(value, std::slice::from_ref(&whole), counts, &mut replaced);
        if in_place {
            fit(&mut replaced, raw_end - raw_start);
        }
        found.push(Replacement { raw: raw_start..raw_end, bytes: replaced });
        done_visible = finding.range.end;
    }
    found
}

/// `replaced` made exactly `len` bytes long: `*` put before it, or cut
/// after its last whole character within `len` and `*` put after.
fn fit(replaced: &mut Vec<u8>, len: usize) {
    if replaced.len() <= len {
        let mut fitted = vec![b'*'; len - replaced.len()];
        fitted.append(replaced);
        *replaced = fitted;
        return;
    }
    let mut cut = len;
    while cut > 0 && (replaced[cut] & 0xc0) == 0x80 {
        cut -= 1;
    }
    replaced.truncate(cut);
    replaced.resize(len, b'*');
}

/// The byte index of the last character of `text` before `end`.
fn prev_char(text: &str, end: usize) -> usize {
    text[..end].char_indices().next_back().map_or(0, |(i, _)| i)
}

/// Where the reading of output is in an escape sequence.
#[derive(Clone, Copy, PartialEq)]
enum Escape {
    None,
    Start,
    Sequence,
    Text,
    TextEsc,
}

impl Escape {
    /// Reads `c`: whether it belongs to an escape sequence.
    fn step(&mut self, c: char) -> bool {
        let (next, inside) = match (*self, c) {
            (Escape::None, '\x1b') => (Escape::Start, true),
            (Escape::None, _) => (Escape::None, false),
            (Escape::Start, '[') => (Escape::Sequence, true),
            (Escape::Start, ']' | 'P' | '_' | '^' | 'X') => (Escape::Text, true),
            (Escape::Start, _) => (Escape::None, true),
            (Escape::Sequence, '\x20'..='\x3f') => (Escape::Sequence, true),
            (Escape::Sequence, _) => (Escape::None, true),
            (Escape::Text, '\x07') => (Escape::None, true),
            // A string never ended (stray bytes): text again at the next
            // line, or at CAN or SUB, so nothing after it goes unread.
            (Escape::Text | Escape::TextEsc, '\n' | '\x18' | '\x1a') => (Escape::None, false),
            (Escape::Text, '\x1b') => (Escape::TextEsc, true),
            (Escape::Text, _) => (Escape::Text, true),
            (Escape::TextEsc, '\\') => (Escape::None, true),
            (Escape::TextEsc, _) => (Escape::Text, true),
        };
        *self = next;
        inside
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proctor_gateway_core::masking::{MaskingConfig, MaskingKey, ProfileConfig, Profiles};

    fn masker() -> std::sync::Arc<Masker> {
        let profile = ProfileConfig { detectors: vec!["all".into()], ..Default::default() };
        let config = MaskingConfig { profiles: [("p".to_string(), profile)].into(), ..Default::default() };
        Profiles::new(&config, MaskingKey::new(vec![1; 32])).unwrap().masker("p").unwrap().unwrap()
    }

    #[test]
    fn a_card_number_in_two_writes_around_a_colour_code_is_masked() {
        let masker = masker();
        let mut out = OutputMasker::default();
        let mut counts = Counts::new();
        let t = Instant::now();
        let (first, _) = out.push(&masker, b"card: 4111 1111 ", t, &mut counts);
        assert!(first.is_empty(), "an unfinished line is held");
        let (second, was) = out.push(&masker, b"\x1b[31m1111 1111\x1b[0m done\r\n", t, &mut counts);
        assert_eq!(was, 16 + 25);
        let text = String::from_utf8_lossy(&second).to_string();
        assert!(!text.contains("1111 1111"), "{text}");
        assert!(text.starts_with("card: ") && text.ends_with("\x1b[0m done\r\n"), "{text}");
        assert!(!counts.is_empty());
    }

    /// Generated text without escape sequences: the byte-level masker that
    /// reads the screen text gives exactly what the masker gives on the
    /// text itself.
    #[test]
    fn on_plain_text_the_screen_reader_agrees_with_the_masker() {
        use rand::{Rng, SeedableRng};
        let masker = masker();
        let pieces = [
            "4111 1111 1111 1111",
            "5555555555554444",
            "alice@example.com",
            "call +1 415 555 0100",
            "order 1234",
            " ",
            "\n",
            "plain words",
            "x",
            "-",
            "2026-12-07",
            "ünïcode",
            "\t",
            "user:pass@host",
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
        for case in 0..500 {
            let text: String =
                (0..rng.random_range(1..12)).map(|_| pieces[rng.random_range(0..pieces.len())]).collect();
            let (mut a, mut b) = (Counts::new(), Counts::new());
            let by_bytes = mask_bytes(&masker, text.as_bytes(), &mut a);
            let by_text = masker.mask_text(&text, &mut b);
            assert_eq!(String::from_utf8(by_bytes).unwrap(), by_text, "case {case}: {text:?}");
            // In place: as long as the text, still text, each secret's
            // bytes replaced and nothing else, counted the same.
            let mut c = Counts::new();
            let in_place = mask_bytes_in_place(&masker, text.as_bytes(), &mut c);
            assert_eq!(in_place.len(), text.len(), "case {case}: {text:?}");
            let in_place = String::from_utf8(in_place).expect("text");
            let mut d = Counts::new();
            let mut at = 0;
            for found in replacements(&masker, text.as_bytes(), &mut d, false, |_| true) {
                assert_eq!(in_place[at..found.raw.start], text[at..found.raw.start], "case {case}");
                assert_ne!(in_place[found.raw.clone()], text[found.raw.clone()], "case {case}");
                at = found.raw.end;
            }
            assert_eq!(in_place[at..], text[at..], "case {case}");
            assert_eq!(a.into_rules(), b.into_rules(), "case {case}");
            assert_eq!(c.into_rules(), d.into_rules(), "case {case}");
        }
    }

    #[test]
    fn a_secret_on_a_long_line_or_after_a_stray_escape_is_still_found() {
        let masker = masker();
        let mut out = OutputMasker::default();
        let mut counts = Counts::new();
        let t = Instant::now();
        let mut line = vec![b'x'; HOLD];
        line.extend_from_slice(b" 4111 1111 ");
        let (first, _) = out.push(&masker, &line, t, &mut counts);
        let (second, _) = out.push(&masker, b"1111 1111 end\n", t, &mut counts);
        let all = String::from_utf8_lossy(&[first, second].concat()).to_string();
        assert!(!all.contains("1111 1111"), "{}", &all[all.len() - 60..]);
        let masked = mask_bytes(&masker, b"\x1b]0;title never ended\ncard 4111 1111 1111 1111\n", &mut counts);
        assert!(!String::from_utf8_lossy(&masked).contains("4111 1111"));
    }

    #[test]
    fn output_without_secrets_passes_byte_for_byte_and_held_output_is_flushed_in_time() {
        let masker = masker();
        let mut out = OutputMasker::default();
        let mut counts = Counts::new();
        let t = Instant::now();
        let bytes = b"\x1b[1mtotal 8\x1b[0m\r\n\xff\xfe raw\n";
        assert_eq!(out.push(&masker, bytes, t, &mut counts), (bytes.to_vec(), bytes.len()));
        // A keystroke's echo goes at once; a longer unfinished line waits.
        assert_eq!(out.push(&masker, b"l", t, &mut counts), (b"l".to_vec(), 1));
        assert!(out.push(&masker, b"user@host:~/src/app$ ", t, &mut counts).0.is_empty());
        assert_eq!(out.due(), Some(t + DELAY));
        assert_eq!(out.flush(&masker, &mut counts, false, t + DELAY).1, 21);
        assert_eq!(out.due(), None);
        // A card number echoed key by key waits until it is whole.
        for key in b"4111 1111 1111 111" {
            out.push(&masker, &[*key], t, &mut counts);
            assert!(out.flush(&masker, &mut counts, false, t + DELAY).0.is_empty());
        }
        let (last, _) = out.push(&masker, b"1\r\n", t, &mut counts);
        let text = String::from_utf8_lossy(&last).to_string();
        assert!(!text.contains("1111"), "{text}");
        assert!(!counts.is_empty());
        let mut counts = Counts::new();
        // A line longer than the hold goes, but for its tail.
        let long = vec![b'x'; HOLD + 10];
        assert_eq!(out.push(&masker, &long, t, &mut counts).0.len(), long.len() - TAIL);
        assert_eq!(out.flush(&masker, &mut counts, true, t).0.len(), TAIL);
        assert!(counts.is_empty());
    }
}
