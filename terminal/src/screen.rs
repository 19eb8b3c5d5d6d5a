//! A terminal's screen as a replay shows it: output played through one
//! terminal emulator (`vt100`), snapshotted as keyframes that a fresh
//! screen restores, and read as lines of styled runs.
//!
//! A keyframe is a byte string of escape sequences which, fed to a screen
//! of the same size, reproduces the state the next output depends on:
//! text, attributes, cursor, input modes, the scroll region, and the main
//! screen behind an alternate one (what a full-screen program like `less`
//! returns to). A keyframe is only taken between escape sequences and
//! whole characters ([`Screen::keyframe`] says `None` in between), so the
//! output after it reads the same from a restored screen as from the one
//! that played from the start. The sequences are told apart by the parser
//! `vt100` itself reads with (`vte`), run beside it byte for byte: what the
//! screen tracks is exactly what `vt100` acted on.

/// Largest screen side kept: a recorded size beyond it is clamped (a
/// screen of 500 × 500 cells is a few MiB in `vt100`).
pub const MAX_SIDE: u16 = 500;
/// An unfinished sequence kept to replay after a resize, at most (a longer
/// one, an endless OSC string, is cut).
const MAX_PENDING: usize = 64 << 10;

/// A terminal screen fed with output.
pub struct Screen {
    parser: vt100::Parser,
    /// The same parser `vt100` reads with, fed the same bytes one by one.
    reader: vte::Parser,
    tracker: Tracker,
    /// Whether the last byte left the reader between sequences and
    /// characters.
    ground: bool,
    /// Output since the screen was last between sequences and characters
    /// (at most [`MAX_PENDING`]): what a rebuilt screen is fed again.
    pending: Vec<u8>,
    /// What `vt100` keeps of the screen shown but cannot reproduce itself.
    shown: GridExtras,
    /// The same of the screen not shown (the main screen behind an
    /// alternate one, or an alternate screen that a program left and may
    /// show again), with its keyframe as it was left.
    hidden: GridExtras,
    hidden_keyframe: Option<Vec<u8>>,
    /// The attributes a saved cursor restores (one for both screens).
    saved_attrs: Vec<u8>,
}

/// What a grid keeps that its text does not show.
#[derive(Clone, Copy, Debug, Default)]
struct GridExtras {
    /// The scroll region (1-based, inclusive), if not the whole screen.
    region: Option<(u16, u16)>,
    /// The saved cursor (`ESC 7`), if not the top left.
    saved: Option<(u16, u16)>,
}

impl GridExtras {
    /// As the terminal changes them when it is resized.
    fn resized(&mut self, old_rows: u16, rows: u16, cols: u16) {
        if let Some((mut top, mut bottom)) = self.region {
            if bottom == old_rows || bottom > rows {
                bottom = rows;
            }
            if bottom < top {
                top = 1;
            }
            self.region = (top < bottom && (top, bottom) != (1, rows)).then_some((top, bottom));
        }
        if let Some((row, col)) = self.saved {
            let saved = (row.min(rows - 1), col.min(cols - 1));
            self.saved = (saved != (0, 0)).then_some(saved);
        }
    }
}

/// What one byte did, as the reader saw it.
#[derive(Default)]
struct Step {
    /// A character printed or a sequence dispatched: back to ground.
    dispatched: bool,
    /// A control executed (in ground or inside a sequence).
    executed: bool,
    /// A sequence whose effect the screen keeps track of.
    seen: Option<Seen>,
}

/// A sequence whose effect the screen keeps track of, read as `vt100`
/// reads it.
enum Seen {
    /// To the alternate screen (`CSI ? 47 h`; with 1049, saving the cursor
    /// and clearing the alternate screen first) or back.
    Alternate { entering: bool, save: bool },
    /// `ESC 7`.
    SaveCursor,
    /// `CSI top ; bottom r` (0: not given).
    Region(u16, u16),
    /// `ESC c`.
    Reset,
}

