//! Terminal traffic as an investigator reads it: keystrokes replayed through
//! a line editor into the command lines that were run, and output rendered
//! through a terminal emulator into screen text.

use crate::{Escape, Step};

/// Replays keystrokes the way a shell's line editor applies them, and hands
/// back each line when Enter is pressed. Arrow keys, Home/End, Delete,
/// backspace, Ctrl-A/E/B/F/K/U/W and Ctrl-C are applied; history recall
/// (arrow up/down, Ctrl-R) cannot be known from the keystrokes alone and
/// leaves the line as typed.
#[derive(Debug, Default, Clone)]
pub struct LineEditor {
    line: Vec<char>,
    cursor: usize,
    escape: Escape,
    /// Bytes of a character split across two inputs.
    partial: Vec<u8>,
}

impl LineEditor {
    /// Applies keystrokes; returns the lines completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let text = crate::decode(&mut self.partial, bytes);
        let mut lines = Vec::new();
        for c in text.chars() {
            self.key(c, &mut lines);
        }
        lines
    }

    fn key(&mut self, c: char, lines: &mut Vec<String>) {
        match self.escape.feed(c) {
            Step::Plain => {}
            Step::Inside => return,
            Step::Sequence { params, last } => return self.sequence(&params, last),
            Step::Escaped('b') => return self.cursor = self.word_start(),
            Step::Escaped('f') => return self.cursor = self.word_end(),
            Step::Escaped(_) => return,
        }
        match c {
            '\r' | '\n' => {
                let line: String = self.line.iter().collect();
                if !line.trim().is_empty() {
                    lines.push(line.trim().to_string());
                }
                self.line.clear();
                self.cursor = 0;
            }
            '\x7f' | '\x08' => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.line.remove(self.cursor);
                }
            }
            '\x01' => self.cursor = 0,
            '\x05' => self.cursor = self.line.len(),
            '\x02' => self.cursor = self.cursor.saturating_sub(1),
            '\x06' => self.cursor = (self.cursor + 1).min(self.line.len()),
            '\x0b' => self.line.truncate(self.cursor),
            '\x15' => {
                self.line.drain(..self.cursor);
                self.cursor = 0;
            }
            '\x17' => {
                let start = self.word_start();
                self.line.drain(start..self.cursor);
                self.cursor = start;
            }
            '\x03' => {
                self.line.clear();
                self.cursor = 0;
            }
            '\x04' if self.cursor < self.line.len() => {
                self.line.remove(self.cursor);
            }
            c if c.is_control() => {}
            c => {
                self.line.insert(self.cursor, c);
                self.cursor += 1;
            }
        }
    }

    fn sequence(&mut self, params: &str, last: char) {
        match (params, last) {
            (_, 'C') => self.cursor = (self.cursor + 1).min(self.line.len()),
            (_, 'D') => self.cursor = self.cursor.saturating_sub(1),
            (_, 'H') | ("1" | "7", '~') => self.cursor = 0,
            (_, 'F') | ("4" | "8", '~') => self.cursor = self.line.len(),
            ("3", '~') if self.cursor < self.line.len() => {
                self.line.remove(self.cursor);
            }
            _ => {}
        }
    }

    fn word_start(&self) -> usize {
        let mut at = self.cursor;
        while at > 0 && self.line[at - 1].is_whitespace() {
            at -= 1;
        }
        while at > 0 && !self.line[at - 1].is_whitespace() {
            at -= 1;
        }
        at
    }

    fn word_end(&self) -> usize {
        let mut at = self.cursor;
        while at < self.line.len() && self.line[at].is_whitespace() {
            at += 1;
        }
        while at < self.line.len() && !self.line[at].is_whitespace() {
            at += 1;
        }
        at
    }
}

/// At most this many columns: long lines are not wrapped into words that
/// never were, up to this width.
const MAX_COLUMNS: usize = 500;
/// At most this many rows of one output event are rendered.
const MAX_ROWS: usize = 2000;

/// Screen text of a piece of terminal output: colour codes dropped,
/// backspaces and carriage returns applied, trailing blanks trimmed.
pub fn render_output(bytes: &[u8]) -> String {
    // Plain text (most output) needs no emulator: no grid to allocate.
    if !bytes.iter().any(|&b| matches!(b, 0x1b | 0x08 | 0x7f) || b == b'\r') {
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
        return lines.join("\n");
    }
    let widest = bytes.split(|&b| b == b'\n').map(<[u8]>::len).max().unwrap_or(0);
    let columns = (widest + 1).clamp(20, MAX_COLUMNS);
    // Lines wider than the screen wrap: count their rows too, or the first
    // ones would scroll off before the screen is read.
    let rows: usize = bytes.split(|&b| b == b'\n').map(|line| line.len().div_ceil(columns).max(1)).sum();
    let rows = rows.clamp(1, MAX_ROWS) + 1;
    let mut parser = vt100::Parser::new(rows as u16, columns as u16, 0);
    parser.process(bytes);
    let text = parser.screen().contents();
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(keys: &[&[u8]]) -> Vec<String> {
        let mut editor = LineEditor::default();
        keys.iter().flat_map(|k| editor.feed(k)).collect()
    }

    #[test]
    fn backspaces_and_arrow_edits_give_the_line_that_ran() {
        // "kubectl get pods", typed with a slip and a fix in the middle.
        let keys: &[&[u8]] = &[b"kubectl get pds", b"\x1b[D", b"\x1b[D", b"o", b"\x1b[F", b"x", b"\x7f", b" -A", b"\r"];
        assert_eq!(typed(keys), vec!["kubectl get pods -A"]);
        // Ctrl-U wipes, Ctrl-W drops a word, Home and Delete edit the start.
        assert_eq!(typed(&[b"rm -rf /\x15ls -la /tmp/x\x17\r"]), vec!["ls -la"]);
        assert_eq!(typed(&[b"xsudo id\x1b[H\x1b[3~\r"]), vec!["sudo id"]);
        assert_eq!(typed(&[b"echo \xc3", b"\xa9t\xc3\xa9\r"]), vec!["echo été"]);
        assert_eq!(typed(&[b"oops\x03", b"whoami\r\r"]), vec!["whoami"]);
    }

    #[test]
    fn output_is_rendered_as_the_screen_shows_it() {
        assert_eq!(render_output(b"\x1b[1;31mERROR\x1b[0m: disk full\r\n"), "ERROR: disk full");
        assert_eq!(render_output(b"progress 10%\rprogress 100%\r\nok"), "progress 100%\nok");
        assert_eq!(render_output(b"x\x08 \x08"), "");
        assert_eq!(render_output(b"plain\n  text  \n\nout"), "plain\n  text\nout");
    }

    #[test]
    fn lines_wider_than_the_screen_keep_their_start() {
        let mut bytes = b"\x1b[32mSTART".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 3 * MAX_COLUMNS));
        bytes.extend_from_slice(b"\x1b[0m\r\nTAIL\r\n");
        let text = render_output(&bytes);
        assert!(text.starts_with("STARTxxx"), "{}", &text[..40.min(text.len())]);
        assert!(text.ends_with("TAIL"));
    }
}
