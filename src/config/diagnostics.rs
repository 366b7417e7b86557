//! Problems found in config files, each pointing at `file:line` with what to write instead,
//! so `portcullis check` can list every one at once (like `nginx -t`, but all of them).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}: {kind}: {}",
            self.file.display(),
            self.line,
            self.message
        )
    }
}

/// How many problems of one file are listed with their line; the rest are counted in one
/// closing line. Finding a line costs a scan of the file, so this also keeps a file with
/// 100k mistakes from taking quadratic time.
pub const MAX_LISTED: usize = 200;

/// Collects the problems of one file. Dropping it adds the "N more" line, if any were left out.
pub struct Report<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub problems: &'a mut Vec<Problem>,
    listed: usize,
    omitted: usize,
    omitted_errors: bool,
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        if self.omitted == 0 {
            return;
        }
        let n = self.omitted;
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line: 1,
            severity: if self.omitted_errors {
                Severity::Error
            } else {
                Severity::Warning
            },
            message: format!(
                "{n} more problem{} in this file not listed: fix the ones above and run check again",
                if n == 1 { "" } else { "s" }
            ),
        });
    }
}

impl<'a> Report<'a> {
    pub fn new(file: &'a Path, text: &'a str, problems: &'a mut Vec<Problem>) -> Report<'a> {
        Report {
            file,
            text,
            problems,
            listed: 0,
            omitted: 0,
            omitted_errors: false,
        }
    }

    /// True when one more problem would be listed (false once [`MAX_LISTED`] were).
    fn room(&mut self, severity: Severity) -> bool {
        if self.listed < MAX_LISTED {
            self.listed += 1;
            return true;
        }
        self.omitted += 1;
        self.omitted_errors |= severity == Severity::Error;
        false
    }

    /// An error at the line of the key path (`["signature", "header"]`), or of its nearest parent.
    pub fn error(&mut self, path: &[&str], message: impl Into<String>) {
        self.push(Severity::Error, path, message.into());
    }

    pub fn warn(&mut self, path: &[&str], message: impl Into<String>) {
        self.push(Severity::Warning, path, message.into());
    }

    pub fn error_at(&mut self, line: usize, message: impl Into<String>) {
        if !self.room(Severity::Error) {
            return;
        }
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line,
            severity: Severity::Error,
            message: message.into(),
        });
    }

    fn push(&mut self, severity: Severity, path: &[&str], message: String) {
        if !self.room(severity) {
            return;
        }
        let line = line_of(self.text, path);
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line,
            severity,
            message,
        });
    }
}

/// The 1-based line where a key path is written. Block style nests by indentation and flow
/// style (`{ a: 1 }`) stays on its parent's line, so this finds the top-level key, then each
/// nested key in the lines (or the flow mapping) below it; it falls back to the deepest key found.
/// A path element `[N]` is the Nth item (from 0) of the block list under the key before it.
pub fn line_of(text: &str, path: &[&str]) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let mut best = 1;
    let mut start = 0;
    let mut indent: Option<usize> = None;
    for (depth, key) in path.iter().enumerate() {
        if let Some(n) = list_index(key) {
            match nth_item(&lines, start, indent, n) {
                Some((i, ind)) => {
                    best = i + 1;
                    // The item's first key may sit on its `- ` line.
                    start = i;
                    indent = Some(ind);
                    continue;
                }
                None => break,
            }
        }
        let mut found = None;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            let this_indent = line.len() - trimmed.len();
            if depth == 0 && this_indent != 0 {
                continue;
            }
            if let Some(parent) = indent {
                if i > start && this_indent <= parent && depth > 0 {
                    break;
                }
            }
            let item = trimmed.trim_start_matches("- ");
            if item.starts_with(&format!("{key}:")) || (depth > 0 && contains_key(trimmed, key)) {
                found = Some((i, this_indent));
                break;
            }
        }
        match found {
            Some((i, ind)) => {
                best = i + 1;
                start = i + 1;
                indent = Some(ind);
                // A flow mapping on the same line holds the nested keys: stay on this line.
                if lines[i].contains('{')
                    && depth + 1 < path.len()
                    && contains_key(lines[i], path[depth + 1])
                {
                    return best;
                }
            }
            None => break,
        }
    }
    best
}

