//! SSH rule sets: commands run with `exec` matched by program and arguments,
//! as a POSIX shell would split them, to allow, block or hold for review.
//!
//! A command line is split into its simple commands (at `;`, `&`, `|`,
//! `&&`, `||`, new lines and parentheses; quotes removed and escapes
//! applied; the commands inside `$( )` and backquotes, and the line given
//! to `sh -c`/`bash -c`, are commands too). A command's leading variable
//! assignments are skipped, its program is taken by its base name
//! (`/usr/bin/sudo` is `sudo`), and a command run through a wrapper
//! (`sudo`, `env`, `nice`, `nohup`, `timeout`, `xargs`, `exec`, `command`,
//! `time`, `doas`) is looked at as itself too.
//!
//! A pattern is written as a command (`"rm -rf"`, `"systemctl restart *"`):
//! its first word matches the program, its other words match arguments of
//! the command in that order, not necessarily next to each other (`rm -rf`
//! matches `rm -v -rf /tmp/x`); `*` in a word matches any characters. Any
//! command of the line matching a `block` pattern blocks it; else one
//! matching a `hold` pattern holds it for review.
//!
//! What this cannot see: a command built while it runs (a variable, `eval`,
//! a script file, base64 piped to a shell) is not in the words. Rules on
//! exec commands are enforced on what the words say; see the README.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use proctor_gateway_core::control::Holds;
use proctor_gateway_core::masking::MaskingKey;
use serde::Deserialize;

/// An SSH rule set as configured (`[ssh_rules.NAME]`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshRuleSetConfig {
    /// Commands refused.
    #[serde(default)]
    pub block: Vec<String>,
    /// Commands held until an approver allows them (then the identical
    /// command runs once).
    #[serde(default)]
    pub hold: Vec<String>,
    /// Who decides held commands, besides `control.admin_group`.
    #[serde(default)]
    pub approval_group: Option<String>,
    /// Whether interactive shells may be opened (default: yes).
    #[serde(default = "yes")]
    pub shells: bool,
    /// Whether the SFTP subsystem (sftp, scp) may be used. By default it
    /// may in a rule set with no patterns, or with patterns for file
    /// operations (`"sftp write /etc/*"`), which then decide each of its
    /// requests; a rule set whose patterns name only commands refuses it,
    /// since nothing there speaks of files.
    #[serde(default)]
    pub sftp: Option<bool>,
    /// Where local port forwarding (`ssh -L`, direct-tcpip) may connect:
    /// `host:port` patterns, `*` matching any characters
    /// (`"db.internal:5432"`, `"10.0.*:443"`). None by default.
    #[serde(default)]
    pub forward: Vec<String>,
    /// Ends an interactive session at a command line typed at its terminal
    /// that matches a pattern: `"block"` (a `block` pattern) or `"flag"`
    /// (any pattern). Without it such a line is flagged only: it reached
    /// the shell as it was typed.
    #[serde(default)]
    pub end_session_on: Option<EndOn>,
}

/// Which typed command lines end a session.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EndOn {
    /// Those matching a `block` pattern.
    Block,
    /// Those matching any pattern.
    Flag,
}

fn yes() -> bool {
    true
}

/// A pattern: a program and the arguments it must have, in order.
#[derive(Clone, Debug)]
struct Pattern {
    text: String,
    words: Vec<String>,
}

/// A rule set, ready to decide.
#[derive(Debug)]
pub struct SshRuleSet {
    pub name: String,
    block: Vec<Pattern>,
    hold: Vec<Pattern>,
    pub approval_group: Option<String>,
    pub shells: bool,
    pub sftp: bool,
    /// Destinations forwarding may reach: host and port patterns.
    forward: Vec<(String, String)>,
    pub end_session_on: Option<EndOn>,
    /// Whether patterns name file operations (their program is `sftp`):
    /// then SFTP requests and scp's paths are decided one by one.
    files: bool,
}

/// The program file operations are matched as: `sftp OPERATION PATH...`.
pub const FILES: &str = "sftp";

/// What a rule set decided for a command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// `rule` is `SET/block:PATTERN`.
    Block {
        rule: String,
    },
    /// `rule` is `SET/hold:PATTERN`.
    Hold {
        rule: String,
    },
}