/// The reader's side of the byte-for-byte parse.
#[derive(Default)]
struct Tracker {
    step: Step,
}

impl vte::Perform for Tracker {
    fn print(&mut self, _c: char) {
        self.step.dispatched = true;
    }

    fn execute(&mut self, _byte: u8) {
        self.step.executed = true;
    }

    fn unhook(&mut self) {
        self.step.dispatched = true;
    }

    fn osc_dispatch(&mut self, _params: &[&[u8]], _bell_terminated: bool) {
        self.step.dispatched = true;
    }

    fn csi_dispatch(&mut self, params: &vte::Params, intermediates: &[u8], _ignore: bool, action: char) {
        self.step.dispatched = true;
        let first = |p: Option<&[u16]>| p.and_then(|p| p.first().copied()).unwrap_or(0);
        self.step.seen = match (intermediates.first(), action) {
            // (Of several modes in one sequence the first switch counts.)
            (Some(b'?'), 'h' | 'l') => params.iter().find_map(|mode| match mode {
                [47] => Some(Seen::Alternate { entering: action == 'h', save: false }),
                [1049] => Some(Seen::Alternate { entering: action == 'h', save: true }),
                _ => None,
            }),
            (None, 'r') => {
                let mut params = params.iter();
                Some(Seen::Region(first(params.next()), first(params.next())))
            }
            _ => None,
        };
    }

    fn esc_dispatch(&mut self, intermediates: &[u8], _ignore: bool, byte: u8) {
        self.step.dispatched = true;
        if intermediates.is_empty() {
            self.step.seen = match byte {
                b'7' => Some(Seen::SaveCursor),
                b'c' => Some(Seen::Reset),
                _ => None,
            };
        }
    }
}

impl Screen {
    /// An empty screen of `rows` × `cols` (each at least 2, at most
    /// [`MAX_SIDE`]; 0 is a terminal's default, 24 rows or 80 columns).
    pub fn new(rows: u32, cols: u32) -> Screen {
        let (rows, cols) = (rows_of(rows), cols_of(cols));
        Screen {
            parser: vt100::Parser::new(rows, cols, 0),
            reader: vte::Parser::new(),
            tracker: Tracker::default(),
            ground: true,
            pending: Vec::new(),
            shown: GridExtras::default(),
            hidden: GridExtras::default(),
            hidden_keyframe: None,
            saved_attrs: Vec::new(),
        }
    }

    /// A screen of `rows` × `cols` in the state `keyframe` holds.
    pub fn restore(rows: u32, cols: u32, keyframe: &[u8]) -> Screen {
        let mut screen = Screen::new(rows, cols);
        screen.feed(keyframe);
        screen
    }

    /// Rows and columns.
    pub fn size(&self) -> (u16, u16) {
        self.parser.screen().size()
    }

    pub fn resize(&mut self, rows: u32, cols: u32) {
        let (old_rows, old_cols) = self.size();
        let (rows, cols) = (rows_of(rows), cols_of(cols));
        // The screen not shown is resized as well: its keyframe is played
        // at the old size and taken again at the new one.
        if let Some(hidden) = &self.hidden_keyframe {
            let mut other = Screen::new(old_rows.into(), old_cols.into());
            other.feed(hidden);
            other.resize(rows.into(), cols.into());
            self.hidden_keyframe = Some(other.visible_keyframe());
            self.hidden = other.shown;
        } else {
            self.hidden.resized(old_rows, rows, cols);
        }
        self.parser.screen_mut().set_size(rows, cols);
        self.shown.resized(old_rows, rows, cols);
        // `vt100` keeps half of a wide character the new width cuts, and
        // trips over it later: the screen is rebuilt from its own state,
        // which draws such a half as a blank (as terminals do), then fed
        // again what it was in the middle of.
        let pending = std::mem::take(&mut self.pending);
        let state = self.state();
        *self = Screen::restore(rows.into(), cols.into(), &state);
        self.feed(&pending);
    }

