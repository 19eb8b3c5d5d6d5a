//! Masking, protocol-neutral: text values (with their column, when known)
//! in, masked text and counts per rule out. One decision serves the client
//! and the recording alike, so what is stored is exactly what was seen.
//!
//! A profile (`[masking.profiles.NAME]`) names detectors by value (card
//! numbers, e-mail addresses, keys and tokens, ...) and rules by column
//! (`email`, `*password*`, `customers.ssn`), each with an action: full
//! redaction, the last four characters kept, or a keyed token (HMAC with the
//! deployment's key: equal values give equal tokens, so investigators can
//! correlate what they cannot read). With the `secret_by_name` detector, a
//! column named like a secret (`api_key`, `client_secret`) has its
//! random-looking values masked without a column rule.

mod by_name;
mod checks;
mod detect;
#[cfg(test)]
mod regression;

use std::borrow::Cow;
use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

pub use by_name::names_a_secret;
pub use checks::is_card_number;
pub use detect::{Detector, Detectors, Finding, Findings, find, find_in};

/// A masking setting or key Proctor cannot use; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct MaskingError(pub String);

/// How a value (or the secret in it) is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Only its last four characters kept, the rest starred (separators kept).
    Last4,
    /// A keyed token: equal inputs, equal tokens; nothing of the value.
    Token,
    /// Replaced by a marker naming the rule.
    Redact,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Last4 => "last4",
            Action::Token => "token",
            Action::Redact => "redact",
        }
    }
}

/// One `[[masking.profiles.NAME.columns]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRuleConfig {
    /// A column name (`email`), a pattern with `*` (`*password*`), or
    /// `table.column` (`customers.ssn`); case-insensitive.
    #[serde(rename = "match")]
    pub pattern: String,
    #[serde(default = "redact")]
    pub action: Action,
}

fn redact() -> Action {
    Action::Redact
}

/// One `[masking.profiles.NAME]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Detectors by value: names, or `all`.
    #[serde(default)]
    pub detectors: Vec<String>,
    /// The action of each detector (default: redact), e.g. `{ card = "last4" }`.
    #[serde(default)]
    pub actions: BTreeMap<String, Action>,
    #[serde(default)]
    pub columns: Vec<ColumnRuleConfig>,
}

/// A column rule, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ColumnRule {
    /// The rule's name in counts: `column:PATTERN`.
    name: String,
    table: Option<String>,
    column: String,
    action: Action,
}

impl ColumnRule {
    /// A `table.column` rule matches a column whose table is not known by
    /// its name alone: when in doubt, mask.
    fn matches(&self, column: &Column<'_>) -> bool {
        if let (Some(table), Some(known)) = (&self.table, column.table)
            && !known.eq_ignore_ascii_case(table)
        {
            return false;
        }
        glob(&self.column, &column.name.to_ascii_lowercase())
    }
}

/// `*` matches any run of characters; the rest literally.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(after) = rest.strip_prefix(part) else { return false };
            rest = after;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// A profile, checked: what a session's values go through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// The profile's name (several joined with `+` for a union).
    pub name: String,
    detectors: Vec<(Detector, Action)>,
    columns: Vec<ColumnRule>,
}

impl Profile {
    pub fn new(name: &str, config: &ProfileConfig) -> Result<Profile, MaskingError> {
        let bad = |m: String| MaskingError(format!("masking.profiles.{name}: {m}"));
        let mut detectors = Vec::new();
        for d in &config.detectors {
            if d == "all" {
                detectors.extend(Detector::ALL);
                continue;
            }
            let known: Vec<&str> = Detector::ALL.iter().map(|d| d.as_str()).collect();
            detectors.push(
                Detector::parse(d)
                    .ok_or_else(|| bad(format!("unknown detector {d:?} (detectors: all, {})", known.join(", "))))?,
            );
        }
        detectors.sort();
        detectors.dedup();
        for named in config.actions.keys() {
            let detector = Detector::parse(named).ok_or_else(|| bad(format!("actions: unknown detector {named:?}")))?;
            if !detectors.contains(&detector) {
                return Err(bad(format!("actions: detector {named:?} is not in `detectors`")));
            }
        }
        let detectors = detectors
            .into_iter()
            .map(|d| (d, config.actions.get(d.as_str()).copied().unwrap_or(Action::Redact)))
            .collect();
        let mut columns = Vec::new();
        for rule in &config.columns {
            let pattern = rule.pattern.trim().to_ascii_lowercase();
            let (table, column) = match pattern.split_once('.') {
                Some((t, c)) if !t.is_empty() && !c.is_empty() => (Some(t.to_string()), c.to_string()),
                Some(_) => return Err(bad(format!("column rule {:?}: expected TABLE.COLUMN", rule.pattern))),
                None => (None, pattern.clone()),
            };
            if column.is_empty() {
                return Err(bad("a column rule needs a `match`".to_string()));
            }
            columns.push(ColumnRule { name: format!("column:{pattern}"), table, column, action: rule.action });
        }
        Ok(Profile { name: name.to_string(), detectors, columns })
    }

