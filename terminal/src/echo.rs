//! Command lines recovered from keystrokes and the terminal's echo.
//!
//! SSH does not tell the gateway when the remote terminal stops echoing (a
//! password prompt turns echo off on the target's pty, not in the
//! protocol), and keystrokes must be recorded before they are forwarded,
//! before anyone knows whether they will be echoed. So keystrokes are never
//! recorded as text. They are held here, in memory, until the output shows
//! whether the terminal echoed them, and only what it echoed becomes text.
//!
//! A run of typed characters counts as echoed when the output shows them in
//! order (escape sequences skipped, and the space of a backspace's `\b \b`),
//! starting
//! - at the first visible output character after they were typed: the
//!   echo of what is typed comes before anything else the terminal shows
//!   (so output that merely holds the same characters later, a background
//!   job's line or the password prompt itself, echoes nothing); or
//! - anywhere, for a whole line typed ahead (up to its Enter, at least
//!   [`WHOLE_LINE`] characters): keys typed before a banner or a prompt
//!   are echoed after it. Only output holding the whole line, in order,
//!   matches: a password matched this way was in the recorded output
//!   already.
//!
//! A run that reaches the end of what was typed (or the line's Enter)
//! settles its line: what was typed before it and not shown never will be
//! (terminals echo in order). Characters still unshown `settle` after the
//! Enter that followed them, once the output has moved to a new line, or
//! `give_up` after it in any case, were not echoed; so is what was typed
//! before a Ctrl-C or Ctrl-U on its line, and what was typed when a
//! full-screen program took or left the screen. Shown characters and the
//! editing keys around them are replayed through a [`LineEditor`];
//! characters never shown are left out, so a password typed at a prompt
//! that does not echo yields no command line.
//!
//! What this cannot know: text the line editor inserts by itself (history
//! recall, tab completion) was not typed and is not in the line. A shell
//! can hide a command from any line reader.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::{Escape, LineEditor, Step, decode};

/// Characters a line typed ahead must have to be matched anywhere in the
/// output (up to its Enter): shorter ones only by an echo that comes first.
pub const WHOLE_LINE: usize = 4;

/// Lines typed ahead that are looked for in the output at once.
const LINES_LOOKED_FOR: usize = 8;

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
        Limits { held_keys: 1024, settle: Duration::from_millis(500), give_up: Duration::from_secs(5) }
    }
}

#[derive(Debug)]
enum Key {
    /// A character that, echoed, shows as itself; `None` until known.
    Visible { ch: char, echoed: Option<bool> },
    /// Enter: when it was typed, and how many new lines the output had
    /// started by then.
    Enter { ch: char, at: Instant, newlines: u64 },
    /// An editing key (a control character, or a part of an escape
    /// sequence): applied by the line editor, never echoed as itself.
    Control(char),
}

impl Key {
    fn pending(&self) -> bool {
        matches!(self, Key::Visible { echoed: None, .. })
    }
}

/// A run of typed characters being matched against the output.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Where it started (a key's number).
    start: u64,
    /// The next character expected, `None` once shown as far as typed.
    next: Option<u64>,
}

/// The typed command lines of one terminal, recovered from its keystrokes
/// and its echo.
#[derive(Debug, Default)]
pub struct EchoedLines {
    limits: Limits,
    editor: LineEditor,
    /// Keys typed and not yet given to the editor, numbered from `base`.
    keys: VecDeque<Key>,
    base: u64,
    /// The first key typed since the output last showed a visible
    /// character: where an echo may start.
    fresh: Option<u64>,
    /// Where lines typed ahead start (their first unshown character), when
    /// known since the keys last changed.
    ahead: Option<Vec<u64>>,
    input: Escape,
    input_partial: Vec<u8>,
    output: Escape,
    output_partial: Vec<u8>,
    /// New lines the output has started.
    newlines: u64,
    run: Option<Run>,
    /// How far the output is into what may be a backspace's erasing
    /// `\b \b`: 1 after a backspace, 2 after a space following one (held
    /// until the next character says which it was).
    erase: u8,
    /// The alternate screen is in use (a full-screen program): what is
    /// typed there is not a command line.
    alternate: bool,
}