    /// Plays output onto the screen.
    pub fn feed(&mut self, data: &[u8]) {
        // Bytes up to `fed` are with vt100; up to `ground_at`, the reader
        // was last between sequences.
        let (mut fed, mut ground_at) = (0, None);
        for i in 0..data.len() {
            self.tracker.step = Step::default();
            self.reader.advance(&mut self.tracker, &data[i..=i]);
            let step = std::mem::take(&mut self.tracker.step);
            // A dispatch ends in ground, unless by an ESC, which ends a
            // string and starts a sequence, or by a UTF-8 lead byte, which
            // ends a broken character and starts another; a control
            // executed keeps the state it came in (it may be inside a
            // sequence); anything else (a sequence or a character under
            // way) is not ground.
            let starts = data[i] == 0x1b || data[i] >= 0xc0;
            self.ground = !starts && (step.dispatched || (step.executed && self.ground));
            if self.ground {
                ground_at = Some(i + 1);
            }
            let Some(seen) = step.seen else { continue };
            // The screen up to the sequence's last byte, then that byte.
            self.parser.process(&data[fed..i]);
            let alternate = self.parser.screen().alternate_screen();
            match seen {
                Seen::Alternate { entering: true, save } => {
                    if save {
                        self.save_cursor();
                    }
                    if !alternate {
                        let main = self.visible_keyframe();
                        self.hidden_keyframe = Some(main);
                        std::mem::swap(&mut self.shown, &mut self.hidden);
                    }
                    if save {
                        // The alternate screen is cleared.
                        self.shown = GridExtras::default();
                    }
                    self.parser.process(&data[i..=i]);
                }
                Seen::Alternate { entering: false, .. } => {
                    if alternate {
                        let left = self.visible_keyframe();
                        self.hidden_keyframe = Some(left);
                        std::mem::swap(&mut self.shown, &mut self.hidden);
                    }
                    self.parser.process(&data[i..=i]);
                }
                Seen::SaveCursor => {
                    self.parser.process(&data[i..=i]);
                    self.save_cursor();
                }
                Seen::Region(top, bottom) => {
                    self.parser.process(&data[i..=i]);
                    let rows = self.size().0;
                    // As vt100 applies it: the bottom within the screen, a
                    // region of one row or less the whole screen.
                    let bottom = if bottom == 0 { rows } else { bottom.min(rows) };
                    let top = top.max(1);
                    self.shown.region = (top < bottom && (top, bottom) != (1, rows)).then_some((top, bottom));
                }
                Seen::Reset => {
                    self.parser.process(&data[i..=i]);
                    self.shown = GridExtras::default();
                    self.hidden = GridExtras::default();
                    self.hidden_keyframe = None;
                    self.saved_attrs.clear();
                }
            }
            fed = i + 1;
        }
        self.parser.process(&data[fed..]);
        match ground_at {
            Some(at) => {
                self.pending.clear();
                self.pending.extend_from_slice(&data[at..]);
            }
            None => self.pending.extend_from_slice(data),
        }
        if self.pending.len() > MAX_PENDING {
            self.pending.clear();
        }
    }

    fn save_cursor(&mut self) {
        let screen = self.parser.screen();
        let position = screen.cursor_position();
        self.shown.saved = (position != (0, 0)).then_some(position);
        self.saved_attrs = screen.attributes_formatted();
    }

    /// The escape sequences that reproduce this screen, or `None` while an
    /// escape sequence or a character is cut (the next output completes
    /// it).
    pub fn keyframe(&self) -> Option<Vec<u8>> {
        if !self.ground {
            return None;
        }
        Some(self.state())
    }

    /// The sequences that reproduce this screen, as of the last whole
    /// sequence or character.
    fn state(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let hidden = self.hidden_keyframe.as_deref();
        if self.parser.screen().alternate_screen() {
            // The main screen, then the alternate one over it.
            out.extend_from_slice(hidden.unwrap_or_default());
            out.extend_from_slice(b"\x1b[?47h");
        } else if let Some(alternate) = hidden {
            // An alternate screen a program may show again.
            out.extend_from_slice(b"\x1b[?47h");
            out.extend_from_slice(alternate);
            out.extend_from_slice(b"\x1b[?47l");
        }
        out.extend(self.visible_keyframe());
        out
    }