/// `N` of a path element `[N]`.
fn list_index(key: &str) -> Option<usize> {
    key.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The line and indentation of the `n`th `- ` item of the block list that starts at line
/// `start`, below a key indented `parent` (YAML lets the items sit at the key's own indent).
fn nth_item(
    lines: &[&str],
    start: usize,
    parent: Option<usize>,
    n: usize,
) -> Option<(usize, usize)> {
    let mut items = None;
    let mut seen = 0;
    for (i, line) in lines.iter().enumerate().skip(start) {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let this_indent = line.len() - trimmed.len();
        let item = trimmed == "-" || trimmed.starts_with("- ");
        let at = *items.get_or_insert(this_indent);
        if this_indent < at || parent.is_some_and(|p| this_indent < p) {
            return None;
        }
        if this_indent == at {
            if !item {
                return None;
            }
            if seen == n {
                return Some((i, this_indent));
            }
            seen += 1;
        }
    }
    None
}

fn contains_key(line: &str, key: &str) -> bool {
    line.contains(&format!("{key}:"))
        && line
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .any(|w| w == key)
}

/// Parses a YAML file into `T`, reporting every unknown key (with a suggestion from `known`
/// for top-level ones, from `nested` below them) rather than stopping at the first, and a
/// syntax or type error at its line.
pub fn parse<T: serde::de::DeserializeOwned>(
    report: &mut Report<'_>,
    known: &[&str],
    nested: &[(&str, &[&str])],
    reference: &str,
) -> Option<T> {
    let (value, unknown) = parse_quiet(report, reference)?;
    report_unknown(report, &unknown, known, nested, reference, |_| {
        Unknown::Plain
    });
    Some(value)
}

/// [`parse`] without reporting unknown keys: `T` and the paths serde ignored (`a.b.c`, in
/// document order), for a caller whose sections are typed by a key inside them (sinks).
pub fn parse_quiet<T: serde::de::DeserializeOwned>(
    report: &mut Report<'_>,
    reference: &str,
) -> Option<(T, Vec<String>)> {
    if let Err((line, message)) = check_nesting(report.text) {
        report.error_at(line, message);
        return None;
    }
    let mut unknown = Vec::new();
    let parsed = serde_ignored::deserialize(serde_yaml::Deserializer::from_str(report.text), |p| {
        unknown.push(p.to_string())
    });
    match parsed {
        Ok(v) => Some((v, unknown)),
        Err(e) => {
            let line = e.location().map(|l| l.line()).unwrap_or(1);
            report.error_at(line, plain_serde_error(&e.to_string(), reference));
            None
        }
    }
}

/// How [`report_unknown`] words one unknown key.
pub enum Unknown {
    /// "did you mean" from the nearest parent's table, or the top-level keys.
    Plain,
    /// From these keys instead.
    Among(&'static [&'static str]),
    /// Not reported here: the caller words it later.
    Skip,
}