    /// Nothing masked: the break-glass profile `none`.
    pub fn is_empty(&self) -> bool {
        self.detectors.is_empty() && self.columns.is_empty()
    }

    /// The union of several profiles (a subject in several groups): every
    /// rule of each, and where two set an action for the same detector, the
    /// strictest (redact over token over last4).
    pub fn union<'a>(profiles: impl IntoIterator<Item = &'a Profile>) -> Profile {
        let mut names = Vec::new();
        let mut detectors: BTreeMap<Detector, Action> = BTreeMap::new();
        let mut columns: Vec<ColumnRule> = Vec::new();
        for p in profiles {
            names.push(p.name.clone());
            for &(d, a) in &p.detectors {
                let slot = detectors.entry(d).or_insert(a);
                *slot = (*slot).max(a);
            }
            for c in &p.columns {
                match columns.iter_mut().find(|x| x.table == c.table && x.column == c.column) {
                    Some(existing) => existing.action = existing.action.max(c.action),
                    None => columns.push(c.clone()),
                }
            }
        }
        names.sort();
        names.dedup();
        Profile { name: names.join("+"), detectors: detectors.into_iter().collect(), columns }
    }
}

/// The `[masking]` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// The key tokens are made with; by default `DATA_DIR/keys/masking.key`,
    /// created (32 random bytes, mode 0600) on first start.
    pub key_file: Option<std::path::PathBuf>,
    /// The profile of sessions whose grant names none (and of sessions
    /// admitted by a shared secret).
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileConfig>,
}

/// The name of the empty profile: nothing masked (break-glass), and said so
/// in the recording.
pub const NO_MASKING: &str = "none";

/// The configured profiles and the key, and the maskers made from them by
/// name (`a`, or `a+b` for a union), made once each.
pub struct Profiles {
    profiles: BTreeMap<String, Profile>,
    default: Option<String>,
    key: MaskingKey,
    made: std::sync::Mutex<BTreeMap<String, Option<std::sync::Arc<Masker>>>>,
}

impl Profiles {
    pub fn new(config: &MaskingConfig, key: MaskingKey) -> Result<Profiles, MaskingError> {
        let mut profiles = BTreeMap::new();
        for (name, profile) in &config.profiles {
            if name == NO_MASKING || name.contains('+') {
                return Err(MaskingError(format!(
                    "masking.profiles.{name}: the name is reserved (`none` masks nothing; `+` joins profiles)"
                )));
            }
            profiles.insert(name.clone(), Profile::new(name, profile)?);
        }
        let profiles = Profiles { profiles, default: None, key, made: Default::default() };
        if let Some(default) = &config.default_profile {
            profiles.check(default).map_err(MaskingError)?;
        }
        Ok(Profiles { default: config.default_profile.clone(), ..profiles })
    }

    /// No profiles, no masking.
    pub fn none() -> Profiles {
        Profiles {
            profiles: BTreeMap::new(),
            default: None,
            key: MaskingKey::new(Vec::new()),
            made: Default::default(),
        }
    }

    /// The deployment's masking key.
    pub fn key(&self) -> &MaskingKey {
        &self.key
    }

