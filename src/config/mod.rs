//! Loading `gateway.toml`: parse, find every unknown key, build the runtime,
//! and report every problem as `FILE:LINE:COL: message` (the contract's
//! `check` format). Positions come from toml's spans: each error carries the
//! path of the key it is about, and [`Locator`] turns that path into a span.

pub mod compile;
pub mod file;

use crate::runtime::Runtime;
use file::FileConfig;
use std::fmt;
use std::ops::Range;
use toml::de::{DeTable, DeValue};

/// One config problem, positioned in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Every problem found in one file; `Display` prints the contract's lines.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.file, e.line, e.col, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A problem found while building the runtime, not yet positioned: `path` is
/// the dotted key path (`routes.2.upstream`), `key` says whether to point at
/// the key itself rather than its value.
#[derive(Debug, Clone)]
pub struct Issue {
    pub path: String,
    pub key: bool,
    pub message: String,
}

/// Collects [`Issue`]s while the runtime is built, so all are reported.
#[derive(Debug, Default)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    /// Records a problem with the value at `path`.
    pub fn at(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.into(),
            key: false,
            message: message.into(),
        });
    }
}

/// Reads and builds the config at `path` (as given on the command line).
pub fn load(path: &str) -> Result<Runtime, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: path.to_string(),
        errors: vec![ConfigError {
            line: 1,
            col: 1,
            message: format!("cannot read config file: {e}"),
        }],
    })?;
    let base = std::path::Path::new(path)
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    load_str(path, &text, &base)
}

/// Builds a runtime from config text; relative file paths in it resolve
/// against `base` (the config file's directory).
pub fn load_str(file: &str, text: &str, base: &std::path::Path) -> Result<Runtime, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: file.to_string(),
        errors,
    };
    let table = match DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => return Err(fail(vec![toml_error(text, &e)])),
    };
    let locator = Locator { text, root: &table };
    let mut ignored: Vec<String> = Vec::new();
    let de = toml::de::Deserializer::from(table.clone());
    let parsed: Result<FileConfig, _> =
        serde_ignored::deserialize(de, |p| ignored.push(p.to_string()));
    let mut errors: Vec<ConfigError> = ignored
        .iter()
        .map(|p| locator.error(p, true, format!("unknown key `{p}`")))
        .collect();
    match parsed {
        Err(e) => errors.push(toml_error(text, &e)),
        Ok(cfg) => {
            let mut issues = Issues::default();
            let runtime = compile::build(cfg, base, &mut issues);
            errors.extend(
                issues
                    .0
                    .iter()
                    .map(|i| locator.error(&i.path, i.key, i.message.clone())),
            );
            if errors.is_empty() {
                if let Some(rt) = runtime {
                    return Ok(rt);
                }
                errors.push(ConfigError {
                    line: 1,
                    col: 1,
                    message: "invalid configuration".into(),
                });
            }
        }
    }
    errors.sort_by_key(|e| (e.line, e.col));
    errors.dedup();
    Err(fail(errors))
}

fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
    ConfigError {
        line,
        col,
        message: e.message().trim().replace('\n', " "),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before
        .get(line_start..)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Finds the span of a dotted key path in the parsed document.
struct Locator<'a, 'i> {
    text: &'a str,
    root: &'a toml::Spanned<DeTable<'i>>,
}

impl Locator<'_, '_> {
    fn error(&self, path: &str, key: bool, message: String) -> ConfigError {
        let span = self.span(path, key);
        let (line, col) = line_col(self.text, span.start);
        ConfigError { line, col, message }
    }

    /// The span of the value (or key) at `path`, or of the deepest parent found.
    fn span(&self, path: &str, want_key: bool) -> Range<usize> {
        let mut best = 0..0;
        let mut table: Option<&DeTable> = Some(self.root.get_ref());
        let mut array: Option<&[toml::Spanned<DeValue>]> = None;
        let segs: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('.').collect()
        };
        let last = segs.len().saturating_sub(1);
        for (i, seg) in segs.iter().enumerate() {
            let value = if let Some(arr) = array.take() {
                match seg.parse::<usize>().ok().and_then(|n| arr.get(n)) {
                    Some(v) => v,
                    None => break,
                }
            } else if let Some(t) = table.take() {
                match t.iter().find(|(k, _)| k.get_ref().as_ref() == *seg) {
                    Some((k, v)) => {
                        if i == last && want_key {
                            return k.span();
                        }
                        v
                    }
                    None => break,
                }
            } else {
                break;
            };
            best = value.span();
            match value.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_all_reported_with_positions() {
        let text = "[server]\nlisen = \"x\"\n\n[[routes]]\nupstream = \"a\"\nbogus = 1\n";
        let Err(err) = load_str("g.toml", text, std::path::Path::new(".")) else {
            panic!("config with unknown keys was accepted")
        };
        let s = err.to_string();
        assert!(s.contains("g.toml:2:1: unknown key `server.lisen`"), "{s}");
        assert!(
            s.contains("g.toml:6:1: unknown key `routes.0.bogus`"),
            "{s}"
        );
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("", 10), (1, 1));
    }
}