/// Reports every unknown key path with a suggestion. `special` may choose the keys a path
/// is suggested from (a sink's keys depend on its `type`).
pub fn report_unknown(
    report: &mut Report<'_>,
    unknown: &[String],
    known: &[&str],
    nested: &[(&str, &[&str])],
    reference: &str,
    special: impl Fn(&[&str]) -> Unknown,
) {
    for key in unknown {
        // serde_ignored writes sequence indices as numbers and untagged enums as `?`.
        let parts: Vec<&str> = key
            .split('.')
            .filter(|p| *p != "?" && !p.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        let Some((last, parents)) = parts.split_last() else {
            continue;
        };
        let table = match special(&parts) {
            Unknown::Skip => continue,
            Unknown::Among(keys) => Some(keys),
            Unknown::Plain if parents.is_empty() => Some(known),
            // The nearest parent with a known table.
            Unknown::Plain => parents.iter().rev().find_map(|parent| {
                nested
                    .iter()
                    .find(|(name, _)| name == parent)
                    .map(|(_, keys)| *keys)
            }),
        };
        if report.listed >= MAX_LISTED {
            // Counted, not described: a suggestion costs an edit distance per known key.
            report.room(Severity::Error);
            continue;
        }
        let hint = match table {
            Some(keys) => suggest(last, keys),
            None => format!("remove it, or see the README's {reference}"),
        };
        report.error(&parts, format!("unknown key `{}`: {hint}", parts.join(".")));
    }
}

/// Parses, from the whole file, the entries `names` of the top-level mapping `section` as
/// `T`: one kind of a section whose entries each name their kind (`sinks: { q: { type:
/// redis, … } }`). The file's own deserializer does it, so errors keep their line and path.
pub fn parse_entries<T: serde::de::DeserializeOwned>(
    text: &str,
    section: &str,
    names: &std::collections::BTreeSet<&str>,
    reference: &str,
) -> Result<Vec<(String, T)>, (usize, String)> {
    use serde::de::DeserializeSeed;
    entries::Document::<T>::new(section, names)
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .map_err(|e| {
            let line = e.location().map(|l| l.line()).unwrap_or(1);
            (line, plain_serde_error(&e.to_string(), reference))
        })
}

mod entries {
    use std::collections::BTreeSet;
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    /// The whole document: only `section` is read.
    pub struct Document<'a, T> {
        section: &'a str,
        names: &'a BTreeSet<&'a str>,
        kind: PhantomData<T>,
    }

    impl<'a, T> Document<'a, T> {
        pub fn new(section: &'a str, names: &'a BTreeSet<&'a str>) -> Self {
            Document {
                section,
                names,
                kind: PhantomData,
            }
        }
    }

    impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Document<'_, T> {
        type Value = Vec<(String, T)>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de, T: DeserializeOwned> Visitor<'de> for Document<'_, T> {
        type Value = Vec<(String, T)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                if key == self.section {
                    out = map.next_value_seed(Section::<T> {
                        names: self.names,
                        kind: PhantomData,
                    })?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }

    /// The section's mapping: the entries named are read as `T`, the rest skipped.
    struct Section<'a, T> {
        names: &'a BTreeSet<&'a str>,
        kind: PhantomData<T>,
    }

    impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Section<'_, T> {
        type Value = Vec<(String, T)>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de, T: DeserializeOwned> Visitor<'de> for Section<'_, T> {
        type Value = Vec<(String, T)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                if self.names.contains(key.as_str()) {
                    out.push((key, map.next_value::<T>()?));
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }
}

/// A block of a file (`["sinks", "queue"]`, `["listen"]`, or the whole file): a component
/// reports problems at its own keys without knowing where its block sits.
/// Runs `load` on a section of a throw-away report of `text`: its value, or the problems it
/// reported (unit tests of a component's loader).
#[cfg(test)]
pub(crate) fn loaded<T>(
    text: &str,
    load: impl FnOnce(&mut Section<'_, '_>) -> Option<T>,
) -> Result<T, Vec<String>> {
    let file = Path::new("f.yaml");
    let mut problems = Vec::new();
    let mut report = Report::new(file, text, &mut problems);
    let got = load(&mut Section::new(&mut report, &[]));
    drop(report);
    got.ok_or_else(|| problems.iter().map(|p| p.to_string()).collect())
}

pub struct Section<'r, 'a> {
    report: &'r mut Report<'a>,
    at: Vec<String>,
}

impl<'r, 'a> Section<'r, 'a> {
    pub fn new(report: &'r mut Report<'a>, at: &[&str]) -> Section<'r, 'a> {
        Section {
            report,
            at: at.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// An error at `key` below this block (`&[]`: the block itself).
    pub fn error(&mut self, key: &[&str], message: impl Into<String>) {
        self.push(Severity::Error, key, message.into());
    }

    pub fn warn(&mut self, key: &[&str], message: impl Into<String>) {
        self.push(Severity::Warning, key, message.into());
    }

    fn push(&mut self, severity: Severity, key: &[&str], message: String) {
        let path: Vec<&str> = self
            .at
            .iter()
            .map(String::as_str)
            .chain(key.iter().copied())
            .collect();
        self.report.push(severity, &path, message);
    }

    pub fn error_at(&mut self, line: usize, message: impl Into<String>) {
        self.report.error_at(line, message);
    }

    /// The block at `keys` below this one (a list item is `[N]`).
    pub fn nested(&mut self, keys: &[&str]) -> Section<'_, 'a> {
        Section {
            report: &mut *self.report,
            at: self
                .at
                .iter()
                .cloned()
                .chain(keys.iter().map(|k| k.to_string()))
                .collect(),
        }
    }

    /// The file's text (to find a value's line).
    pub fn text(&self) -> &str {
        self.report.text
    }

    /// Whether any error was reported since there were `mark` problems.
    pub fn errors_since(&self, mark: usize) -> bool {
        self.report.problems[mark..]
            .iter()
            .any(|p| p.severity == Severity::Error)
    }

    /// Refuses a limit of 0 in `block` (say `rate_limit`): it would admit nothing, and
    /// leaving the key out is how to say "no limit".
    pub fn refuse_zero_limits(&mut self, block: &str, limits: &[(&str, Option<u32>)]) {
        for (key, value) in limits {
            if *value == Some(0) {
                self.error(
                    &[block, key],
                    format!("{block}.{key} is 0, which admits nothing: remove it for no limit"),
                );
            }
        }
    }

    /// An optional duration at `key`: `default` when absent, `rule` says what a value must be.
    pub fn duration(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
        rule: impl Fn(Duration) -> Result<(), String>,
    ) -> Duration {
        self.duration_at(&[key], value, default, rule)
    }

    /// [`Section::duration`] with problems at `at` (a key path, or `&[]` for the block).
    pub fn duration_at(
        &mut self,
        at: &[&str],
        value: Option<&str>,
        default: Duration,
        rule: impl Fn(Duration) -> Result<(), String>,
    ) -> Duration {
        let Some(text) = value else { return default };
        match super::parse_duration(text).and_then(|d| rule(d).map(|()| d)) {
            Ok(d) => d,
            Err(e) => {
                self.error(at, e);
                default
            }
        }
    }
}

/// serde's messages name Rust types (`untagged enum DedupSpec`); say what to do instead.
fn plain_serde_error(message: &str, reference: &str) -> String {
    if message.contains("did not match any variant of untagged enum") {
        return format!(
            "this value has none of the forms the key takes: see the README's {reference}"
        );
    }
    message.to_owned()
}

/// Deepest nesting a config file may have. Real configs stay under 10; the YAML scanner
/// takes seconds on 100k levels, so deeper input is refused before it is parsed.
pub const MAX_NESTING: usize = 64;

/// Finds flow (`[`, `{`) or block (`- - -`, indentation) nesting deeper than [`MAX_NESTING`],
/// in one pass. Quoted strings and comments are skipped; a bracket inside a plain or block
/// scalar may be over-counted, which only matters past the limit.
fn check_nesting(text: &str) -> Result<(), (usize, String)> {
    let too_deep = |line: usize| {
        Err((
            line,
            format!("nested more than {MAX_NESTING} levels deep: a config file never needs that (is this the right file?)"),
        ))
    };
    let mut flow = 0usize;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let mut block = (line.len() - trimmed.len()) / 2;
        let mut rest = trimmed;
        while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
            block += 1;
            rest = r.trim_start();
        }
        if block > MAX_NESTING {
            return too_deep(i + 1);
        }
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut prev = ' ';
        for c in rest.chars() {
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if q == '"' && c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                prev = c;
                continue;
            }
            match c {
                '#' if prev == ' ' || prev == '\t' => break,
                '"' | '\'' if flow > 0 || matches!(prev, ' ' | ':' | ',' | '[' | '{') => {
                    quote = Some(c)
                }
                '[' | '{' => {
                    flow += 1;
                    if flow + block > MAX_NESTING {
                        return too_deep(i + 1);
                    }
                }
                ']' | '}' => flow = flow.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
    }
    Ok(())
}

/// Largest config or filter file read (a filter is a few hundred bytes).
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;
/// Largest `file:` secret read (a key or token is a few dozen bytes; a PEM bundle a few KiB).
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a whole regular file of at most `cap` bytes. A FIFO, device or directory is refused
/// without blocking (opened non-blocking, checked before reading), and nothing past the cap
/// is read: `file:/dev/zero` or a FIFO can neither eat memory nor hang the loader.
pub fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        let t = meta.file_type();
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!(
            "{} is {kind}: {what} must be a regular file",
            path.display()
        ));
    }
    let too_big = || {
        format!(
            "{} is larger than {}: {what} may be at most that",
            path.display(),
            match cap {
                c if c % (1 << 20) == 0 => format!("{} MiB", c >> 20),
                c if c % (1 << 10) == 0 => format!("{} KiB", c >> 10),
                c => format!("{c} bytes"),
            }
        )
    };
    if meta.len() > cap {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > cap {
        return Err(too_big());
    }
    Ok(bytes)
}

