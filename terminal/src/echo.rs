//! Command lines recovered from keystrokes and the terminal's echo.
//!
//! SSH does not tell the gateway when the remote terminal stops echoing (a
//! password prompt turns echo off on the target's pty, not in the
//! protocol), and keystrokes must be recorded before they are forwarded,
//! before anyone knows whether they will be echoed. So keystrokes are never
//! recorded as text. They are held here, in memory, until the output shows
//! whether the terminal echoed them: the characters typed since the last
//! Enter (or all of those typed so far, when no Enter is pending) count as
//! shown once the output has shown them all, one after the other (spaces
//! in between pass, for a backspace's `\b \b` or a redraw; colour codes and
//! other escape sequences are skipped). A run that breaks off starts again
//! at the next character that fits. Characters still unshown `settle`
//! after the Enter that followed them, once the output has moved to a new
//! line since, or `give_up` after it in any case, were not echoed. Shown
//! characters and the editing keys around them are replayed through a
//! [`LineEditor`]; characters never shown are left out, so a password typed
//! at a prompt that does not echo yields no command line: only output that
//! holds the whole password (recorded as output then anyway) could count
//! it as shown.
//!
//! What this cannot know: text the line editor inserts by itself (history
//! recall, tab completion) was not typed and is not in the line. A shell
//! can hide a command from any line reader.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::{Escape, LineEditor, decode};

/// Bounds of what is held while waiting for an echo.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Keys held awaiting their echo; past it, the oldest unshown ones
    /// count as never echoed.
    pub held_keys: usize,
    /// How long after an Enter its line's echo may still come once the
    /// output has started a new line.
    pub settle: Duration,
    /// How long after an Enter its line's echo may still come at all.
    pub give_up: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { held_keys: 4096, settle: Duration::from_millis(500), give_up: Duration::from_secs(5) }
    }
}

#[derive(Debug)]
enum Key {
    /// A character that, echoed, shows as itself; `None` until known.
    Visible { ch: char, echoed: Option<bool> },
    /// Enter: when it was typed, and whether the output has started a new
    /// line since.
    Enter { ch: char, at: Instant, newline: bool },
    /// An editing key (a control character, or a part of an escape
    /// sequence): applied by the line editor, never echoed as itself.
    Control(char),
}


/// The typed command lines of one terminal, recovered from its keystrokes
/// and its echo.
#[derive(Debug, Default)]
pub struct EchoedLines {
    limits: Limits,
    editor: LineEditor,
    /// Keys typed and not yet given to the editor: the first is an
    /// undecided visible key whenever there is one.
    keys: VecDeque<Key>,
    input: Escape,
    input_partial: Vec<u8>,
    output: Escape,
    output_partial: Vec<u8>,
    /// In a run of shown characters: where in `keys` its line starts, and
    /// where the next character is (`None`: the line is shown as far as it
    /// was typed).
    run: Option<(usize, Option<usize>)>,
    /// How far the output is into a backspace's erasing `\b \b`: 1 after
    /// the first backspace, 2 after its space.
    erase: u8,
    /// The alternate screen is in use (a full-screen program): what is
    /// typed there is not a command line.
    alternate: bool,
}

impl EchoedLines {
    pub fn new(limits: Limits) -> EchoedLines {
        EchoedLines { limits, ..Default::default() }
    }

    /// Takes keystrokes typed at `now`; returns the command lines they
    /// completed (an Enter typed after a line whose echo was all seen).
    pub fn typed(&mut self, bytes: &[u8], now: Instant) -> Vec<String> {
        let mut lines = self.tick(now);
        let text = decode(&mut self.input_partial, bytes);
        for c in text.chars() {
            let key = match std::mem::take(&mut self.input) {
                Escape::Start => {
                    if c == '[' || c == 'O' {
                        self.input = Escape::Sequence(String::new());
                    }
                    Key::Control(c)
                }
                Escape::Sequence(mut params) => {
                    if c.is_ascii_digit() || c == ';' {
                        params.push(c);
                        self.input = Escape::Sequence(params);
                    }
                    Key::Control(c)
                }
                _ if c == '\x1b' => {
                    self.input = Escape::Start;
                    Key::Control(c)
                }
                _ if c == '\r' || c == '\n' => Key::Enter { ch: c, at: now, newline: false },
                _ if c.is_control() => Key::Control(c),
                _ => Key::Visible { ch: c, echoed: None },
            };
            self.keys.push_back(key);
        }
        while self.keys.len() > self.limits.held_keys {
            if !self.decide_first(false) {
                break;
            }
            self.run = None;
            self.release(&mut lines);
        }
        self.release(&mut lines);
        lines
    }