impl EchoedLines {
    pub fn new(limits: Limits) -> EchoedLines {
        EchoedLines { limits, ..Default::default() }
    }

    /// Keys held, awaiting their echo or the editor.
    pub fn held(&self) -> usize {
        self.keys.len()
    }

    fn end(&self) -> u64 {
        self.base + self.keys.len() as u64
    }

    fn key(&self, number: u64) -> Option<&Key> {
        number.checked_sub(self.base).and_then(|i| self.keys.get(i as usize))
    }

    fn key_mut(&mut self, number: u64) -> Option<&mut Key> {
        number.checked_sub(self.base).and_then(|i| self.keys.get_mut(i as usize))
    }

    /// Takes keystrokes typed at `now`; returns the command lines they
    /// completed (an Enter typed after a line whose echo was all seen).
    pub fn typed(&mut self, bytes: &[u8], now: Instant) -> Vec<String> {
        let mut lines = self.tick(now);
        let text = decode(&mut self.input_partial, bytes);
        if !text.is_empty() && self.fresh.is_none() {
            self.fresh = Some(self.end());
        }
        for c in text.chars() {
            let key = match self.input.feed(c) {
                Step::Plain if c == '\r' || c == '\n' => Key::Enter { ch: c, at: now, newlines: self.newlines },
                Step::Plain if c == '\x03' || c == '\x15' => {
                    // Ctrl-C, Ctrl-U: what the line held is thrown away.
                    self.abandon_line();
                    Key::Control(c)
                }
                Step::Plain if c.is_control() => Key::Control(c),
                Step::Plain => Key::Visible { ch: c, echoed: None },
                _ => Key::Control(c),
            };
            self.keys.push_back(key);
        }
        self.ahead = None;
        while self.keys.len() > self.limits.held_keys {
            let Some(first) = self.keys.iter().position(Key::pending) else { break };
            self.decide(self.base + first as u64, false);
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
            let step = self.output.feed(c);
            if self.erase == 2 {
                // A space after a backspace, held: with a backspace after
                // it, it was erasing (`\b \b`); otherwise it was shown.
                self.erase = 0;
                if step == Step::Plain && c == '\x08' {
                    continue;
                }
                self.visible(' ', &mut lines);
            }
            match step {
                Step::Plain => {}
                Step::Sequence { params, last } => {
                    self.erase = 0;
                    self.sequence(&params, last, &mut lines);
                    continue;
                }
                Step::Inside | Step::Escaped(_) => {
                    self.erase = 0;
                    continue;
                }
            }
            match c {
                '\x08' => self.erase = 1,
                ' ' if self.erase == 1 => self.erase = 2,
                '\n' => {
                    self.erase = 0;
                    self.newlines += 1;
                }
                c if c.is_control() => self.erase = 0,
                c => {
                    self.erase = 0;
                    self.visible(c, &mut lines);
                }
            }
        }
        lines
    }

