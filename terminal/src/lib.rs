//! Terminal traffic as people read it.
//!
//! - [`LineEditor`]: keystrokes replayed the way a shell's line editor
//!   applies them, into the command lines that ran.
//! - [`EchoedLines`]: command lines recovered at the gateway from what was
//!   typed *and* what the terminal echoed of it, so that input the terminal
//!   never showed (a password at a prompt that turned echo off) never
//!   becomes text.
//! - [`render_output`]: output rendered through a terminal emulator into
//!   screen text.
//! - [`Screen`]: a terminal screen for replay, with keyframes a fresh
//!   screen restores and lines of styled runs to show.

mod echo;
mod editor;
#[doc(hidden)]
pub mod fuzzing;
pub mod screen;

pub use echo::{EchoedLines, Limits};
pub use editor::{LineEditor, render_output};
pub use screen::Screen;

/// Where the reading of a byte stream is in an escape sequence.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// A control sequence (`ESC [`, `ESC O`), its parameter and
    /// intermediate characters so far.
    Sequence(String),
    /// A string (OSC, DCS, APC, PM, SOS), up to BEL or `ESC \`.
    Text,
    /// ESC inside a string.
    TextEsc,
    /// A character-set designation: one more character.
    Charset,
}

/// What one character is to the escape-sequence reading.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// An ordinary character (or a control character other than ESC).
    Plain,
    /// Part of an escape sequence, which goes on.
    Inside,
    /// The end of a control sequence: its parameters and final character.
    Sequence { params: String, last: char },
    /// The second character of a two-character escape (`ESC b`, Alt-b).
    Escaped(char),
}

impl Escape {
    /// Reads `c`. Control sequences are read whole as ECMA-48 has them
    /// (parameters and intermediates 0x20-0x3F, then one final character),
    /// and strings up to their terminator: a terminal's own replies (device
    /// attributes, colours, mouse reports) are never taken for text.
    pub(crate) fn feed(&mut self, c: char) -> Step {
        match std::mem::take(self) {
            Escape::None if c == '\x1b' => {
                *self = Escape::Start;
                Step::Inside
            }
            Escape::None => Step::Plain,
            Escape::Start => {
                *self = match c {
                    '[' | 'O' => Escape::Sequence(String::new()),
                    ']' | 'P' | '_' | '^' | 'X' => Escape::Text,
                    '(' | ')' | '*' | '+' | '-' | '.' | '/' | '#' | '%' => Escape::Charset,
                    _ => return Step::Escaped(c),
                };
                Step::Inside
            }
            Escape::Sequence(mut params) => {
                if ('\x20'..='\x3f').contains(&c) {
                    params.push(c);
                    *self = Escape::Sequence(params);
                    Step::Inside
                } else {
                    Step::Sequence { params, last: c }
                }
            }
            Escape::Text => {
                *self = match c {
                    '\x07' => Escape::None,
                    '\x1b' => Escape::TextEsc,
                    _ => Escape::Text,
                };
                Step::Inside
            }
            Escape::TextEsc => {
                *self = if c == '\\' { Escape::None } else { Escape::Text };
                Step::Inside
            }
            Escape::Charset => Step::Inside,
        }
    }
}

/// UTF-8 text of `bytes`, a character cut at the end kept in `partial` for
/// next time; bytes that are not UTF-8 become U+FFFD.
pub(crate) fn decode(partial: &mut Vec<u8>, bytes: &[u8]) -> String {
    let mut data = std::mem::take(partial);
    data.extend_from_slice(bytes);
    match std::str::from_utf8(&data) {
        Ok(text) => text.to_string(),
        Err(e) if e.error_len().is_none() => {
            let (whole, rest) = data.split_at(e.valid_up_to());
            *partial = rest.to_vec();
            String::from_utf8_lossy(whole).into_owned()
        }
        Err(_) => String::from_utf8_lossy(&data).into_owned(),
    }
}