    /// Takes what the terminal showed at `now`; returns the command lines
    /// whose echo it completed.
    pub fn shown(&mut self, bytes: &[u8], now: Instant) -> Vec<String> {
        let mut lines = self.tick(now);
        let text = decode(&mut self.output_partial, bytes);
        for c in text.chars() {
            match std::mem::take(&mut self.output) {
                Escape::Start => {
                    self.output = match c {
                        '[' => Escape::Sequence(String::new()),
                        ']' | 'P' | '_' | '^' | 'X' => Escape::Text,
                        '(' | ')' | '*' | '+' | '-' | '.' | '/' | '#' | '%' => Escape::Charset,
                        _ => Escape::None,
                    };
                    continue;
                }
                Escape::Sequence(mut params) => {
                    if ('\x20'..='\x3f').contains(&c) {
                        params.push(c);
                        self.output = Escape::Sequence(params);
                    } else {
                        self.sequence(&params, c);
                    }
                    continue;
                }
                Escape::Text => {
                    self.output = match c {
                        '\x07' => Escape::None,
                        '\x1b' => Escape::TextEsc,
                        _ => Escape::Text,
                    };
                    continue;
                }
                Escape::TextEsc => {
                    self.output = if c == '\\' { Escape::None } else { Escape::Text };
                    continue;
                }
                Escape::Charset => continue,
                Escape::None => {}
            }
            match c {
                '\x1b' => self.output = Escape::Start,
                '\n' => {
                    for key in self.keys.iter_mut() {
                        if let Key::Enter { newline, .. } = key {
                            *newline = true;
                        }
                    }
                }
                '\x08' => self.erase = if self.erase == 2 { 0 } else { 1 },
                c if c.is_control() => {}
                c => self.visible(c, &mut lines),
            }
        }
        lines
    }