    fn visible_keyframe(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.shown.saved.is_some() || !self.saved_attrs.is_empty() {
            let (row, col) = self.shown.saved.unwrap_or_default();
            let cols = self.size().1;
            if col >= cols {
                // Saved past the last column, waiting to wrap: a character
                // written there gets the cursor there (the text is drawn
                // over below).
                out.extend_from_slice(format!("\x1b[{};{cols}H ", row + 1).as_bytes());
            } else {
                out.extend_from_slice(format!("\x1b[{};{}H", row + 1, col + 1).as_bytes());
            }
            out.extend_from_slice(&self.saved_attrs);
            out.extend_from_slice(b"\x1b7");
        }
        let screen = self.parser.screen();
        // The region first: it moves the cursor home, and text is drawn
        // row by row at absolute positions (not written through, which a
        // region would scroll).
        if let Some((top, bottom)) = self.shown.region {
            out.extend_from_slice(format!("\x1b[{top};{bottom}r").as_bytes());
        }
        out.extend_from_slice(b"\x1b[m\x1b[H\x1b[2J");
        for row in 0..screen.size().0 {
            let runs = self.line(row);
            if runs.is_empty() {
                continue;
            }
            out.extend_from_slice(format!("\x1b[{}H", row + 1).as_bytes());
            for run in runs {
                out.extend_from_slice(format!("\x1b[{}m", run.style.sgr()).as_bytes());
                out.extend_from_slice(run.text.as_bytes());
            }
        }
        let (row, col) = screen.cursor_position();
        let (_, cols) = screen.size();
        match if col >= cols { self.last_cell(row) } else { None } {
            // Past the last column, waiting to wrap: the last cell is
            // written again to get there.
            Some((at, text, style)) => {
                out.extend_from_slice(format!("\x1b[{};{}H\x1b[{}m{text}", row + 1, at + 1, style.sgr()).as_bytes());
            }
            None => out.extend_from_slice(format!("\x1b[{};{}H", row + 1, col.min(cols - 1) + 1).as_bytes()),
        }
        out.extend(screen.attributes_formatted());
        out.extend_from_slice(if screen.hide_cursor() { b"\x1b[?25l" } else { b"\x1b[?25h" });
        out.extend(screen.input_mode_formatted());
        out
    }

    /// The last character of a row: its column, text and style.
    fn last_cell(&self, row: u16) -> Option<(u16, String, Style)> {
        let screen = self.parser.screen();
        let (_, cols) = screen.size();
        let mut at = cols - 1;
        if screen.cell(row, at)?.is_wide_continuation() && at > 0 {
            at -= 1;
        }
        let cell = screen.cell(row, at)?;
        let text = if cell.has_contents() { cell.contents().to_string() } else { " ".to_string() };
        Some((at, text, style_of(cell)))
    }

    /// The screen's text, rows joined by new lines, trailing blanks cut.
    pub fn text(&self) -> String {
        self.parser.screen().contents()
    }

    /// Row `row` as runs of equally styled text (trailing unstyled blanks
    /// cut).
    pub fn line(&self, row: u16) -> Vec<Run> {
        let screen = self.parser.screen();
        let (_, cols) = screen.size();
        let mut runs: Vec<Run> = Vec::new();
        for col in 0..cols {
            let Some(cell) = screen.cell(row, col) else { break };
            if cell.is_wide_continuation() {
                continue;
            }
            // Half of a wide character the width cut: a blank.
            let cut = cell.is_wide() && col + 1 == cols;
            if cell.has_contents() && cell.contents() != " " && !cut {
                let style = style_of(cell);
                match runs.last_mut() {
                    Some(run) if run.style == style => run.text.push_str(cell.contents()),
                    _ => runs.push(Run { text: cell.contents().to_string(), style }),
                }
                continue;
            }
            // A blank (written or not) shows only its background, underline
            // and inverse video (which shows its foreground colour): it
            // goes with the text before it if that shows a blank alike.
            let blank = style_of(cell).blank();
            match runs.last_mut() {
                Some(run) if run.style.blank() == blank => run.text.push(' '),
                _ => runs.push(Run { text: " ".to_string(), style: blank }),
            }
        }
        // Blanks at the end of a row that show nothing.
        while let Some(run) = runs.last_mut() {
            if run.style.shows_blanks() {
                break;
            }
            let kept = run.text.trim_end_matches(' ').len();
            run.text.truncate(kept);
            if !run.text.is_empty() {
                break;
            }
            runs.pop();
        }
        runs
    }

