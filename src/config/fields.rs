//! Typing one raw [`Value`] at a time: each getter either returns the typed value or records a
//! problem prefixed by the key's path and returns `None`, so validation always runs to the end.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use super::raw::Keys;
use super::units::{parse_duration, parse_size};
use super::yaml::{List, Table, Value};

/// Every problem found so far, each `path: message`.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<String>);

/// The longest timeout or interval taken: a deadline is a point in time computed from it,
/// and a day is past any wait an SMTP peer or an operator means (a value like `99999999d`
/// would overflow the clock's arithmetic in every session).
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);
impl Problems {
    pub fn add(&mut self, path: &str, message: impl Display) {
        self.0.push(format!("{path}: {message}"));
    }

    /// A section's unknown keys, each with its full path and the keys that are valid there.
    pub fn unknown_keys<T: Keys>(&mut self, path: &str, section: &T) {
        for key in &section.unknown().0 {
            self.add(
                &join(path, key),
                format_args!("unknown key (expected one of: {})", T::KEYS.join(", ")),
            );
        }
    }

    /// The section if it is a mapping (its unknown keys reported), else a problem.
    pub fn table<'a, T: Keys>(&mut self, path: &str, table: &'a Table<T>) -> Option<&'a T> {
        match table {
            Table::Given(section) => {
                self.unknown_keys(path, section);
                Some(section)
            }
            Table::Wrong(found) => {
                self.add(path, format_args!("expected a mapping, found {found}"));
                None
            }
        }
    }

    /// The items if it is a list, else a problem.
    pub fn list<'a, T>(&mut self, path: &str, list: &'a List<T>) -> Option<&'a [T]> {
        match list {
            List::Given(items) => Some(items),
            List::Wrong(found) => {
                self.add(path, format_args!("expected a list, found {found}"));
                None
            }
        }
    }

    pub fn bool(&mut self, path: &str, value: &Value) -> Option<bool> {
        match value {
            Value::Bool(b) => Some(*b),
            other => self.wrong(path, "true or false", other),
        }
    }

    pub fn string<'a>(&mut self, path: &str, value: &'a Value) -> Option<&'a str> {
        match value {
            Value::Str(s) if !s.trim().is_empty() => Some(s),
            other => self.wrong(path, "a non-empty string", other),
        }
    }

    /// A required key: its string value, or "missing" when absent.
    pub fn required_string<'a>(&mut self, path: &str, value: Option<&'a Value>) -> Option<&'a str> {
        match value {
            Some(value) => self.string(path, value),
            None => {
                self.add(path, "missing (required)");
                None
            }
        }
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(
        &mut self,
        path: &str,
        value: &Value,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let found = match value {
            Value::Str(s) => choices.iter().find(|(word, _)| word == s).map(|(_, t)| *t),
            _ => None,
        };
        if found.is_none() {
            let words: Vec<&str> = choices.iter().map(|(word, _)| *word).collect();
            let expected = format!("one of: {}", words.join(", "));
            self.wrong::<()>(path, &expected, value);
        }
        found
    }

    /// A list of strings.
    pub fn strings<'a>(&mut self, path: &str, value: &'a Value) -> Option<Vec<&'a str>> {
        let Value::Seq(items) = value else {
            return self.wrong(path, "a list of strings", value);
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(self.string(&format!("{path}[{i}]"), item));
        }
        out.into_iter().collect()
    }

    pub fn socket_addr(&mut self, path: &str, value: &Value) -> Option<SocketAddr> {
        let parsed = match value {
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.wrong::<()>(path, "an address like 127.0.0.1:25 or [::1]:25", value);
        }
        parsed
    }

    /// A duration of at most [`MAX_DURATION`]; `positive` refuses zero (every timeout).
    pub fn duration(&mut self, path: &str, value: &Value, positive: bool) -> Option<Duration> {
        let parsed = match value {
            Value::Str(s) => parse_duration(s),
            _ => None,
        };
        match parsed {
            None => self.add(
                path,
                format_args!(
                    "invalid duration {} (use e.g. 30s, 5m, 1h)",
                    value.describe()
                ),
            ),
            Some(d) if positive && d.is_zero() => self.add(path, "must be greater than 0s"),
            Some(d) if d > MAX_DURATION => self.add(path, "must be at most 1d"),
            Some(d) => return Some(d),
        }
        None
    }

    /// A size in bytes, greater than zero.
    pub fn size(&mut self, path: &str, value: &Value) -> Option<u64> {
        let parsed = match value {
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::Str(s) => parse_size(s),
            _ => None,
        };
        match parsed {
            None => self.add(
                path,
                format_args!(
                    "invalid size {} (use bytes or e.g. 35MiB, 10MB, 512KiB)",
                    value.describe()
                ),
            ),
            Some(0) => self.add(path, "must be greater than 0"),
            Some(n) => return Some(n),
        }
        None
    }

    /// A whole number at least `min`.
    pub fn count(&mut self, path: &str, value: &Value, min: u32) -> Option<u32> {
        let parsed = match value {
            Value::Int(i) => u32::try_from(*i).ok().filter(|n| *n >= min),
            _ => None,
        };
        if parsed.is_none() {
            let expected = format!("a whole number from {min} to {}", u32::MAX);
            self.wrong::<()>(path, &expected, value);
        }
        parsed
    }

    fn wrong<T>(&mut self, path: &str, expected: &str, found: &Value) -> Option<T> {
        self.add(
            path,
            format_args!("expected {expected}, found {}", found.describe()),
        );
        None
    }
}

/// `parent.key`, or `key` at the top level.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}