    /// Gives up on echoes that are overdue at `now`; returns the command
    /// lines that completes.
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let enter = self.keys.iter().position(|key| matches!(key, Key::Enter { .. }));
            let Some(enter) = enter else { break };
            let Key::Enter { at, newlines, .. } = self.keys[enter] else { break };
            let waited = now.saturating_duration_since(at);
            let overdue = (self.newlines > newlines && waited >= self.limits.settle) || waited >= self.limits.give_up;
            if !overdue {
                break;
            }
            self.run = None;
            for key in self.keys.iter_mut().take(enter) {
                if let Key::Visible { echoed: echoed @ None, .. } = key {
                    *echoed = Some(false);
                }
            }
            self.ahead = None;
            self.release(&mut lines);
        }
        lines
    }

    /// Ends the terminal: what is still unshown was not echoed.
    pub fn finish(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        self.run = None;
        for key in self.keys.iter_mut() {
            if let Key::Visible { echoed: echoed @ None, .. } = key {
                *echoed = Some(false);
            }
        }
        self.release(&mut lines);
        lines
    }

    /// A visible character of the output.
    fn visible(&mut self, c: char, lines: &mut Vec<String>) {
        let fits = |this: &Self, at: u64| matches!(this.key(at), Some(Key::Visible { ch, echoed: None }) if *ch == c);
        let (start, at) = match self.run {
            Some(Run { start, next: Some(next) }) if fits(self, next) => (start, next),
            _ => match self.start_fitting(c) {
                Some(at) => (at, at),
                None => {
                    // Not an echo: a run under way broke off.
                    self.run = None;
                    self.fresh = None;
                    return;
                }
            },
        };
        let next = self.expected(at + 1);
        self.run = Some(Run { start, next });
        if next.is_none() {
            self.settle(start);
            self.release(lines);
        }
        // What was typed before this has now been followed by output: its
        // echo can no longer come first.
        self.fresh = None;
    }

    /// Where a run showing `c` starts: the first unshown key typed since
    /// the output last showed something, or the first unshown key of a
    /// whole line typed ahead.
    fn start_fitting(&mut self, c: char) -> Option<u64> {
        let fits = |this: &Self, at: u64| matches!(this.key(at), Some(Key::Visible { ch, echoed: None }) if *ch == c);
        if let Some(fresh) = self.fresh {
            let first = (fresh..self.end()).find(|&at| self.key(at).is_some_and(Key::pending));
            // A line's echo comes before the new line its Enter starts:
            // output after that is the program's, whatever it holds.
            let echo_due = |at: u64| {
                (at..self.end()).find_map(|at| match self.key(at) {
                    Some(Key::Enter { newlines, .. }) => Some(*newlines == self.newlines),
                    _ => None,
                })
            };
            if let Some(first) = first
                && fits(self, first)
                && echo_due(first) != Some(false)
            {
                return Some(first);
            }
        }
        if self.ahead.is_none() {
            self.ahead = Some(self.lines_ahead());
        }
        self.ahead.as_ref().and_then(|ahead| ahead.iter().copied().find(|&at| fits(self, at)))
    }

    /// The first unshown key of each whole line typed ahead (an Enter after
    /// it, [`WHOLE_LINE`] unshown characters at least), the first few.
    fn lines_ahead(&self) -> Vec<u64> {
        let mut found = Vec::new();
        let (mut first, mut count) = (None, 0);
        for (i, key) in self.keys.iter().enumerate() {
            match key {
                Key::Enter { .. } => {
                    if let Some(first) = first.take()
                        && count >= WHOLE_LINE
                    {
                        found.push(self.base + first);
                        if found.len() == LINES_LOOKED_FOR {
                            break;
                        }
                    }
                    count = 0;
                }
                Key::Visible { echoed: None, .. } => {
                    first.get_or_insert(i as u64);
                    count += 1;
                }
                _ => {}
            }
        }
        found
    }

    /// The next unshown key at or after `from`, before the next Enter.
    fn expected(&self, from: u64) -> Option<u64> {
        let mut at = from;
        loop {
            match self.key(at)? {
                Key::Enter { .. } => return None,
                Key::Visible { echoed: None, .. } => return Some(at),
                _ => at += 1,
            }
        }
    }

    /// A run starting at `start` showed its line as far as it was typed:
    /// the unshown keys before it were not echoed, the run's were.
    fn settle(&mut self, start: u64) {
        let mut at = self.base;
        while at < start {
            self.decide(at, false);
            at += 1;
        }
        while let Some(key) = self.key_mut(at) {
            match key {
                Key::Enter { .. } => break,
                Key::Visible { echoed: echoed @ None, .. } => *echoed = Some(true),
                _ => {}
            }
            at += 1;
        }
        self.run = None;
        self.ahead = None;
    }

    fn decide(&mut self, at: u64, shown: bool) {
        if let Some(Key::Visible { echoed: echoed @ None, .. }) = self.key_mut(at) {
            *echoed = Some(shown);
        }
        self.ahead = None;
    }

    /// What was typed on the current line so far, unshown, never will be.
    fn abandon_line(&mut self) {
        for key in self.keys.iter_mut().rev() {
            match key {
                Key::Enter { .. } => break,
                Key::Visible { echoed: echoed @ None, .. } => *echoed = Some(false),
                _ => {}
            }
        }
        self.run = None;
    }

    /// Gives the editor every key up to the first undecided one.
    fn release(&mut self, lines: &mut Vec<String>) {
        let mut buf = [0u8; 4];
        while let Some(key) = self.keys.front() {
            let c = match key {
                Key::Visible { echoed: None, .. } => break,
                Key::Visible { echoed: Some(false), .. } => None,
                Key::Visible { ch, echoed: Some(true) } => Some(*ch),
                Key::Enter { ch, .. } => Some(*ch),
                Key::Control(c) => Some(*c),
            };
            self.keys.pop_front();
            self.base += 1;
            if let Some(c) = c {
                let done = self.editor.feed(c.encode_utf8(&mut buf).as_bytes());
                if !self.alternate {
                    lines.extend(done);
                }
            }
        }
        if self.fresh.is_some_and(|fresh| fresh < self.base) {
            self.fresh = Some(self.base);
        }
        if self.run.is_some_and(|run| run.start < self.base) {
            self.run = None;
        }
    }

    /// A control sequence of the output: only the alternate screen's
    /// switches matter here. What was typed, unshown, as a full-screen
    /// program takes or leaves the screen was the program's.
    fn sequence(&mut self, params: &str, last: char, lines: &mut Vec<String>) {
        let Some(modes) = params.strip_prefix('?') else { return };
        if !modes.split(';').any(|m| matches!(m, "47" | "1047" | "1049")) {
            return;
        }
        let alternate = match last {
            'h' => true,
            'l' => false,
            _ => return,
        };
        if alternate == self.alternate {
            return;
        }
        self.run = None;
        for key in self.keys.iter_mut() {
            if let Key::Visible { echoed: echoed @ None, .. } = key {
                *echoed = Some(false);
            }
        }
        self.release(lines);
        self.alternate = alternate;
        // What was typed in the full-screen program is no line.
        self.editor = LineEditor::default();
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
    fn a_password_typed_key_by_key_is_not_echoed_by_output_holding_its_characters() {
        // A background job prints between the keys; the prompt itself holds
        // the first ones (typed ahead of it).
        let lines = run(&[
            (b"hu", b""),
            (b"", b"[sudo] password for hugo: "),
            (b"n", b"heartbeat n\r\n"),
            (b"t", b""),
            (b"er2\r", b""),
            (b"", b"\r\nSorry, try again.\r\n$ "),
            (b"id\r", b"id\r\nuid=0\r\n$ "),
        ]);
        assert_eq!(lines, vec!["id"]);
    }

    #[test]
    fn keys_a_program_took_do_not_hold_up_the_next_line() {
        // `q` quitting a pager that leaves no alternate screen; a key read
        // by `read -n1`; a password given up with Ctrl-C.
        assert_eq!(run(&[(b"q", b"\r\x1b[K$ "), (b"ls\r", b"ls\r\n")]), vec!["ls"]);
        assert_eq!(run(&[(b"pass", b""), (b"\x03", b"^C\r\n$ "), (b"pwd\r", b"pwd\r\n")]), vec!["pwd"]);
    }

    #[test]
    fn a_terminal_s_own_replies_are_not_typed_text() {
        // Device attributes and a colour report, answered by the client's
        // terminal in the middle of the typing.
        let lines = run(&[
            (b"\x1b[?62;22c\x1b]11;rgb:0000/0000/0000\x1b\\", b""),
            (b"ls", b"ls"),
            (b"\x1b[>0;276;0c -l\r", b" -l\r\n"),
        ]);
        assert_eq!(lines, vec!["ls -l"]);
    }

    #[test]
    fn a_space_typed_after_the_cursor_moved_back_is_its_own_echo() {
        // readline: Left arrow (echoed as a backspace), then a space typed
        // (inserted: the space, the rest of the line, the cursor back).
        let lines = run(&[(b"ab", b"ab"), (b"\x1b[D", b"\x08"), (b" ", b" b\x08"), (b"\r", b"\r\n")]);
        assert_eq!(lines, vec!["a b"]);
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
                    if !echo && rng.random_bool(0.3) {
                        // A background job's line between keys, holding
                        // the digits apart.
                        found.extend(lines.shown(b"tick 4 2 7 9 0 1 3 5 6 8\r\n", now));
                    }
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