    /// Whether `names` (`a` or `a+b`) are all configured (or `none`).
    pub fn check(&self, names: &str) -> Result<(), String> {
        for name in names.split('+') {
            if name != NO_MASKING && !self.profiles.contains_key(name) {
                let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
                return Err(format!(
                    "masking profile {name:?} is not configured (profiles: none, {})",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The profile a session runs under: its grant's, else the default.
    pub fn chosen<'a>(&'a self, grant_profile: Option<&'a str>) -> Option<&'a str> {
        grant_profile.or(self.default.as_deref())
    }

    /// Every configured profile at once (`a+b+...`): what masks the words of
    /// a client that was not admitted, whose profile is not known.
    pub fn strictest(&self) -> Option<String> {
        (!self.profiles.is_empty()).then(|| self.profiles.keys().cloned().collect::<Vec<_>>().join("+"))
    }

    /// The masker for `names` (`None`: nothing to mask, also for `none`).
    pub fn masker(&self, names: &str) -> Result<Option<std::sync::Arc<Masker>>, String> {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(masker) = made.get(names) {
            return Ok(masker.clone());
        }
        self.check(names)?;
        let parts: Vec<&Profile> = names.split('+').filter_map(|n| self.profiles.get(n)).collect();
        let union = Profile::union(parts);
        let masker = (!union.is_empty())
            .then(|| std::sync::Arc::new(Masker::new(Profile { name: names.to_string(), ..union }, self.key.clone())));
        made.insert(names.to_string(), masker.clone());
        Ok(masker)
    }
}

/// The column a value came from, when known.
#[derive(Clone, Copy, Debug, Default)]
pub struct Column<'a> {
    pub name: &'a str,
    pub table: Option<&'a str>,
}

/// What a column's name says of its values (see [`Masker::name_says`]),
/// decided once per result as column rules are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NameSays {
    /// Nothing: its values are free text to the detectors.
    #[default]
    Nothing,
    /// It names a secret (`password`, `api_key`, `client_secret`): a value
    /// that looks random is one, masked whole by `secret_by_name`.
    Secret,
}

impl NameSays {
    /// What either of two names of a column says (its label in the result
    /// and its name in its table): a secret if either names one.
    pub fn either(self, other: NameSays) -> NameSays {
        if self == NameSays::Secret { self } else { other }
    }
}

/// What masking did to a value, a message or a result: how many values each
/// rule replaced (`card`, `column:customers.ssn`, ...: the map it derefs
/// to), and the keyed tokens it wrote, each once (at most
/// [`proctor_schemas::MAX_RESULT_TOKENS`]; the others counted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    rules: BTreeMap<String, u64>,
    tokens: std::collections::BTreeSet<String>,
    tokens_dropped: u64,
}

impl Counts {
    pub fn new() -> Counts {
        Counts::default()
    }

    /// The counts by rule.
    pub fn into_rules(self) -> BTreeMap<String, u64> {
        self.rules
    }

    /// The tokens written (each once), and how many more were not kept.
    pub fn tokens(&self) -> (Vec<String>, u64) {
        (self.tokens.iter().cloned().collect(), self.tokens_dropped)
    }

    /// Takes in another's counts by rule, not its tokens: what masking
    /// wrote nowhere (a value withheld whole) was seen by no one.
    pub fn add_rules(&mut self, other: Counts) {
        for (rule, n) in other.rules {
            *self.rules.entry(rule).or_insert(0) += n;
        }
    }

    /// Takes in all of another's: counts, tokens and tokens not kept.
    pub fn add(&mut self, other: Counts) {
        self.tokens_dropped += other.tokens_dropped;
        for token in &other.tokens {
            self.token(token);
        }
        self.add_rules(other);
    }

    fn token(&mut self, token: &str) {
        if self.tokens.contains(token) {
            return;
        }
        if self.tokens.len() < proctor_schemas::MAX_RESULT_TOKENS {
            self.tokens.insert(token.to_string());
        } else {
            self.tokens_dropped += 1;
        }
    }
}

impl std::ops::Deref for Counts {
    type Target = BTreeMap<String, u64>;

    fn deref(&self) -> &Self::Target {
        &self.rules
    }
}

impl std::ops::DerefMut for Counts {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.rules
    }
}

/// Counts one masked value (allocating the rule's name only the first time).
pub fn count(counts: &mut Counts, rule: &str) {
    match counts.rules.get_mut(rule) {
        Some(n) => *n += 1,
        None => {
            counts.rules.insert(rule.to_string(), 1);
        }
    }
}

/// The deployment's masking key, for tokens.
#[derive(Clone)]
pub struct MaskingKey(Vec<u8>);

impl MaskingKey {
    pub fn new(bytes: Vec<u8>) -> MaskingKey {
        MaskingKey(bytes)
    }

    /// Reads the key at `path`, or creates it there (32 random bytes, hex,
    /// mode 0600) if there is none: tokens stay stable across restarts.
    pub fn load_or_create(path: &std::path::Path) -> Result<MaskingKey, MaskingError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let bad = |what: &str, e: std::io::Error| MaskingError(format!("masking key {}: {what}: {e}", path.display()));
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .map_err(|e| MaskingError(format!("masking key {}: not hex ({e})", path.display())))?;
                if bytes.len() < 16 {
                    return Err(MaskingError(format!(
                        "masking key {}: {} bytes is too short (at least 16)",
                        path.display(),
                        bytes.len()
                    )));
                }
                Ok(MaskingKey(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| bad("cannot create its directory", e))?;
                }
                let mut bytes = vec![0u8; 32];
                getrandom::fill(&mut bytes)
                    .map_err(|e| MaskingError(format!("no randomness for the masking key: {e}")))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| bad("cannot create it", e))?;
                writeln!(file, "{}", hex::encode(&bytes))
                    .and_then(|()| file.sync_all())
                    .map_err(|e| bad("cannot write it", e))?;
                Ok(MaskingKey(bytes))
            }
            Err(e) => Err(bad("cannot read it", e)),
        }
    }

    /// A keyed digest (hex HMAC-SHA256) of `data`, for `purpose`: equal
    /// inputs give equal digests, which say nothing without the key.
    pub fn digest(&self, purpose: &str, data: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    /// The word a value masked with the token action is replaced by
    /// (`tok_` and 12 hex digits), inside its marker `[rule:tok_…]`. The
    /// value is normalised first (see [`normalized`]), so that the same
    /// address, card or phone number written differently gives the same
    /// token; the token says nothing of the value without the key. It is
    /// also what finds every place a value passed (`proctor search
    /// --value`), without the value ever being stored.
    pub fn value_token(&self, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(normalized(value).as_bytes());
        let tag = mac.finalize().into_bytes();
        format!("tok_{}", hex::encode(&tag[..6]))
    }

    /// Reads an existing key (never creates one): what finds tokens in a
    /// recording, read where it was made.
    pub fn load(path: &std::path::Path) -> Result<MaskingKey, MaskingError> {
        if !path.exists() {
            return Err(MaskingError(format!(
                "no masking key at {}: nothing here was masked with tokens",
                path.display()
            )));
        }
        MaskingKey::load_or_create(path)
    }
}