impl SshRuleSet {
    pub fn new(name: &str, config: &SshRuleSetConfig) -> Result<SshRuleSet, String> {
        let patterns = |list: &[String], what: &str| {
            list.iter()
                .map(|text| {
                    let words = commands(text).into_iter().next().unwrap_or_default();
                    if words.is_empty() {
                        return Err(format!("ssh_rules.{name}.{what}: {text:?} names no command"));
                    }
                    Ok(Pattern { text: text.clone(), words })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let (block, hold) = (patterns(&config.block, "block")?, patterns(&config.hold, "hold")?);
        let files = block.iter().chain(&hold).any(|p| p.words[0] == FILES);
        Ok(SshRuleSet {
            name: name.to_string(),
            sftp: config.sftp.unwrap_or(files || (block.is_empty() && hold.is_empty())),
            block,
            hold,
            files,
            approval_group: config.approval_group.clone(),
            shells: config.shells,
            forward: config
                .forward
                .iter()
                .map(|d| match d.rsplit_once(':') {
                    Some((host, port)) if !host.is_empty() && !port.is_empty() => {
                        Ok((host.trim_matches(['[', ']']).to_string(), port.to_string()))
                    }
                    _ => Err(format!("ssh_rules.{name}.forward: {d:?} is not host:port")),
                })
                .collect::<Result<_, _>>()?,
            end_session_on: config.end_session_on,
        })
    }

    /// Whether a command line typed at a terminal with this verdict ends
    /// the session.
    pub fn ends_session(&self, verdict: &Verdict) -> bool {
        matches!(
            (self.end_session_on, verdict),
            (Some(EndOn::Block), Verdict::Block { .. })
                | (Some(EndOn::Flag), Verdict::Block { .. } | Verdict::Hold { .. })
        )
    }

    /// The `forward` pattern that lets a forwarded connection reach
    /// `host`:`port`, if one does.
    pub fn forwards_to(&self, host: &str, port: u32) -> Option<String> {
        let port = port.to_string();
        self.forward.iter().find(|(h, p)| glob(h, host) && glob(p, &port)).map(|(h, p)| format!("{h}:{p}"))
    }

    /// Decides a command line. A line too long, too deep or with a program
    /// named by something only the shell can work out (`$`, `*`, `?`, `[`,
    /// a backquote) is held, if this set has patterns at all: what cannot
    /// be read is not let through unread.
    pub fn decide(&self, line: &str) -> Verdict {
        if self.block.is_empty() && self.hold.is_empty() {
            return Verdict::Allow;
        }
        let unreadable = || Verdict::Hold { rule: format!("{}/unreadable", self.name) };
        if line.len() > MAX_LINE {
            return unreadable();
        }
        let Some(commands) = looked_at(line) else { return unreadable() };
        if commands.iter().any(|c| c.first().is_some_and(|p| p.contains(['$', '*', '?', '[', '`']))) {
            return unreadable();
        }
        let mut looked = commands;
        if self.files {
            // Legacy scp's server side: its paths are file operations too.
            // SFTP run as a command would carry operations no rule reads.
            let mut operations = Vec::new();
            for command in &looked {
                match command[0].as_str() {
                    "scp" => match scp_operation(command) {
                        Some(found) => operations.extend(found),
                        None if scp_moves_files(command) => return unreadable(),
                        None => {}
                    },
                    "sftp-server" => return Verdict::Block { rule: format!("{}/sftp-server", self.name) },
                    _ => {}
                }
            }
            looked.extend(operations);
        }
        self.first_match(&looked)
    }

    /// Whether this set decides file operations (it has `sftp` patterns).
    pub fn checks_files(&self) -> bool {
        self.files
    }

    /// Decides a file operation (`operation` as [`crate::sftp::Check`]
    /// names it) on `paths` as an SFTP request named them, relative ones
    /// relative to `home` if the target said it, and gives the line it was
    /// matched as (`sftp write /etc/hosts`), the text a review shows. A
    /// path that is not UTF-8 text, holds a NUL, or climbs with `..` (where
    /// a symbolic link would lead the target elsewhere than the words say)
    /// is held unread.
    ///
    /// An operation is matched as itself and as what it amounts to (see
    /// [`amounts_to`]): `sftp write /etc/*` holds a rename into `/etc` too.
    pub fn decide_file(&self, operation: &str, paths: &[Vec<u8>], home: Option<&str>) -> (Verdict, String) {
        let mut texts = Vec::new();
        let mut readable = true;
        for (i, path) in paths.iter().enumerate() {
            let Ok(mut text) = std::str::from_utf8(path).map(str::to_string) else {
                readable = false;
                texts.push(String::from_utf8_lossy(path).into_owned());
                continue;
            };
            // A symbolic link's relative target is its directory's.
            if operation == "symlink"
                && i == 0
                && !text.starts_with('/')
                && let Some((dir, _)) =
                    paths.get(1).and_then(|l| std::str::from_utf8(l).ok()).and_then(|l| l.rsplit_once('/'))
            {
                text = format!("{dir}/{text}");
            }
            match normalized_path(&text, false) {
                Some(path) => texts.push(path),
                None => {
                    readable = false;
                    texts.push(text);
                }
            }
        }
        let mut words = vec![FILES.to_string(), operation.to_string()];
        words.extend(texts.iter().cloned());
        let line = words.iter().map(|w| shell_quoted(w)).collect::<Vec<_>>().join(" ");
        if !self.files {
            return (Verdict::Allow, line);
        }
        if !readable {
            return (Verdict::Hold { rule: format!("{}/unreadable", self.name) }, line);
        }
        let commands: Vec<Vec<String>> = amounts_to(operation, &texts)
            .into_iter()
            .flat_map(|(operation, paths)| {
                // Each path by each of its names: absolute, and relative
                // to the login directory, when the target said which.
                let mut commands = vec![vec![FILES.to_string(), operation.to_string()]];
                for path in &paths {
                    let names = names_of(path, home);
                    commands = commands
                        .into_iter()
                        .flat_map(|c| names.iter().map(move |n| [c.clone(), vec![n.clone()]].concat()))
                        .collect();
                }
                commands
            })
            .collect();
        (self.first_match(&commands), line)
    }

    /// The first `block` pattern any of `commands` matches, else the first
    /// `hold` pattern.
    fn first_match(&self, commands: &[Vec<String>]) -> Verdict {
        let first = |patterns: &[Pattern]| {
            patterns.iter().find(|p| commands.iter().any(|c| matches(&p.words, c))).map(|p| p.text.clone())
        };
        if let Some(pattern) = first(&self.block) {
            return Verdict::Block { rule: format!("{}/block:{pattern}", self.name) };
        }
        if let Some(pattern) = first(&self.hold) {
            return Verdict::Hold { rule: format!("{}/hold:{pattern}", self.name) };
        }
        Verdict::Allow
    }
}

/// What a file operation amounts to, as the operations it is matched as:
/// itself; a rename is every operation on both its names and what is under
/// them (it takes the old name away with what is under it, replaces what
/// the new one held, and makes all of it reachable by another name); a
/// link, symbolic or not, is every operation on what it points to (each
/// can then be done through it) and writes its own name; making a
/// directory or changing attributes (modes, owners, size) writes the path;
/// removing a directory removes it. A path that may be a directory stands
/// for what is under it too ([`under`]).
fn amounts_to(operation: &str, paths: &[String]) -> Vec<(&'static str, Vec<String>)> {
    let itself = OPERATIONS.iter().copied().find(|o| *o == operation).unwrap_or("other");
    let mut all = vec![(itself, paths.to_vec())];
    // Every operation on a path and what is under it: a second name for it
    // (a link, a rename) lets each be done through that name.
    let every = |path: &String, all: &mut Vec<(&'static str, Vec<String>)>| {
        for operation in OPERATIONS {
            all.push((operation, vec![path.clone()]));
            all.push((operation, vec![under(path)]));
        }
    };
    match (operation, paths) {
        ("rename", [from, to]) => {
            // The old name goes with what is under it, and the new one
            // replaces (removes) what was there and is written.
            every(from, &mut all);
            every(to, &mut all);
        }
        ("symlink" | "link", [target, link]) => {
            every(target, &mut all);
            all.extend([("write", vec![link.clone()]), ("remove", vec![link.clone()])]);
        }
        ("mkdir" | "setstat", [path]) => all.push(("write", vec![path.clone()])),
        ("rmdir", [path]) => all.push(("remove", vec![path.clone()])),
        _ => {}
    }
    all
}

/// The file operations rules name.
const OPERATIONS: [&str; 10] =
    ["read", "write", "list", "remove", "mkdir", "rmdir", "setstat", "rename", "symlink", "link"];

/// A path that stands for everything under directory `path`: matched by
/// a pattern that some path under it would match ([`could_match`]).
fn under(path: &str) -> String {
    format!("{}/{UNDER}", path.trim_end_matches('/'))
}

/// Marks a path as standing for what is under it (no path holds a NUL).
const UNDER: char = '\0';

/// The names a path is matched by: itself, and, when the target said
/// which directory relative paths are relative to, its other name
/// (`~/x` and `/home/u/x`).
fn names_of(path: &str, home: Option<&str>) -> Vec<String> {
    let mut names = vec![path.to_string()];
    let Some(home) = home.and_then(|h| normalized_path(h, false)).filter(|h| h.starts_with('/')) else {
        return names;
    };
    if let Some(rest) = path.strip_prefix('~') {
        names.push(format!("{}{rest}", if home == "/" && rest.starts_with('/') { "" } else { &home }));
    } else if home == "/" && path.starts_with('/') {
        names.push(format!("~{path}"));
    } else if let Some(rest) = path.strip_prefix(home.as_str()).filter(|r| r.is_empty() || r.starts_with('/')) {
        names.push(format!("~{rest}"));
    }
    names
}

/// Legacy scp's server side (`scp -t PATH` receives, `scp -f PATH...`
/// sends) as the file operations it is: `sftp write PATH` (and under it:
/// PATH may be a directory the files go into, named by what scp sends)
/// or `sftp read PATH...` (and under them, recursive); `None` if it is not
/// one, or names a path only its shell can work out (then
/// [`scp_moves_files`] tells it moves files all the same).
fn scp_operation(command: &[String]) -> Option<Vec<Vec<String>>> {
    let (mut flags, mut paths, mut options) = (String::new(), Vec::new(), true);
    for word in &command[1..] {
        if options && word == "--" {
            options = false;
        } else if options && word.starts_with('-') && word.len() > 1 {
            flags.push_str(&word[1..]);
        } else {
            paths.push(word);
        }
    }
    let (operation, directories) = if flags.contains('t') {
        ("write", true)
    } else if flags.contains('f') {
        ("read", flags.contains('r'))
    } else {
        return None;
    };
    if paths.is_empty() {
        return None;
    }
    let mut commands = Vec::new();
    for path in paths {
        let path = normalized_path(path, true)?;
        if directories {
            commands.push(vec![FILES.to_string(), operation.to_string(), under(&path)]);
        }
        commands.push(vec![FILES.to_string(), operation.to_string(), path]);
    }
    Some(commands)
}

/// Whether a command line is legacy scp's server side alone, run by its
/// name (`scp -t PATH`, `scp -f PATH`), as OpenSSH's `scp -O` sends it.
pub fn legacy_scp(line: &str) -> bool {
    let commands = commands(line);
    matches!(commands.as_slice(), [command] if command[0] == "scp" && scp_moves_files(command))
        && line.split_whitespace().next() == Some("scp")
}

/// Whether an scp command is legacy scp's server side (`-t` or `-f`).
fn scp_moves_files(command: &[String]) -> bool {
    command[1..].iter().take_while(|w| *w != "--").any(|w| w.starts_with('-') && w.contains(['t', 'f']))
}

/// A path as the rules match it: absolute paths with `.` and repeated
/// slashes taken out; relative ones (the login directory's) as `~/PATH`.
/// `None` for a path that climbs with `..`, or (`shell`: a word a shell
/// expands) one naming what only the shell can work out (a variable, a
/// glob, another user's home).
fn normalized_path(path: &str, shell: bool) -> Option<String> {
    let mut path = path;
    if shell {
        // The shell's own `~`: the login directory, what a relative path
        // is relative to.
        if path == "~" || path.starts_with("~/") {
            path = path[1..].trim_start_matches('/');
        }
        if path.contains(['$', '*', '?', '[', '`', '{', '~', '\\']) {
            return None;
        }
    }
    if path.contains('\0') {
        return None;
    }
    let (absolute, rest) = match path.strip_prefix('/') {
        Some(rest) => (true, rest),
        None => (false, path),
    };
    let mut parts = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    Some(match (absolute, parts.is_empty()) {
        (true, _) => format!("/{}", parts.join("/")),
        (false, true) => "~".to_string(),
        (false, false) => format!("~/{}", parts.join("/")),
    })
}

/// A word as a shell would read it back: itself when plain, else quoted.
fn shell_quoted(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-~+:,@=%".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The SSH rule sets of a deployment, and where held commands go.
pub struct SshPolicy {
    sets: BTreeMap<String, Arc<SshRuleSet>>,
    holds: OnceLock<Arc<dyn Holds>>,
    /// Keys the hash that makes only the identical command run once approved.
    key: MaskingKey,
}

impl SshPolicy {
    pub fn new(sets: impl IntoIterator<Item = SshRuleSet>, key: MaskingKey) -> SshPolicy {
        SshPolicy {
            sets: sets.into_iter().map(|s| (s.name.clone(), Arc::new(s))).collect(),
            holds: OnceLock::new(),
            key,
        }
    }

    pub fn none() -> SshPolicy {
        SshPolicy::new([], MaskingKey::new(Vec::new()))
    }

    pub fn rules(&self, name: &str) -> Option<Arc<SshRuleSet>> {
        self.sets.get(name).cloned()
    }

    /// Where held commands are reviewed (the control plane), once it runs.
    pub fn set_holds(&self, holds: Arc<dyn Holds>) {
        let _ = self.holds.set(holds);
    }

    pub fn holds(&self) -> Option<&Arc<dyn Holds>> {
        self.holds.get()
    }

    /// The keyed hash of a command exactly as sent (its bytes).
    pub fn command_hash(&self, command: &[u8]) -> String {
        self.key.digest("ssh exec", command)
    }

    /// The keyed hash of a file operation as the rules read it (its line).
    pub fn file_hash(&self, line: &str) -> String {
        self.key.digest("ssh file", line.as_bytes())
    }
}

/// The longest command line read; a longer one is held unread.
const MAX_LINE: usize = 64 * 1024;
/// How deep lines within lines (`sh -c`, `$( )`) and wrappers within
/// wrappers are read; deeper is held unread.
const MAX_DEPTH: usize = 8;

/// Programs that run the command that follows their options.
const WRAPPERS: [&str; 16] = [
    "sudo", "env", "nice", "nohup", "timeout", "xargs", "exec", "command", "time", "doas", "setsid", "stdbuf",
    "ionice", "chrt", "taskset", "busybox",
];
/// Shells whose `-c` argument (or `su`'s) is a command line.
const SHELLS: [&str; 9] = ["sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "fish", "su"];

/// Every command of `line` a rule looks at: its simple commands, the
/// commands their wrappers run, and the lines given to shells' `-c`;
/// `None` if it nests deeper than is read.
fn looked_at(line: &str) -> Option<Vec<Vec<String>>> {
    let mut found = Vec::new();
    let mut pending = vec![(line.to_string(), 0usize)];
    while let Some((line, depth)) = pending.pop() {
        if depth > MAX_DEPTH {
            return None;
        }
        for command in commands_within(&line)? {
            let mut command = command;
            for peeled in 0.. {
                if peeled > MAX_DEPTH {
                    return None;
                }
                let program = command.first().cloned().unwrap_or_default();
                if SHELLS.contains(&program.as_str())
                    && let Some(at) = command.iter().position(|w| is_c_option(w))
                    && let Some(inner) = command.get(at + 1)
                {
                    pending.push((inner.clone(), depth + 1));
                }
                let inner = WRAPPERS.contains(&program.as_str()).then(|| wrapped(&program, &command)).flatten();
                found.push(command);
                match inner {
                    Some(inner) if !inner.is_empty() => command = inner,
                    _ => break,
                }
            }
        }
    }
    Some(found)
}

/// `-c`, or a group of short options holding it (`-lc`, `-xc`).
fn is_c_option(word: &str) -> bool {
    word.strip_prefix('-')
        .is_some_and(|o| !o.starts_with('-') && o.contains('c') && o.chars().all(|c| c.is_ascii_alphabetic()))
}

/// The command a wrapper runs: its words after the wrapper's options (and,
/// for `env`, assignments; for `timeout`, the duration).
fn wrapped(program: &str, command: &[String]) -> Option<Vec<String>> {
    let mut rest = command.iter().skip(1).peekable();
    // Options taking a value, for the wrappers that have them.
    let valued: &[&str] = match program {
        "sudo" | "doas" => &["-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "--user", "--group", "--chdir"],
        "nice" => &["-n", "--adjustment"],
        "timeout" => &["-s", "-k", "--signal", "--kill-after"],
        "env" => &["-u", "--unset", "-C", "--chdir"],
        "exec" => &["-a"],
        "xargs" => &["-n", "-I", "-P", "-L", "-s", "-d", "-E", "-a", "--max-args", "--max-procs", "--delimiter"],
        "stdbuf" | "ionice" | "chrt" | "taskset" => &["-i", "-o", "-e", "-c", "-n", "-p"],
        _ => &[],
    };
    while let Some(word) = rest.peek() {
        if word.as_str() == "--" {
            rest.next();
            break;
        }
        if word.starts_with('-') {
            let takes = valued.contains(&word.as_str());
            rest.next();
            if takes {
                rest.next();
            }
        } else if program == "env" && is_assignment(word) {
            rest.next();
        } else {
            break;
        }
    }
    if matches!(program, "timeout" | "taskset" | "chrt") {
        rest.next();
    }
    let mut inner: Vec<String> = rest.cloned().collect();
    if let Some(first) = inner.first_mut() {
        *first = base_name(first);
    }
    Some(inner)
}

/// Whether the command's words hold the pattern's: the program first, then
/// the other words in order among the arguments.
fn matches(pattern: &[String], command: &[String]) -> bool {
    let (Some(program), Some(first)) = (pattern.first(), command.first()) else { return false };
    if !glob(program, first) {
        return false;
    }
    let mut arguments = command.iter().skip(1);
    pattern.iter().skip(1).all(|word| {
        arguments.any(|argument| match argument.strip_suffix(UNDER) {
            Some(directory) => could_match(word, directory),
            None => glob(word, argument),
        })
    })
}

/// Whether a pattern names `directory` or something under it: some path
/// `directory/...` (or the directory itself) matches it. Exact for
/// patterns whose only wildcard is `*`: the pattern matches the directory,
/// or some start of it matches `directory/` (what follows is then free to
/// match the rest of the pattern).
fn could_match(pattern: &str, directory: &str) -> bool {
    let directory = directory.trim_end_matches('/');
    if glob(pattern, directory) {
        return true;
    }
    let within = format!("{directory}/");
    pattern.char_indices().map(|(at, _)| at).chain([pattern.len()]).any(|at| glob(&pattern[..at], &within))
}

/// `*` matches any characters; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            let mut chars = name.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

/// A program's base name; a name only the shell can work out (`$`, a
/// glob) is kept whole, for the rules to see it cannot be read.
fn base_name(program: &str) -> String {
    if program.contains(['$', '*', '?', '[', '`']) {
        return program.to_string();
    }
    program.rsplit('/').next().unwrap_or(program).to_string()
}

/// The simple commands of a command line, as a POSIX shell splits it: each
/// a program (by its base name) and its arguments, quotes removed, leading
/// assignments skipped; the commands of `$( )` and backquotes among them.
pub fn commands(line: &str) -> Vec<Vec<String>> {
    commands_within(line).unwrap_or_default()
}

/// As [`commands`]; `None` if substitutions nest deeper than are read.
fn commands_within(line: &str) -> Option<Vec<Vec<String>>> {
    let mut out = Vec::new();
    if !split(&line.chars().collect::<Vec<_>>(), &mut out, 0) {
        return None;
    }
    let commands = out
        .into_iter()
        .filter_map(|words: Vec<String>| {
            // Reserved words and assignments before the program.
            let mut words: Vec<String> =
                words.into_iter().skip_while(|w| is_assignment(w) || RESERVED.contains(&w.as_str())).collect();
            let first = words.first_mut()?;
            *first = base_name(first);
            Some(words)
        })
        .collect();
    Some(commands)
}

/// Words a shell reads as its own before a command.
const RESERVED: [&str; 12] = ["!", "{", "}", "if", "then", "else", "elif", "do", "while", "until", "fi", "done"];

/// Splits `chars` into simple commands, appended to `out`; false if
/// substitutions nest deeper than [`MAX_DEPTH`].
fn split(chars: &[char], out: &mut Vec<Vec<String>>, depth: usize) -> bool {
    let mut command: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    // The next word is a redirection's target (`>file`), not an argument.
    let mut target = false;
    let mut readable = true;
    let end_word = |word: &mut Option<String>, command: &mut Vec<String>, target: &mut bool| {
        if let Some(w) = word.take() {
            if std::mem::take(target) {
                return;
            }
            command.push(w);
        }
    };
    let end_command = |command: &mut Vec<String>, out: &mut Vec<Vec<String>>| {
        if !command.is_empty() {
            out.push(std::mem::take(command));
        }
    };
    // Reads the substitution `inner` (a line of its own) into `out`.
    let mut within = |inner: &[char], out: &mut Vec<Vec<String>>| {
        if depth >= MAX_DEPTH || !split(inner, out, depth + 1) {
            readable = false;
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => end_word(&mut word, &mut command, &mut target),
            ';' | '&' | '|' | '\n' | '(' | ')' => {
                end_word(&mut word, &mut command, &mut target);
                end_command(&mut command, out);
            }
            '<' | '>' => {
                // A redirection: a file descriptor's number before it is
                // not an argument, nor is the word after it.
                if word.as_deref().is_some_and(|w| !w.is_empty() && w.chars().all(|d| d.is_ascii_digit())) {
                    word = None;
                } else {
                    end_word(&mut word, &mut command, &mut target);
                }
                while matches!(chars.get(i + 1), Some('<' | '>' | '&' | '|')) {
                    i += 1;
                }
                // `<( )` and `>( )`: a process substitution, read as a line.
                if chars.get(i + 1) == Some(&'(') {
                    let end = closing(chars, i + 1);
                    within(&chars[i + 2..end.min(chars.len())], out);
                    i = end;
                } else {
                    target = true;
                }
            }
            '#' if word.is_none() => {
                // A comment, to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '\\' => {
                i += 1;
                if let Some(&next) = chars.get(i)
                    && next != '\n'
                {
                    word.get_or_insert_with(String::new).push(next);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    w.push(chars[i]);
                    i += 1;
                }
            }
            '"' => {
                word.get_or_insert_with(String::new);
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    match chars[i] {
                        '\\' if matches!(chars.get(i + 1), Some('$' | '`' | '"' | '\\' | '\n')) => {
                            i += 1;
                            if chars[i] != '\n'
                                && let Some(w) = word.as_mut()
                            {
                                w.push(chars[i]);
                            }
                        }
                        '$' if chars.get(i + 1) == Some(&'(') => {
                            let end = closing(chars, i + 1);
                            within(&chars[i + 2..end.min(chars.len())], out);
                            if let Some(w) = word.as_mut() {
                                w.extend(&chars[i..(end + 1).min(chars.len())]);
                            }
                            i = end;
                        }
                        '`' => {
                            let end = backquote(chars, i);
                            within(&chars[i + 1..end.min(chars.len())], out);
                            if let Some(w) = word.as_mut() {
                                w.extend(&chars[i..(end + 1).min(chars.len())]);
                            }
                            i = end;
                        }
                        other => {
                            if let Some(w) = word.as_mut() {
                                w.push(other);
                            }
                        }
                    }
                    i += 1;
                }
            }
            '$' if chars.get(i + 1) == Some(&'(') => {
                let end = closing(chars, i + 1);
                within(&chars[i + 2..end.min(chars.len())], out);
                word.get_or_insert_with(String::new).extend(&chars[i..(end + 1).min(chars.len())]);
                i = end;
            }
            '$' if chars.get(i + 1) == Some(&'\'') => {
                // `$'...'`: its escapes are the shell's to read; the word
                // keeps its `$`, so that as a program it is unreadable.
                let w = word.get_or_insert_with(String::new);
                w.push('$');
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    if let Some(&c) = chars.get(i) {
                        w.push(c);
                    }
                    i += 1;
                }
            }
            '`' => {
                let end = backquote(chars, i);
                within(&chars[i + 1..end.min(chars.len())], out);
                word.get_or_insert_with(String::new).extend(&chars[i..(end + 1).min(chars.len())]);
                i = end;
            }
            other => word.get_or_insert_with(String::new).push(other),
        }
        i += 1;
    }
    end_word(&mut word, &mut command, &mut target);
    end_command(&mut command, out);
    readable
}

/// Where the `)` closing the `(` at `open` is (the end if none), quotes
/// and nested parentheses skipped.
fn closing(chars: &[char], open: usize) -> usize {
    let mut depth = 0usize;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            '\\' => i += 1,
            '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

/// Where the backquote closing the one at `open` is (the end if none).
fn backquote(chars: &[char], open: usize) -> usize {
    let mut i = open + 1;
    while i < chars.len() && chars[i] != '`' {
        if chars[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i.min(chars.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn set(block: &[&str], hold: &[&str]) -> SshRuleSet {
        let config = SshRuleSetConfig {
            block: block.iter().map(|s| s.to_string()).collect(),
            hold: hold.iter().map(|s| s.to_string()).collect(),
            approval_group: None,
            shells: true,
            sftp: None,
            forward: vec!["db.internal:5432".to_string(), "10.0.*:44*".to_string()],
            end_session_on: None,
        };
        SshRuleSet::new("ci", &config).unwrap()
    }

    #[test]
    fn commands_are_split_as_a_shell_splits_them() {
        assert_eq!(commands("ls -la /tmp"), vec![vec!["ls", "-la", "/tmp"]]);
        assert_eq!(commands("A=1 B=2 /usr/bin/env x"), vec![vec!["env", "x"]]);
        assert_eq!(commands("echo 'a b' \"c d\" e\\ f"), vec![vec!["echo", "a b", "c d", "e f"]]);
        assert_eq!(
            commands("a; b && c || d | e & f\ng"),
            vec![vec!["a"], vec!["b"], vec!["c"], vec!["d"], vec!["e"], vec!["f"], vec!["g"]]
        );
        assert_eq!(
            commands("echo $(whoami) `id -u`"),
            vec![vec!["whoami"], vec!["id", "-u"], vec!["echo", "$(whoami)", "`id -u`"]]
        );
        assert_eq!(commands("(cd /x && rm y) # rm -rf /"), vec![vec!["cd", "/x"], vec!["rm", "y"]]);
    }

    #[test]
    fn rules_find_commands_however_they_are_written() {
        let rules = set(&["rm -rf /", "mkfs*"], &["sudo", "rm -rf", "systemctl restart *"]);
        let hold = |rule: &str| Verdict::Hold { rule: format!("ci/hold:{rule}") };
        let block = |rule: &str| Verdict::Block { rule: format!("ci/block:{rule}") };
        assert_eq!(rules.decide("ls -la; cat /etc/hostname | sha256sum"), Verdict::Allow);
        assert_eq!(rules.decide("sudo id"), hold("sudo"));
        assert_eq!(rules.decide("/usr/bin/sudo -u root id"), hold("sudo"));
        assert_eq!(rules.decide("rm -v -rf /tmp/x"), hold("rm -rf"));
        assert_eq!(rules.decide("echo ok && rm -rf /"), block("rm -rf /"));
        assert_eq!(rules.decide("cd / && sudo rm -rf /"), block("rm -rf /"));
        assert_eq!(rules.decide("systemctl status app"), Verdict::Allow);
        assert_eq!(rules.decide("X=1 systemctl restart app"), hold("systemctl restart *"));
        assert_eq!(rules.decide("nohup nice -n 5 systemctl restart app &"), hold("systemctl restart *"));
        assert_eq!(rules.decide("bash -c 'mkfs.ext4 /dev/sdb'"), block("mkfs*"));
        assert_eq!(rules.decide("echo $(sh -c \"sudo id\")"), hold("sudo"));
        assert_eq!(rules.decide("'sudo' id"), hold("sudo"));
        assert_eq!(rules.decide("echo sudo"), Verdict::Allow);
        // Reserved words, redirections, option groups, more wrappers.
        assert_eq!(rules.decide("if true; then rm -rf /; fi"), block("rm -rf /"));
        assert_eq!(rules.decide("{ rm -rf /; }"), block("rm -rf /"));
        assert_eq!(rules.decide("! sudo id"), hold("sudo"));
        assert_eq!(rules.decide(">/dev/null rm -rf /"), block("rm -rf /"));
        assert_eq!(rules.decide("rm</dev/null -rf / 2>&1"), block("rm -rf /"));
        assert_eq!(rules.decide("bash -lc 'rm -rf /'"), block("rm -rf /"));
        assert_eq!(rules.decide("su -c 'sudo id' root"), hold("sudo"));
        assert_eq!(rules.decide("exec -a x rm -rf /"), block("rm -rf /"));
        assert_eq!(rules.decide("xargs -n 1 -P 4 sudo"), hold("sudo"));
        assert_eq!(rules.decide("sudo --user root rm -rf /"), block("rm -rf /"));
        assert_eq!(rules.decide("busybox rm -rf /"), block("rm -rf /"));
        assert_eq!(rules.decide("echo $(echo \")\"; rm -rf /)"), block("rm -rf /"));
        assert_eq!(rules.decide("cat <(sudo id)"), hold("sudo"));
        // What only the shell can work out is held unread.
        let unreadable = Verdict::Hold { rule: "ci/unreadable".to_string() };
        assert_eq!(rules.decide("rm${IFS}-rf${IFS}/"), unreadable);
        assert_eq!(rules.decide("/bin/r? -rf /"), unreadable);
        assert_eq!(rules.decide("$'\\x72m' -rf /"), unreadable);
        assert_eq!(rules.decide(&"env ".repeat(20_000)), unreadable);
        assert_eq!(rules.decide(&"$(".repeat(20)), unreadable);
        // A set with no patterns reads nothing.
        assert_eq!(set(&[], &[]).decide("rm${IFS}-rf"), Verdict::Allow);
    }

    #[test]
    fn file_operations_are_decided_by_the_paths_they_name() {
        let rules = set(&["sftp remove /etc/*", "sftp * /root/*"], &["sftp write /etc/*", "sftp write ~/.ssh/*"]);
        assert!(rules.checks_files() && rules.sftp, "file patterns open SFTP, to decide it");
        let file = |operation: &str, paths: &[&[u8]]| {
            rules.decide_file(operation, &paths.iter().map(|p| p.to_vec()).collect::<Vec<_>>(), None)
        };
        let hold = |rule: &str| Verdict::Hold { rule: format!("ci/hold:{rule}") };
        let block = |rule: &str| Verdict::Block { rule: format!("ci/block:{rule}") };
        let unreadable = Verdict::Hold { rule: "ci/unreadable".to_string() };
        assert_eq!(file("write", &[b"/etc/hosts"]), (hold("sftp write /etc/*"), "sftp write /etc/hosts".into()));
        assert_eq!(file("write", &[b"//etc/./hosts"]), (hold("sftp write /etc/*"), "sftp write /etc/hosts".into()));
        assert_eq!(file("read", &[b"/etc/hosts"]).0, Verdict::Allow);
        assert_eq!(file("remove", &[b"/etc/hosts"]).0, block("sftp remove /etc/*"));
        assert_eq!(file("rename", &[b"/tmp/a", b"/root/.bashrc"]).0, block("sftp * /root/*"));
        // Relative paths are the login directory's.
        assert_eq!(
            file("write", &[b".ssh/authorized_keys"]),
            (hold("sftp write ~/.ssh/*"), "sftp write ~/.ssh/authorized_keys".into())
        );
        assert_eq!(file("write", &[b"notes with space"]), (Verdict::Allow, "sftp write '~/notes with space'".into()));
        // What the words cannot say is held unread.
        assert_eq!(file("write", &[b"/tmp/../etc/hosts"]).0, unreadable);
        assert_eq!(file("write", &[b"../../etc/hosts"]).0, unreadable);
        assert_eq!(file("write", &[b"/etc/\xff"]).0, unreadable);
        assert_eq!(file("write", &[b"/etc/hosts\0"]).0, unreadable);
        // What an operation amounts to is matched too.
        // (A rename replaces what its new name held: a removal there.)
        assert_eq!(file("rename", &[b"/tmp/evil", b"/etc/cron.d/evil"]).0, block("sftp remove /etc/*"));
        assert_eq!(file("rename", &[b"/etc/hosts", b"/tmp/x"]).0, block("sftp remove /etc/*"));
        assert_eq!(file("rename", &[b"/tmp/dir", b"/etc"]).0, block("sftp remove /etc/*"), "a directory moved in");
        assert_eq!(file("rename", &[b"/tmp/a", b"/tmp/b"]).0, Verdict::Allow);
        assert_eq!(file("symlink", &[b"/etc", b"/tmp/l"]).0, block("sftp remove /etc/*"), "a way in");
        assert_eq!(file("symlink", &[b"/root", b"/tmp/r"]).0, block("sftp * /root/*"), "a way to read");
        assert_eq!(file("symlink", &[b"x", b"/etc/l"]).0, block("sftp remove /etc/*"));
        assert_eq!(file("symlink", &[b"hosts", b"/tmp/l"]).0, Verdict::Allow, "relative to the link's directory");
        assert_eq!(file("link", &[b"/etc/hosts", b"/tmp/h"]).0, block("sftp remove /etc/*"));
        assert_eq!(file("setstat", &[b"/etc/hosts"]).0, hold("sftp write /etc/*"));
        assert_eq!(file("mkdir", &[b"/etc/new"]).0, hold("sftp write /etc/*"));
        assert_eq!(file("rmdir", &[b"/etc/old"]).0, block("sftp remove /etc/*"));
        // A path by both its names once the target said where relative
        // paths start.
        let home =
            |operation: &str, path: &[u8], home: &str| rules.decide_file(operation, &[path.to_vec()], Some(home)).0;
        assert_eq!(home("write", b"/home/u/.ssh/authorized_keys", "/home/u"), hold("sftp write ~/.ssh/*"));
        assert_eq!(home("write", b"etc/passwd", "/"), hold("sftp write /etc/*"));
        assert_eq!(home("write", b"notes", "/home/u"), Verdict::Allow);
        // Legacy scp's server side is the same file operation.
        assert_eq!(rules.decide("scp -t /etc/hosts"), hold("sftp write /etc/*"));
        assert_eq!(rules.decide("scp -r -d -t -- /etc/ssh/x"), hold("sftp write /etc/*"));
        assert_eq!(rules.decide("scp -f /root/secret"), block("sftp * /root/*"));
        assert_eq!(rules.decide("scp -t ~/.ssh/authorized_keys"), hold("sftp write ~/.ssh/*"));
        assert_eq!(rules.decide("scp -t /tmp/x"), Verdict::Allow);
        // Into a directory: the files scp names there are under it.
        assert_eq!(rules.decide("scp -t /etc"), hold("sftp write /etc/*"));
        assert_eq!(rules.decide("scp -r -t /"), block("sftp * /root/*"));
        assert_eq!(rules.decide("scp -r -f /root"), block("sftp * /root/*"));
        assert_eq!(rules.decide("scp -f /"), Verdict::Allow, "one file, not what is under it");
        assert_eq!(rules.decide("scp -t '/etc/*'"), unreadable);
        assert_eq!(rules.decide("scp -t ~root/.ssh/x"), unreadable);
        assert_eq!(rules.decide("scp -t"), unreadable);
        // SFTP run as a command would pass operations no rule reads.
        assert_eq!(
            rules.decide("/usr/lib/openssh/sftp-server -e"),
            Verdict::Block { rule: "ci/sftp-server".to_string() }
        );
        // A set whose patterns name no file operation reads none, and
        // opens no SFTP unless told to.
        let commands_only = set(&["rm -rf /"], &[]);
        assert!(!commands_only.checks_files() && !commands_only.sftp);
        assert_eq!(commands_only.decide_file("remove", &[b"/etc/hosts".to_vec()], None).0, Verdict::Allow);
        assert_eq!(commands_only.decide("scp -t /etc/hosts"), Verdict::Allow);
        assert!(set(&[], &[]).sftp);
    }

    #[test]
    fn forwarding_reaches_listed_destinations_only() {
        let rules = set(&[], &[]);
        assert_eq!(rules.forwards_to("db.internal", 5432).as_deref(), Some("db.internal:5432"));
        assert_eq!(rules.forwards_to("10.0.3.4", 443).as_deref(), Some("10.0.*:44*"));
        assert_eq!(rules.forwards_to("db.internal", 22), None);
        assert_eq!(rules.forwards_to("evil", 5432), None);
        let bad = SshRuleSetConfig { forward: vec!["nope".into()], shells: true, ..Default::default() };
        assert!(SshRuleSet::new("x", &bad).is_err());
    }

    /// Generated patterns and directories: a pattern is taken to name
    /// something under a directory exactly when some path under it (or
    /// the directory) matches, found by trying them with [`glob`].
    #[test]
    fn what_a_pattern_names_under_a_directory_is_what_some_path_under_it_matches() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let alphabet = ['/', 'a', 'b', '*'];
        let word = |rng: &mut rand_chacha::ChaCha8Rng, stars: bool| -> String {
            (0..rng.random_range(0..7)).map(|_| alphabet[rng.random_range(0..if stars { 4 } else { 3 })]).collect()
        };
        // Every path of up to 7 characters of the alphabet.
        let mut tails = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..7 {
            last = last.iter().flat_map(|t| ["a", "b", "/"].map(|c| format!("{t}{c}"))).collect();
            tails.extend(last.iter().cloned());
        }
        for case in 0..3000 {
            let (pattern, directory) = (word(&mut rng, true), word(&mut rng, false).trim_end_matches('/').to_string());
            let some =
                glob(&pattern, &directory) || tails.iter().any(|tail| glob(&pattern, &format!("{directory}/{tail}")));
            assert_eq!(could_match(&pattern, &directory), some, "case {case}: {pattern:?} under {directory:?}");
        }
    }

    #[test]
    fn globs_match_as_written() {
        assert!(glob("mkfs*", "mkfs.ext4"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b", "ac"));
        assert!(glob("restart", "restart"));
        assert!(!glob("restart", "restarts"));
    }

    /// Generated command lines, written with every kind of quoting and
    /// separator: the split gives back exactly the commands they were made
    /// of.
    #[test]
    fn generated_lines_split_into_the_commands_they_were_made_of() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let alphabet: Vec<char> = "abcxyz019-_./=:, ;&|()'\"\\$`#*".chars().collect();
        for case in 0..2000 {
            let mut expected: Vec<Vec<String>> = Vec::new();
            let mut line = String::new();
            for c in 0..rng.random_range(1..4) {
                if c > 0 {
                    line.push_str([" ; ", " && ", " || ", " | ", " & ", "\n"][rng.random_range(0..6)]);
                }
                let mut words = Vec::new();
                for w in 0..rng.random_range(1..5) {
                    let len = rng.random_range(1..6);
                    // The program is a plain word; arguments anything.
                    let word: String = if w == 0 {
                        // (Not a word the shell reserves, which is no program.)
                        let word: String = (0..len).map(|_| (b'a' + rng.random_range(0..26u8)) as char).collect();
                        if RESERVED.contains(&word.as_str()) { format!("x{word}") } else { word }
                    } else {
                        (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()
                    };
                    if w > 0 {
                        line.push(' ');
                    }
                    line.push_str(&quote(&word, rng.random_range(0..3)));
                    words.push(word);
                }
                expected.push(words);
            }
            assert_eq!(commands(&line), expected, "case {case}: {line:?}");
        }
    }

    /// `word` quoted one of three ways a shell reads back as `word`.
    fn quote(word: &str, how: u32) -> String {
        match how {
            0 => format!("'{}'", word.replace('\'', "'\\''")),
            1 => {
                let escaped: String = word
                    .chars()
                    .flat_map(|c| if matches!(c, '$' | '`' | '"' | '\\') { vec!['\\', c] } else { vec![c] })
                    .collect();
                format!("\"{escaped}\"")
            }
            _ => word.chars().flat_map(|c| if c.is_ascii_alphanumeric() { vec![c] } else { vec!['\\', c] }).collect(),
        }
    }
}
