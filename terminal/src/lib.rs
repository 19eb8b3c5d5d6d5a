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

mod echo;
mod editor;

pub use echo::{EchoedLines, Limits};
pub use editor::{LineEditor, render_output};

/// Where the reading of a byte stream is in an escape sequence.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// A control sequence (`ESC [`, `ESC O` on input), its parameters so far.
    Sequence(String),
    /// A string (OSC, DCS, APC, PM), up to BEL or `ESC \`.
    Text,
    /// ESC inside a string.
    TextEsc,
    /// A character-set designation: one more character.
    Charset,
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