impl std::fmt::Debug for MaskingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskingKey(..)")
    }
}

/// A value as tokens see it: by its shape, not by the rule that found it
/// (a column rule and a detector give the same token to the same value).
/// An e-mail address (it has an `@`) in lower case; seven digits or more
/// written with separators (a card, phone or social security number) as
/// their digits;
/// letters and digits grouped by spaces (an IBAN) without the spaces, in
/// capitals, and an IBAN written without spaces in capitals; anything else
/// trimmed.
pub fn normalized(value: &str) -> std::borrow::Cow<'_, str> {
    let value = value.trim();
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    let has_digit = digits > 0;
    if value.contains('@') {
        return value.to_lowercase().into();
    }
    // Numbers written with separators: long enough to be a phone, card or
    // account number (`1.50` and `150` stay two values).
    if digits >= 7 && value.bytes().all(|b| b.is_ascii_digit() || b" +-.()/".contains(&b)) {
        return value.chars().filter(char::is_ascii_digit).collect::<String>().into();
    }
    // An IBAN written without its spaces, in either case.
    let bytes = value.as_bytes();
    if (15..=34).contains(&bytes.len())
        && bytes[..2].iter().all(u8::is_ascii_alphabetic)
        && bytes[2..4].iter().all(u8::is_ascii_digit)
        && bytes.iter().all(u8::is_ascii_alphanumeric)
    {
        return value.to_ascii_uppercase().into();
    }
    if has_digit && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ') && value.contains(' ') {
        return value.chars().filter(|c| *c != ' ').map(|c| c.to_ascii_uppercase()).collect::<String>().into();
    }
    value.into()
}

/// A profile with the key its tokens are made with.
#[derive(Clone, Debug)]
pub struct Masker {
    profile: Profile,
    key: MaskingKey,
    /// The profile's detectors, and each one's action by discriminant.
    enabled: Detectors,
    actions: [Action; Detector::ALL.len()],
}

/// Replaces `value` by `action`; `rule` names it in the marker.
fn apply(action: Action, rule: &str, value: &str, key: &MaskingKey, counts: &mut Counts) -> String {
    let mut out = String::new();
    apply_into(action, rule, value, key, counts, &mut out);
    out
}

/// Where masked text is written: a string, or the bytes of a message being
/// built (so a masked value is written once, where it goes).
pub trait TextOut {
    fn put(&mut self, text: &str);
}

impl TextOut for String {
    fn put(&mut self, text: &str) {
        self.push_str(text);
    }
}

impl TextOut for Vec<u8> {
    fn put(&mut self, text: &str) {
        self.extend_from_slice(text.as_bytes());
    }
}

/// [`apply`], appending to `out`; a token written is kept in `counts`.
fn apply_into(action: Action, rule: &str, value: &str, key: &MaskingKey, counts: &mut Counts, out: &mut impl TextOut) {
    match action {
        Action::Redact => {
            out.put("[");
            out.put(rule);
            out.put(":masked]");
        }
        Action::Token => {
            let token = key.value_token(value);
            counts.token(&token);
            out.put("[");
            out.put(rule);
            out.put(":");
            out.put(&token);
            out.put("]");
        }
        Action::Last4 => {
            let keep = value.chars().filter(|c| c.is_alphanumeric()).count().saturating_sub(4);
            let mut seen = 0;
            let mut buf = [0u8; 4];
            for c in value.chars() {
                let shown = if !c.is_alphanumeric() {
                    c
                } else {
                    seen += 1;
                    if seen <= keep { '*' } else { c }
                };
                out.put(shown.encode_utf8(&mut buf));
            }
        }
    }
}