/// The text of a config file, or an error about it.
pub fn read(path: &Path, problems: &mut Vec<Problem>) -> Option<String> {
    let text = read_capped(path, MAX_CONFIG_FILE, "a config or filter file").and_then(|bytes| {
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
    });
    match text {
        Ok(text) => Some(text),
        Err(e) => {
            problems.push(Problem {
                file: path.to_path_buf(),
                line: 1,
                severity: Severity::Error,
                message: format!("cannot read: {e}"),
            });
            None
        }
    }
}

/// "did you mean `x`?" for a misspelt key, from the keys that would have been accepted.
pub fn suggest(unknown: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
        .min();
    match best {
        Some((distance, key)) if distance <= 3 => format!("did you mean `{key}`?"),
        _ => format!("valid keys here: {}", known.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "name: github\n# comment\nsignature: { header: X, encoding: hex }\nrate_limit:\n  per_second: 5\n  per_ip_per_second: 2\nmax_body: 1MiB\n";

    #[test]
    fn finds_top_level_nested_and_flow_keys() {
        assert_eq!(line_of(YAML, &["name"]), 1);
        assert_eq!(line_of(YAML, &["signature", "encoding"]), 3);
        assert_eq!(line_of(YAML, &["rate_limit", "per_ip_per_second"]), 6);
        assert_eq!(line_of(YAML, &["max_body"]), 7);
        assert_eq!(line_of(YAML, &["nope"]), 1);
        assert_eq!(line_of(YAML, &["rate_limit", "nope"]), 4);
    }

    #[test]
    fn finds_the_keys_of_a_list_item() {
        let yaml = "outbound:\n  api: x\n  sources:\n    - type: redis\n      url: a\n    # c\n    - type: amqp\n      url: b\n      queue: \"\"\n  tokens: [t]\nlist:\n- a: 1\n- a: 2\n";
        assert_eq!(line_of(yaml, &["outbound", "sources", "[0]", "url"]), 5);
        assert_eq!(line_of(yaml, &["outbound", "sources", "[1]"]), 7);
        assert_eq!(line_of(yaml, &["outbound", "sources", "[1]", "type"]), 7);
        assert_eq!(line_of(yaml, &["outbound", "sources", "[1]", "url"]), 8);
        assert_eq!(line_of(yaml, &["outbound", "sources", "[1]", "queue"]), 9);
        // Not in the item: its line.
        assert_eq!(line_of(yaml, &["outbound", "sources", "[1]", "tls"]), 7);
        // No third item: the list's key.
        assert_eq!(line_of(yaml, &["outbound", "sources", "[2]", "url"]), 3);
        // Items at the key's own indent.
        assert_eq!(line_of(yaml, &["list", "[1]", "a"]), 13);
    }

    #[test]
    fn suggests_the_nearest_key() {
        assert_eq!(
            suggest("tolerence", &["tolerance", "name"]),
            "did you mean `tolerance`?"
        );
        assert!(suggest("zzzzzzzz", &["name"]).starts_with("valid keys here"));
    }
}