    /// Every row as runs.
    pub fn lines(&self) -> Vec<Vec<Run>> {
        (0..self.size().0).map(|row| self.line(row)).collect()
    }

    /// The cursor's row and column, and whether it is shown.
    pub fn cursor(&self) -> (u16, u16, bool) {
        let screen = self.parser.screen();
        let (row, col) = screen.cursor_position();
        (row, col, !screen.hide_cursor())
    }

    /// Whether a full-screen program's alternate screen is shown.
    pub fn alternate(&self) -> bool {
        self.parser.screen().alternate_screen()
    }
}

fn style_of(cell: &vt100::Cell) -> Style {
    Style {
        fg: cell.fgcolor(),
        bg: cell.bgcolor(),
        bold: cell.bold(),
        dim: cell.dim(),
        italic: cell.italic(),
        underline: cell.underline(),
        inverse: cell.inverse(),
    }
}

/// A side as the screen keeps it: 0 (a client that did not say) as a
/// terminal's default, and at least 2 (`vt100` trips over a single row or
/// column).
fn side(n: u32, default: u16) -> u16 {
    match n {
        0 => default,
        n => n.clamp(2, u32::from(MAX_SIDE)) as u16,
    }
}

fn rows_of(n: u32) -> u16 {
    side(n, 24)
}

fn cols_of(n: u32) -> u16 {
    side(n, 80)
}

/// Text in one style.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub text: String,
    pub style: Style,
}

pub use vt100::Color;

/// How a run of text is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Style {
    pub fg: Color,
    pub bg: Color,
    pub bold: bool,
    pub dim: bool,
    pub italic: bool,
    pub underline: bool,
    pub inverse: bool,
}

impl Style {
    /// The SGR parameters that select this style from the default one.
    pub fn sgr(&self) -> String {
        let mut params = vec!["0".to_string()];
        for (on, code) in
            [(self.bold, "1"), (self.dim, "2"), (self.italic, "3"), (self.underline, "4"), (self.inverse, "7")]
        {
            if on {
                params.push(code.to_string());
            }
        }
        for (color, base) in [(self.fg, 30u16), (self.bg, 40)] {
            match color {
                Color::Default => {}
                Color::Idx(n) if n < 8 => params.push((base + u16::from(n)).to_string()),
                Color::Idx(n) if n < 16 => params.push((base + 60 + u16::from(n) - 8).to_string()),
                Color::Idx(n) => params.push(format!("{};5;{n}", base + 8)),
                Color::Rgb(r, g, b) => params.push(format!("{};2;{r};{g};{b}", base + 8)),
            }
        }
        params.join(";")
    }

    /// What a blank in this style shows.
    fn blank(&self) -> Style {
        let fg = if self.inverse { self.fg } else { Color::Default };
        Style { fg, bg: self.bg, underline: self.underline, inverse: self.inverse, ..Style::default() }
    }