impl Masker {
    pub fn new(profile: Profile, key: MaskingKey) -> Masker {
        let enabled = Detectors::of(&profile.detectors.iter().map(|(d, _)| *d).collect::<Vec<_>>());
        let mut actions = [Action::Redact; Detector::ALL.len()];
        for &(d, a) in &profile.detectors {
            actions[d as usize] = a;
        }
        Masker { profile, key, enabled, actions }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Whether any detector reads values.
    pub fn has_detectors(&self) -> bool {
        !self.enabled.is_empty()
    }

    /// Whether `detector` is on.
    pub fn detects(&self, detector: Detector) -> bool {
        self.enabled.contains(detector)
    }

    /// Whether any rule masks by column.
    pub fn has_column_rules(&self) -> bool {
        !self.profile.columns.is_empty()
    }

    /// The column rule for a column, if one applies (the strictest).
    pub fn column_rule(&self, column: &Column<'_>) -> Option<(&str, Action)> {
        self.column_rule_index(column).map(|i| self.column_rule_at(i))
    }

    /// Which column rule applies to a column (the strictest), by index:
    /// decided once per result, not once per value.
    pub fn column_rule_index(&self, column: &Column<'_>) -> Option<usize> {
        self.profile
            .columns
            .iter()
            .enumerate()
            .filter(|(_, r)| r.matches(column))
            .max_by_key(|(_, r)| r.action)
            .map(|(i, _)| i)
    }

    /// The stricter of two column rules (by index), if either applies.
    pub fn stricter(&self, a: Option<usize>, b: Option<usize>) -> Option<usize> {
        match (a, b) {
            (Some(a), Some(b)) => {
                Some(if self.profile.columns[b].action > self.profile.columns[a].action { b } else { a })
            }
            (a, b) => a.or(b),
        }
    }

    /// The rule [`Masker::column_rule_index`] chose: its name and action.
    pub fn column_rule_at(&self, index: usize) -> (&str, Action) {
        let rule = &self.profile.columns[index];
        (rule.name.as_str(), rule.action)
    }

    /// Masks a whole value by a column rule.
    pub fn mask_whole(&self, rule: &str, action: Action, value: &str, counts: &mut Counts) -> String {
        apply(action, rule, value, &self.key, counts)
    }

    /// Masks `value` from `column`: a column rule masks it whole; otherwise
    /// each detector's findings are replaced (for a column named like a
    /// secret, see [`Masker::name_says`]). Counts what was masked.
    pub fn mask<'v>(&self, value: &'v str, column: Option<&Column<'_>>, counts: &mut Counts) -> Cow<'v, str> {
        if let Some((rule, action)) = column.and_then(|c| self.column_rule(c)) {
            count(counts, rule);
            return Cow::Owned(apply(action, rule, value, &self.key, counts));
        }
        let says = column.map_or(NameSays::Nothing, |c| self.name_says(c));
        self.mask_text_in_column(value, says, counts)
    }

    /// What `column`'s name says of its values: [`NameSays::Secret`] for a
    /// name like `password`, `db_password`, `api_key`, `X-Api-Key`,
    /// `client_secret`, `refresh_token` (not `token_type`, `private_key_id`:
    /// see [`names_a_secret`]) when the profile has the `secret_by_name`
    /// detector. Decided once per result, as column rules are; without a
    /// column rule, its values then go through
    /// [`Masker::findings_in_column`] or [`Masker::mask_text_in_column`].
    pub fn name_says(&self, column: &Column<'_>) -> NameSays {
        if self.enabled.contains(Detector::SecretByName) && names_a_secret(column.name) {
            NameSays::Secret
        } else {
            NameSays::Nothing
        }
    }

    /// Masks `value` of a column whose rule was decided beforehand
    /// ([`Masker::column_rule_index`], once per result).
    pub fn mask_planned<'v>(&self, value: &'v str, rule: Option<usize>, counts: &mut Counts) -> Cow<'v, str> {
        match rule {
            Some(index) => {
                let (rule, action) = self.column_rule_at(index);
                count(counts, rule);
                Cow::Owned(apply(action, rule, value, &self.key, counts))
            }
            None => self.mask_text(value, counts),
        }
    }

    /// Masks what the detectors find in free text (no column rules).
    pub fn mask_text<'v>(&self, value: &'v str, counts: &mut Counts) -> Cow<'v, str> {
        self.mask_text_in_column(value, NameSays::Nothing, counts)
    }

    /// What the detectors find in `value`.
    pub fn findings(&self, value: &str) -> Findings {
        if self.enabled.is_empty() { Findings::new() } else { find_in(value, self.enabled) }
    }

    /// What the detectors find in a value of a column whose name says
    /// `says`: under a secret's name, a value that is one random-looking
    /// token (8 printable characters or more, no spaces, mixed classes; see
    /// README) is found whole by `secret_by_name`; anything else is free
    /// text, as in [`Masker::findings`].
    pub fn findings_in_column(&self, value: &str, says: NameSays) -> Findings {
        if says == NameSays::Secret
            && self.enabled.contains(Detector::SecretByName)
            && let Some(range) = by_name::secret_value(value)
        {
            return smallvec::smallvec![Finding { detector: Detector::SecretByName, range }];
        }
        self.findings(value)
    }

    /// [`Masker::mask_text`] for a value of a column whose name says `says`
    /// (see [`Masker::findings_in_column`]).
    pub fn mask_text_in_column<'v>(&self, value: &'v str, says: NameSays, counts: &mut Counts) -> Cow<'v, str> {
        let findings = self.findings_in_column(value, says);
        if findings.is_empty() {
            return Cow::Borrowed(value);
        }
        let mut out = String::with_capacity(value.len() + 16);
        self.write_masked(value, &findings, counts, &mut out);
        Cow::Owned(out)
    }

    /// Masks the findings in a JSON document so that it stays JSON: a
    /// finding in a number (outside any string) turns the whole number into
    /// a string of its masked form (`4111111111111111` → `"************1111"`),
    /// since a marker in a number's place is no JSON a driver can read.
    /// `None` if the masked text is still not JSON (a finding cut an escape
    /// sequence in two): the caller withholds the value.
    pub fn masked_json(&self, value: &str, findings: &[Finding], counts: &mut Counts) -> Option<String> {
        let numbers: Vec<_> =
            json_tokens(value).into_iter().filter(|(t, _)| *t == JsonToken::Number).map(|(_, r)| r).collect();
        let mut out = String::with_capacity(value.len() + 16);
        let mut at = 0;
        for f in findings {
            let number = numbers.iter().find(|n| n.start < f.range.end && f.range.start < n.end);
            let range = number.map_or(f.range.clone(), |n| n.start.min(f.range.start)..n.end.max(f.range.end));
            if range.start < at {
                count(counts, f.detector.as_str());
                continue;
            }
            let action = self.actions[f.detector as usize];
            out.push_str(&value[at..range.start]);
            if number.is_some() {
                out.push('"');
                apply_into(action, f.detector.as_str(), &value[range.clone()], &self.key, counts, &mut out);
                out.push('"');
            } else {
                apply_into(action, f.detector.as_str(), &value[range.clone()], &self.key, counts, &mut out);
            }
            count(counts, f.detector.as_str());
            at = range.end;
        }
        out.push_str(&value[at..]);
        serde_json::from_str::<serde::de::IgnoredAny>(&out).is_ok().then_some(out)
    }

    /// Writes `value` with its `findings` masked to `out`, and counts them.
    pub fn write_masked(&self, value: &str, findings: &[Finding], counts: &mut Counts, out: &mut impl TextOut) {
        let mut at = 0;
        for f in findings {
            // The same text found by two detectors is masked once.
            if f.range.start < at {
                count(counts, f.detector.as_str());
                continue;
            }
            let action = self.actions[f.detector as usize];
            out.put(&value[at..f.range.start]);
            apply_into(action, f.detector.as_str(), &value[f.range.clone()], &self.key, counts, out);
            count(counts, f.detector.as_str());
            at = f.range.end;
        }
        out.put(&value[at..]);
    }
}

