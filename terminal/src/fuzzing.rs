//! Entry points for coverage-guided fuzzing (`fuzz/`, see the README's
//! "Fuzzing") and their regression replays: terminal output is what a
//! target wrote, untrusted.

use crate::Screen;

/// A terminal driven by `data`: its first two bytes are its size; then
/// output, where `0xFF 0xFE R C` resizes to R × C and `0xFF 0xFD` marks a
/// point to take a keyframe at. Must hold: nothing panics, and a screen
/// restored from any keyframe and fed what follows shows exactly what the
/// screen played from the start shows.
pub fn screen(data: &[u8]) {
    let (Some(&rows), Some(&cols)) = (data.first(), data.get(1)) else { return };
    let mut whole = Screen::new(u32::from(rows % 64), u32::from(cols));
    let mut restored: Option<Screen> = None;
    let mut rest = &data[2..];
    while !rest.is_empty() {
        let (chunk, command, after) = match rest.windows(2).position(|w| w[0] == 0xFF && w[1] >= 0xFD) {
            Some(at) => (&rest[..at], Some(rest[at + 1]), &rest[at + 2..]),
            None => (rest, None, &rest[rest.len()..]),
        };
        whole.feed(chunk);
        if let Some(screen) = restored.as_mut() {
            screen.feed(chunk);
        }
        rest = after;
        match command {
            Some(0xFE) => {
                let (r, c) = (rest.first().copied().unwrap_or(0), rest.get(1).copied().unwrap_or(0));
                rest = rest.get(2..).unwrap_or_default();
                whole.resize(u32::from(r % 64), u32::from(c));
                if let Some(screen) = restored.as_mut() {
                    screen.resize(u32::from(r % 64), u32::from(c));
                }
            }
            Some(_) => {
                if let Some(keyframe) = whole.keyframe() {
                    let (r, c) = whole.size();
                    restored = Some(Screen::restore(r.into(), c.into(), &keyframe));
                }
            }
            None => {}
        }
        if let Some(screen) = &restored {
            assert_eq!(screen.lines(), whole.lines(), "a restored keyframe shows another screen");
            assert_eq!(screen.cursor(), whole.cursor(), "a restored keyframe has its cursor elsewhere");
            assert_eq!(screen.size(), whole.size());
        }
    }
}