    /// Whether blanks in this style can be seen (a background, an
    /// underline, inverse video).
    pub fn shows_blanks(&self) -> bool {
        self.bg != Color::Default || self.underline || self.inverse
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// What a screen shows and what its next output depends on.
    type State = (Vec<Vec<Run>>, (u16, u16, bool), bool, (u16, u16));

    fn state(screen: &Screen) -> State {
        (screen.lines(), screen.cursor(), screen.alternate(), screen.size())
    }

    /// Panics naming the first difference between two screens.
    fn assert_same(got: &Screen, want: &Screen, context: impl Fn() -> String) {
        let (g, w) = (state(got), state(want));
        if g == w {
            return;
        }
        let row = (0..g.0.len().max(w.0.len())).find(|&r| g.0.get(r) != w.0.get(r));
        let rows = row.map(|r| format!("row {r}: {:?}\n  want {:?}", g.0.get(r), w.0.get(r)));
        panic!(
            "{}\n{rows:?}\ncursor {:?} want {:?}; alternate {} want {}; size {:?} want {:?}",
            context(),
            g.1,
            w.1,
            g.2,
            w.2,
            g.3,
            w.3
        );
    }

    #[test]
    fn colours_split_across_writes_come_out_as_one_styled_run() {
        let mut screen = Screen::new(24, 80);
        screen.feed(b"card \x1b[3");
        screen.feed(b"1mred\x1b[0m plain");
        assert_eq!(screen.keyframe().map(|_| ()), Some(()));
        let line = screen.line(0);
        assert_eq!(line.len(), 3, "{line:?}");
        // (A blank goes with the text before it: its colour shows nothing.)
        assert_eq!(line[1].text, "red ");
        assert_eq!(line[1].style.fg, Color::Idx(1));
        assert_eq!(line[2].text, "plain");
    }

    #[test]
    fn no_keyframe_inside_a_sequence_or_a_character() {
        let mut screen = Screen::new(24, 80);
        screen.feed(b"a\x1b[3");
        assert!(screen.keyframe().is_none());
        screen.feed(b"1m\xe2\x82");
        assert!(screen.keyframe().is_none());
        screen.feed(b"\xac");
        assert!(screen.keyframe().is_some());
        assert_eq!(screen.text(), "a€");
    }

    #[test]
    fn a_restored_alternate_screen_returns_to_the_main_one() {
        let mut screen = Screen::new(5, 20);
        screen.feed(b"$ less file\r\n\x1b[?1049h\x1b[H\x1b[2Jpage one");
        let keyframe = screen.keyframe().expect("between sequences");
        let mut restored = Screen::restore(5, 20, &keyframe);
        assert_eq!(state(&restored), state(&screen));
        for s in [&mut screen, &mut restored] {
            s.feed(b"\x1b[?1049l$ ");
        }
        assert_eq!(state(&restored), state(&screen));
        assert_eq!(restored.text(), "$ less file\n$ ");
    }

    /// Output as programs write it: text, colours, cursor moves, erasing,
    /// scroll regions, alternate screens, wide characters, resets.
    fn output(rng: &mut impl Rng) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.random_range(1..12) {
            if rng.random_range(0..6) == 0 {
                // Bytes in any order: sequences cut, interrupted, unknown,
                // strings ended by what may or may not end them.
                const BYTES: &[u8] = b"\x1b\x1b\x1b[[]?1049hl7c;r\x07\x18\x1aP\\O\r\nx\x7f\x9b\xc3\xa9\xe6\x97";
                for _ in 0..rng.random_range(1..8) {
                    out.push(BYTES[rng.random_range(0..BYTES.len())]);
                }
                continue;
            }
            let piece: &[u8] = match rng.random_range(0..25) {
                0 => b"\r\n",
                1 => b"\x1b[31m",
                2 => b"\x1b[1;44m",
                3 => b"\x1b[0m",
                4 => b"\x1b[38;5;208m",
                5 => b"\x1b[48;2;10;20;30m",
                6 => b"\x1b[H",
                7 => b"\x1b[2J",
                8 => b"\x1b[K",
                9 => b"\x1b[3;5H",
                10 => b"\x1b[2;4r",
                11 => b"\x1b[r",
                12 => b"\x1b[?1049h",
                13 => b"\x1b[?1049l",
                14 => b"\x1b[?47h",
                15 => b"\x1b[?47l",
                16 => "日本".as_bytes(),
                17 => b"\x1b[?25l",
                18 => b"\x1b[?25h",
                19 => b"\x1bM",
                21 => b"\x1b7",
                22 => b"\x1b8",
                23 => b"\x1b[?1049h\x1b[?1049h",
                20 => b"\x1b[4;7m",
                _ => b"lorem ipsum dolor sit amet ",
            };
            out.extend_from_slice(piece);
        }
        if rng.random_range(0..40) == 0 {
            out.extend_from_slice(b"\x1bc");
        }
        out
    }