/// A JSON text as a driver decodes it, when that differs from its bytes:
/// its strings with their escapes decoded (`\u0040` is `@`, `\/` is `/`) and
/// its numbers written out in digits (`4.111111111111111e15` is
/// `4111111111111111`), one per line; `None` when the text has neither
/// escapes nor fractions or exponents (what detectors read of it is what the
/// driver gets), or is not JSON.
pub fn json_decoded(text: &str) -> Option<String> {
    let (mut decoded, mut differs) = (String::new(), false);
    for (token, range) in json_tokens(text) {
        let raw = text.get(range)?;
        match token {
            JsonToken::String => {
                differs |= raw.contains('\\');
                decoded.push_str(&serde_json::from_str::<String>(raw).ok()?);
            }
            JsonToken::Number if raw.contains(['.', 'e', 'E']) => {
                differs = true;
                decoded.push_str(&number_in_digits(raw));
            }
            JsonToken::Number => decoded.push_str(raw),
        }
        decoded.push('\n');
    }
    differs.then_some(decoded)
}

/// A JSON number's value in plain digits, exactly (no floating point): its
/// integer part, or the number as written if the exponent is out of reach.
fn number_in_digits(token: &str) -> String {
    let (mantissa, exponent) = match token.find(['e', 'E']) {
        Some(at) => (&token[..at], token[at + 1..].parse::<i32>().unwrap_or(i32::MAX)),
        None => (token, 0),
    };
    if exponent.unsigned_abs() > 64 {
        return token.to_string();
    }
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = format!("{whole}{fraction}");
    let point = whole.len() as i32 + exponent;
    let integer = if point <= 0 {
        "0".to_string()
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        digits[..point as usize].to_string()
    };
    format!("{sign}{integer}")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonToken {
    String,
    Number,
}

/// The strings (with their quotes; to the end of the text if unterminated)
/// and numbers (runs of `-+.0-9eE` outside strings) of a JSON text, in
/// order, by byte range.
fn json_tokens(text: &str) -> Vec<(JsonToken, std::ops::Range<usize>)> {
    let bytes = text.as_bytes();
    let (mut tokens, mut i) = (Vec::new(), 0);
    while i < bytes.len() {
        let start = i;
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(bytes.len());
                tokens.push((JsonToken::String, start..i));
            }
            b'-' | b'0'..=b'9' => {
                while i < bytes.len() && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                tokens.push((JsonToken::Number, start..i));
            }
            _ => i += 1,
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_written_differently_has_one_token_and_a_value_search_finds_it() {
        let key = MaskingKey::new(b"a key of the deployment".to_vec());
        let same = |a: &str, b: &str| assert_eq!(key.value_token(a), key.value_token(b), "{a} / {b}");
        same("Ada@Example.com ", "ada@example.com");
        same("4111 1111 1111 1111", "4111-1111-1111-1111");
        same("4111111111111111", "(4111) 1111.1111/1111");
        same("DE89 3704 0044 0532 0130 00", "DE89370400440532013000");
        same("de89 3704 0044 0532 0130 00", "DE89370400440532013000");
        same("de89370400440532013000", "DE89370400440532013000");
        let token = key.value_token("ada@example.com");
        assert!(token.starts_with("tok_") && token.len() == 16, "{token}");
        assert_ne!(token, key.value_token("bob@example.com"));
        assert_ne!(token, MaskingKey::new(b"another deployment".to_vec()).value_token("ada@example.com"));
        assert_ne!(key.value_token("Secret1"), key.value_token("secret1"), "case kept where it may matter");
        assert_ne!(key.value_token("1.50"), key.value_token("150"), "short numbers keep their separators");
        assert_ne!(key.value_token("-5"), key.value_token("5"));
        // What the token action writes holds what a value search looks for.
        let config: ProfileConfig =
            toml::from_str("detectors = [\"email\", \"card\"]\nactions = { email = \"token\", card = \"token\" }")
                .unwrap();
        let m = Masker::new(Profile::new("p", &config).unwrap(), key.clone());
        let masked = m.mask_text("mail Ada@Example.com, card 4111 1111 1111 1111", &mut Counts::default());
        assert!(masked.contains(&format!("[email:{token}]")), "{masked}");
        assert!(masked.contains(&key.value_token("4111111111111111")), "{masked}");
        // The tokens written are kept, each once, up to the bound; the rest
        // counted.
        let mut counts = Counts::new();
        for n in 0..300 {
            m.mask_text(&format!("a{n}@example.com and again A{n}@example.com"), &mut counts);
        }
        let (tokens, dropped) = counts.tokens();
        // (Past the bound, each token written is counted: two per value.)
        assert_eq!((tokens.len(), dropped), (proctor_schemas::MAX_RESULT_TOKENS, 2 * (300 - 256)));
        assert!(tokens.contains(&key.value_token("a7@example.com")));
        assert_eq!(counts.get("email"), Some(&600), "every value counted");
    }

    #[test]
    fn json_is_read_as_a_driver_decodes_it() {
        assert_eq!(json_decoded(r#"{"n": 4111111111111111, "s": "plain"}"#), None, "nothing decodes differently");
        assert_eq!(json_decoded(r#"{"e":"ada\u0040example.com"}"#).as_deref(), Some("e\nada@example.com\n"));
        assert_eq!(json_decoded(r#"{"u":"x:\/\/y"}"#).as_deref(), Some("u\nx://y\n"));
        assert_eq!(json_decoded(r#"[4.111111111111111e15]"#).as_deref(), Some("4111111111111111\n"));
        assert_eq!(
            json_decoded(r#"[-4.1111111111111111111E18, 1.5, 2e-3]"#).as_deref(),
            Some("-4111111111111111111\n1\n0\n")
        );
        assert_eq!(json_decoded(r#"["unterminated\"]"#), None, "not JSON");
        let m = masker(r#"detectors = ["all"]"#);
        for hidden in [
            r#"{"e":"ada\u0040example.com"}"#,
            r#"{"n": 4.111111111111111e15}"#,
            r#"{"u":"postgres:\/\/admin:hunter2@db\/x"}"#,
        ] {
            let decoded = json_decoded(hidden).unwrap();
            assert!(m.findings(&decoded).len() > m.findings(hidden).len(), "{hidden}");
        }
    }

    #[test]
    fn json_stays_json_when_a_number_or_a_string_holds_a_secret() {
        let m = masker(
            r#"detectors = ["all"]
actions = { card = "last4" }"#,
        );
        let mut counts = Counts::new();
        for (json, expected) in [
            (r#"{"n": 4111111111111111}"#, r#"{"n": "************1111"}"#),
            (r#"{"n": -735254625134726842042918177}"#, r#"{"n": "-***********************8177"}"#),
            (r#"[4111111111111111, "4111 1111 1111 1111"]"#, r#"["************1111", "**** **** **** 1111"]"#),
            (r#"{"mail": "ada@example.com", "n": 1.5e3}"#, r#"{"mail": "[email:masked]", "n": 1.5e3}"#),
        ] {
            let findings = m.findings(json);
            assert!(!findings.is_empty(), "{json}");
            let masked = m.masked_json(json, &findings, &mut counts);
            assert_eq!(masked.as_deref(), Some(expected), "{json}");
        }
    }

    fn masker(toml_text: &str) -> Masker {
        let config: ProfileConfig = toml::from_str(toml_text).unwrap();
        Masker::new(Profile::new("p", &config).unwrap(), MaskingKey::new(b"k".to_vec()))
    }

    #[test]
    fn detectors_mask_what_they_find_and_count_it() {
        let m = masker(
            r#"detectors = ["all"]
actions = { card = "last4", email = "token" }"#,
        );
        let mut counts = Counts::new();
        let out = m.mask_text("paid 4111-1111-1111-1111 by ada@example.com, ada@example.com", &mut counts);
        assert!(out.starts_with("paid ****-****-****-1111 by [email:tok_"), "{out}");
        let tokens: Vec<&str> = out.split(", ").collect();
        assert_eq!(tokens[0].rsplit(' ').next(), Some(tokens[1]), "equal values, equal tokens: {out}");
        assert_eq!(counts.get("card"), Some(&1));
        assert_eq!(counts.get("email"), Some(&2));
        assert!(matches!(m.mask_text("nothing to see", &mut counts), Cow::Borrowed(_)));
    }

    #[test]
    fn column_rules_mask_whole_values_by_name_pattern_or_table() {
        let m = masker(
            r#"[[columns]]
match = "*password*"
[[columns]]
match = "customers.ssn"
action = "last4""#,
        );
        let mut counts = Counts::new();
        let col = |name, table| Column { name, table };
        assert_eq!(m.mask("hunter2", Some(&col("db_password_hash", None)), &mut counts), "[column:*password*:masked]");
        assert_eq!(m.mask("123-45-6789", Some(&col("SSN", Some("customers"))), &mut counts), "***-**-6789");
        assert_eq!(m.mask("123-45-6789", Some(&col("ssn", Some("orders"))), &mut counts), "123-45-6789");
        assert_eq!(m.mask("123-45-6789", Some(&col("ssn", None)), &mut counts), "***-**-6789", "unknown table: masked");
        assert_eq!(counts.len(), 2);
    }

    /// What a column's name says is decided once per result, and only
    /// under the `secret_by_name` detector.
    #[test]
    fn a_columns_name_says_whether_its_values_are_secrets() {
        let m = masker(r#"detectors = ["all"]"#);
        let col = |name| Column { name, table: Some("t") };
        assert_eq!(m.name_says(&col("client_secret")), NameSays::Secret);
        assert_eq!(m.name_says(&col("email")), NameSays::Nothing);
        assert_eq!(NameSays::Nothing.either(NameSays::Secret), NameSays::Secret);
        let without = masker(r#"detectors = ["card"]"#);
        assert_eq!(without.name_says(&col("client_secret")), NameSays::Nothing);
        let mut counts = Counts::new();
        let aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        assert_eq!(m.mask_text_in_column(aws, NameSays::Secret, &mut counts), "[secret_by_name:masked]");
        assert_eq!(m.mask_text_in_column(aws, NameSays::Nothing, &mut counts), aws);
        assert_eq!(without.mask_text_in_column(aws, NameSays::Secret, &mut counts), aws);
        let findings = m.findings_in_column(aws, NameSays::Secret);
        assert_eq!(findings.as_slice(), [Finding { detector: Detector::SecretByName, range: 0..aws.len() }]);
    }

    #[test]
    fn a_union_keeps_every_rule_and_the_strictest_action() {
        let a = Profile::new(
            "a",
            &toml::from_str(
                r#"detectors = ["card"]
actions = { card = "last4" }"#,
            )
            .unwrap(),
        )
        .unwrap();
        let b = Profile::new("b", &toml::from_str(r#"detectors = ["card", "email"]"#).unwrap()).unwrap();
        let u = Profile::union([&a, &b]);
        assert_eq!(u.name, "a+b");
        assert_eq!(u.detectors, [(Detector::Card, Action::Redact), (Detector::Email, Action::Redact)]);
        let e = Profile::new("x", &toml::from_str(r#"detectors = ["cards"]"#).unwrap()).unwrap_err();
        assert!(e.to_string().contains("unknown detector \"cards\""), "{e}");
    }
}