    /// Gives up on echoes that are overdue at `now`; returns the command
    /// lines that completes.
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let overdue = self.keys.iter().find_map(|key| match key {
                Key::Enter { at, newline, .. } => {
                    let waited = now.saturating_duration_since(*at);
                    Some((*newline && waited >= self.limits.settle) || waited >= self.limits.give_up)
                }
                _ => None,
            });
            if overdue != Some(true) || !self.decide_first(false) {
                break;
            }
            self.run = None;
            self.undecided_before_enter(false);
            self.release(&mut lines);
        }
        lines
    }

    /// Ends the terminal: what is still unshown was not echoed.
    pub fn finish(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        self.run = None;
        while self.decide_first(false) {
            self.release(&mut lines);
        }
        self.release(&mut lines);
        lines
    }

    /// Keys held, awaiting their echo or the editor.
    pub fn held(&self) -> usize {
        self.keys.len()
    }

    /// Where the next undecided visible key at or after `from` is, before
    /// the next Enter.
    fn expected(&self, from: usize) -> Option<usize> {
        for (at, key) in self.keys.iter().enumerate().skip(from) {
            match key {
                Key::Enter { .. } => return None,
                Key::Visible { echoed: None, .. } => return Some(at),
                _ => {}
            }
        }
        None
    }

    fn visible(&mut self, c: char, lines: &mut Vec<String>) {
        if c == ' ' && self.erase == 1 {
            // The space of a backspace's `\b \b`: erasing, not an echo.
            self.erase = 2;
            return;
        }
        self.erase = 0;
        if self.keys.is_empty() {
            return;
        }
        let fits = |keys: &VecDeque<Key>, at: usize| matches!(keys.get(at), Some(Key::Visible { ch, .. }) if *ch == c);
        let (line, at) = match self.run {
            Some((line, Some(at))) if fits(&self.keys, at) => (line, at),
            _ => {
                // The run broke off (or none was under way): one starts
                // here if this is the first unshown character of a line.
                self.run = None;
                match self.line_start_fitting(c) {
                    Some(found) => found,
                    None => return,
                }
            }
        };
        let next = self.expected(at + 1);
        self.run = Some((line, next));
        if next.is_none() {
            // The line shown whole (up to its Enter, or as far as it was
            // typed): the terminal echoes in order, so what lines before it
            // still hold unshown never will be.
            for (i, key) in self.keys.iter_mut().enumerate() {
                match key {
                    Key::Enter { .. } if i >= line => break,
                    Key::Visible { echoed: echoed @ None, .. } => *echoed = Some(i >= line),
                    _ => {}
                }
            }
            self.run = None;
            self.release(lines);
        }
    }

    /// The first unshown character of a line (keys between two Enters)
    /// that is `c`: the line's start and the character's place.
    fn line_start_fitting(&self, c: char) -> Option<(usize, usize)> {
        let mut line = 0;
        let mut first = true;
        for (at, key) in self.keys.iter().enumerate() {
            match key {
                Key::Enter { .. } => {
                    line = at + 1;
                    first = true;
                }
                Key::Visible { ch, echoed: None } if first => {
                    if *ch == c {
                        return Some((line, at));
                    }
                    first = false;
                }
                _ => {}
            }
        }
        None
    }

    /// Decides every undecided key before the next Enter.
    fn undecided_before_enter(&mut self, shown: bool) {
        for key in self.keys.iter_mut() {
            match key {
                Key::Enter { .. } => break,
                Key::Visible { echoed: echoed @ None, .. } => *echoed = Some(shown),
                _ => {}
            }
        }
    }

    /// Decides the first undecided key; false if there is none.
    fn decide_first(&mut self, shown: bool) -> bool {
        let first = self.keys.iter_mut().find(|key| matches!(key, Key::Visible { echoed: None, .. }));
        match first {
            Some(Key::Visible { echoed, .. }) => {
                *echoed = Some(shown);
                true
            }
            _ => false,
        }
    }

    /// Gives the editor every key up to the first undecided one.
    fn release(&mut self, lines: &mut Vec<String>) {
        let mut buf = [0u8; 4];
        let mut released = 0;
        while let Some(key) = self.keys.front() {
            let c = match key {
                Key::Visible { echoed: None, .. } => break,
                Key::Visible { echoed: Some(false), .. } => None,
                Key::Visible { ch, echoed: Some(true) } => Some(*ch),
                Key::Enter { ch, .. } => Some(*ch),
                Key::Control(c) => Some(*c),
            };
            self.keys.pop_front();
            released += 1;
            if let Some(c) = c {
                let done = self.editor.feed(c.encode_utf8(&mut buf).as_bytes());
                if !self.alternate {
                    lines.extend(done);
                }
            }
        }
        if released > 0 {
            self.run = self.run.and_then(|(line, next)| {
                let next = match next {
                    Some(at) => Some(at.checked_sub(released)?),
                    None => None,
                };
                Some((line.saturating_sub(released), next))
            });
        }
    }
    /// A control sequence of the output: only the alternate screen's
    /// switches matter here.
    fn sequence(&mut self, params: &str, last: char) {
        let Some(modes) = params.strip_prefix('?') else { return };
        let alternate = modes.split(';').any(|m| matches!(m, "47" | "1047" | "1049"));
        match last {
            'h' if alternate => self.alternate = true,
            'l' if alternate && self.alternate => {
                self.alternate = false;
                // What was typed in the full-screen program is no line.
                self.editor = LineEditor::default();
            }
            _ => {}
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A terminal in cooked mode: echoes what is typed when `echo` is on
    /// (a backspace as `\b \b`, Enter as CR LF), nothing when it is off.
    fn tty_echo(keys: &[u8], echo: bool) -> Vec<u8> {
        if !echo {
            return Vec::new();
        }
        let mut out = Vec::new();
        for &k in keys {
            match k {
                b'\r' => out.extend_from_slice(b"\r\n"),
                0x7f => out.extend_from_slice(b"\x08 \x08"),
                k if k.is_ascii_control() => {}
                k => out.push(k),
            }
        }
        out
    }

    /// Steps of (typed, shown), 10 ms apart.
    fn run(steps: &[(&[u8], &[u8])]) -> Vec<String> {
        let mut lines = EchoedLines::new(Limits::default());
        let mut now = Instant::now();
        let mut found = Vec::new();
        for (typed, shown) in steps {
            found.extend(lines.typed(typed, now));
            found.extend(lines.shown(shown, now));
            now += Duration::from_millis(10);
        }
        found.extend(lines.tick(now + Duration::from_secs(60)));
        found.extend(lines.finish());
        found
    }

    #[test]
    fn an_echoed_line_is_found_as_edited() {
        let typed: &[u8] = b"echo helo\x7f\x7fllo-world\r";
        assert_eq!(run(&[(typed, &tty_echo(typed, true))]), vec!["echo hello-world"]);
        // Key by key, each echo arriving before the next key.
        let steps: Vec<(Vec<u8>, Vec<u8>)> = typed.iter().map(|&k| (vec![k], tty_echo(&[k], true))).collect();
        let steps: Vec<(&[u8], &[u8])> = steps.iter().map(|(a, b)| (a.as_slice(), b.as_slice())).collect();
        assert_eq!(run(&steps), vec!["echo hello-world"]);
        // The echo lagging the keys, in pieces, with a colour code in it.
        assert_eq!(
            run(&[(b"ls -la", b""), (b" /tmp\r", b"ls \x1b[1m-"), (b"", b"la /tmp\r\ntotal 0\r\n")]),
            vec!["ls -la /tmp"]
        );
        // Typed ahead, before a banner; echoed after it.
        assert_eq!(
            run(&[(b"uptime\r", b"Last login: today\r\nThe programs\r\n"), (b"", b"uptime\r\n 10:00 up\r\n")]),
            vec!["uptime"]
        );
    }

    #[test]
    fn input_never_echoed_is_no_line() {
        // A password at a prompt that turned echo off; the program then
        // prints a line that holds its characters, apart.
        let lines = run(&[
            (b"", b"Password: "),
            (b"s3cret", b""),
            (b"\r", b""),
            (b"", b"\r\nsorry s3cre t s3cr3t\r\n$ "),
            (b"id\r", b"id\r\nuid=0(root)\r\n$ "),
        ]);
        assert_eq!(lines, vec!["id"]);
        // Output with no new line, holding the characters.
        let lines = run(&[(b"hunter2\r", b""), (b"", b"got it: hunter hunte2r")]);
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[test]
    fn a_line_waits_for_the_unechoed_one_before_it_to_be_given_up() {
        let mut lines = EchoedLines::new(Limits::default());
        let t = Instant::now();
        assert!(lines.typed(b"pw\r", t).is_empty());
        assert!(lines.shown(b"\r\n$ ", t).is_empty());
        assert!(lines.typed(b"ls\r", t).is_empty());
        // The next line's echo: the terminal echoes in order, so the line
        // before it never will be.
        assert_eq!(lines.shown(b"ls\r\n", t), vec!["ls"]);
        // The line before given up, the next one still waits for its echo.
        assert!(lines.typed(b"pw\r", t).is_empty());
        assert!(lines.shown(b"\r\n$ ", t).is_empty());
        assert!(lines.typed(b"id\r", t).is_empty());
        let later = t + Duration::from_millis(600);
        assert!(lines.tick(later).is_empty());
        assert_eq!(lines.held(), 3);
        assert_eq!(lines.shown(b"id\r\n", later), vec!["id"]);
    }

    #[test]
    fn full_screen_programs_are_not_command_lines() {
        let lines = run(&[
            (b"vi x\r", b"vi x\r\n\x1b[?1049h\x1b[H"),
            (b"ihello\r", b"hello\r\n"),
            (b"\x1b:wq\r", b":wq\x1b[?1049l\r\n$ "),
            (b"pwd\r", b"pwd\r\n/root\r\n$ "),
        ]);
        assert_eq!(lines, vec!["vi x", "pwd"]);
    }

    #[test]
    fn held_keys_are_bounded() {
        let mut lines = EchoedLines::new(Limits { held_keys: 16, ..Limits::default() });
        let now = Instant::now();
        for _ in 0..100 {
            lines.typed(b"abcdefgh", now);
            assert!(lines.held() <= 16);
        }
        assert!(lines.typed(b"\r", now).is_empty());
    }

    /// Generated sessions against a simulated terminal, echo on or off per
    /// line: every echoed line is what the plain line editor makes of its
    /// keys, and no line typed with echo off (digits, typed nowhere else)
    /// ever shows up in a command line, even when the program's answer
    /// holds the same digits, apart.
    #[test]
    fn echoed_lines_match_the_line_editor_and_unechoed_ones_never_appear() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
        for case in 0..300 {
            let mut lines = EchoedLines::new(Limits::default());
            let mut now = Instant::now();
            let mut expected = Vec::new();
            let mut found = Vec::new();
            for _ in 0..rng.random_range(1..8) {
                let echo = rng.random_bool(0.7);
                // Lines typed without echo hold two digits at least (one
                // character printed by the program would pass for its echo).
                let mut keys = if echo { Vec::new() } else { vec![b'4', b'2'] };
                for _ in 0..rng.random_range(1..20) {
                    keys.push(match rng.random_range(0..10) {
                        0 => 0x7f,
                        1 => b' ',
                        _ if echo => rng.random_range(b'a'..=b'z'),
                        _ => rng.random_range(b'0'..=b'9'),
                    });
                }
                keys.push(b'\r');
                if echo {
                    let mut plain = LineEditor::default();
                    expected.extend(plain.feed(&keys));
                }
                // Keys arrive in random pieces; the echo follows each piece.
                let mut at = 0;
                while at < keys.len() {
                    let n = rng.random_range(1..=keys.len() - at);
                    let piece = &keys[at..at + n];
                    found.extend(lines.typed(piece, now));
                    found.extend(lines.shown(&tty_echo(piece, echo), now));
                    now += Duration::from_millis(rng.random_range(0..300));
                    at += n;
                }
                let answer: &[u8] = if echo { b"ok\r\n$ " } else { b"\r\n0x1x2x3x4x5x6x7x8x9 2 4\r\n$ " };
                found.extend(lines.shown(answer, now));
                now += Duration::from_millis(rng.random_range(0..2000));
            }
            found.extend(lines.tick(now + Duration::from_secs(60)));
            found.extend(lines.finish());
            assert_eq!(found, expected, "case {case}");
            assert!(found.iter().all(|l| !l.chars().any(|c| c.is_ascii_digit())), "case {case}: {found:?}");
        }
    }
}