    /// Differential: a screen restored from a keyframe and fed what
    /// follows shows exactly what the screen played from the start shows,
    /// at every later write, whatever the writes' cuts and resizes.
    #[test]
    fn a_restored_keyframe_plays_on_as_the_whole_recording_does() {
        let cases = if std::env::var_os("PROCTOR_LONG_DIFFERENTIAL").is_some() { 20_000 } else { 400 };
        for case in 0..cases {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(case);
            let (rows, cols) = (rng.random_range(3..12), rng.random_range(4..30));
            let mut whole = Screen::new(rows, cols);
            let mut restored: Option<Screen> = None;
            // What happened since the last keyframe, to show on a failure.
            let mut log = Vec::new();
            for step in 0..rng.random_range(5..40) {
                if rng.random_range(0..8) == 0 {
                    let (rows, cols) = (rng.random_range(3..12), rng.random_range(4..30));
                    whole.resize(rows, cols);
                    log.push(format!("resize {rows}x{cols}"));
                    if let Some(r) = restored.as_mut() {
                        r.resize(rows, cols);
                    }
                    continue;
                }
                let data = output(&mut rng);
                // Cut anywhere, as reads cut it.
                let cut = rng.random_range(0..=data.len());
                for part in [&data[..cut], &data[cut..]] {
                    whole.feed(part);
                    log.push(format!("{:?}", String::from_utf8_lossy(part)));
                    if let Some(r) = restored.as_mut() {
                        r.feed(part);
                        assert_same(r, &whole, || format!("case {case} step {step}: {log:#?}"));
                    }
                    if rng.random_range(0..3) == 0
                        && let Some(keyframe) = whole.keyframe()
                    {
                        let (rows, cols) = whole.size();
                        let fresh = Screen::restore(rows.into(), cols.into(), &keyframe);
                        assert_same(&fresh, &whole, || {
                            format!("case {case} step {step}: restored from {:?}", String::from_utf8_lossy(&keyframe))
                        });
                        restored = Some(fresh);
                        log = vec![
                            format!("after {part:?}"),
                            format!("keyframe {:?}", String::from_utf8_lossy(&keyframe)),
                        ];
                    }
                }
            }
        }
    }

    /// Any size a client may announce (none, one row, thousands of
    /// columns), any resize and any output: nothing panics.
    #[test]
    fn any_size_and_any_output_leave_a_screen_standing() {
        for case in 0..400u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(case);
            let size = |rng: &mut rand_chacha::ChaCha8Rng| match rng.random_range(0..40) {
                0..4 => 0,
                4..8 => 1,
                8 => 5000,
                _ => rng.random_range(2..6),
            };
            let mut screen = Screen::new(size(&mut rng), size(&mut rng));
            for _ in 0..20 {
                let data = output(&mut rng);
                let cut = rng.random_range(0..=data.len());
                screen.feed(&data[..cut]);
                if rng.random_range(0..4) == 0 {
                    screen.resize(size(&mut rng), size(&mut rng));
                }
                screen.feed(&data[cut..]);
                if let Some(keyframe) = screen.keyframe() {
                    let (rows, cols) = screen.size();
                    Screen::restore(rows.into(), cols.into(), &keyframe).lines();
                }
            }
            let (rows, cols) = screen.size();
            assert!((2..=MAX_SIDE).contains(&rows) && (2..=MAX_SIDE).contains(&cols));
        }
    }
}
