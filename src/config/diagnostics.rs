//! Problems found in config files, each pointing at `file:line` with what to write instead,
//! so `portcullis check` can list every one at once (like `nginx -t`, but all of them).

use std::fmt;
use std::path::{Path, PathBuf};

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

/// Collects the problems of one file.
pub struct Report<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub problems: &'a mut Vec<Problem>,
}

impl Report<'_> {
    /// An error at the line of the key path (`["signature", "header"]`), or of its nearest parent.
    pub fn error(&mut self, path: &[&str], message: impl Into<String>) {
        self.push(Severity::Error, path, message.into());
    }

    pub fn warn(&mut self, path: &[&str], message: impl Into<String>) {
        self.push(Severity::Warning, path, message.into());
    }

    pub fn error_at(&mut self, line: usize, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line,
            severity: Severity::Error,
            message: message.into(),
        });
    }

    fn push(&mut self, severity: Severity, path: &[&str], message: String) {
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
pub fn line_of(text: &str, path: &[&str]) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let mut best = 1;
    let mut start = 0;
    let mut indent: Option<usize> = None;
    for (depth, key) in path.iter().enumerate() {
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

fn contains_key(line: &str, key: &str) -> bool {
    line.contains(&format!("{key}:"))
        && line
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .any(|w| w == key)
}

/// Parses a YAML file into `T`, reporting every unknown key (with a suggestion from `known`
/// for top-level ones) rather than stopping at the first, and a syntax or type error at its line.
pub fn parse<T: serde::de::DeserializeOwned>(
    report: &mut Report<'_>,
    known: &[&str],
    reference: &str,
) -> Option<T> {
    let mut unknown = Vec::new();
    let parsed = serde_ignored::deserialize(serde_yaml::Deserializer::from_str(report.text), |p| {
        unknown.push(p.to_string())
    });
    let value = match parsed {
        Ok(v) => v,
        Err(e) => {
            let line = e.location().map(|l| l.line()).unwrap_or(1);
            report.error_at(line, format!("{e}"));
            return None;
        }
    };
    for key in &unknown {
        let parts: Vec<&str> = key.split('.').collect();
        let hint = if parts.len() == 1 {
            suggest(parts[0], known)
        } else {
            format!("remove it, or see the README's {reference}")
        };
        report.error(&parts, format!("unknown key `{key}`: {hint}"));
    }
    Some(value)
}

/// The text of a config file, or an error about it.
pub fn read(path: &Path, problems: &mut Vec<Problem>) -> Option<String> {
    match std::fs::read_to_string(path) {
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
    fn suggests_the_nearest_key() {
        assert_eq!(
            suggest("tolerence", &["tolerance", "name"]),
            "did you mean `tolerance`?"
        );
        assert!(suggest("zzzzzzzz", &["name"]).starts_with("valid keys here"));
    }
}
