//! Typed readers of one value (a string, a size, a duration, …): each reports a wrong type or
//! range as an error naming the key and returns `None`, so loading goes on to find more.

use super::*;

impl Loader {
    pub(super) fn type_error(&mut self, at: &At, expected: &str, item: &Item) {
        self.error(at, format!("expected {expected}, found {}", describe(item)));
    }

    pub(super) fn string(&mut self, at: &At, item: &Item) -> Option<String> {
        match item.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.type_error(at, "a string", item);
                None
            }
        }
    }

    pub(super) fn non_empty_string(&mut self, at: &At, item: &Item) -> Option<String> {
        let s = self.string(at, item)?;
        if s.trim().is_empty() {
            self.error(at, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(super) fn boolean(&mut self, at: &At, item: &Item) -> Option<bool> {
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.type_error(at, "true or false", item);
                None
            }
        }
    }

    pub(super) fn integer(&mut self, at: &At, item: &Item, min: i64, max: i64) -> Option<i64> {
        let Some(n) = item.as_integer() else {
            self.type_error(at, "an integer", item);
            return None;
        };
        if n < min || n > max {
            self.error(at, format!("{n} is out of range ({min} to {max})"));
            return None;
        }
        Some(n)
    }

    pub(super) fn strings(&mut self, at: &At, item: &Item) -> Option<Vec<String>> {
        let Some(array) = item.as_array() else {
            self.type_error(at, "an array of strings", item);
            return None;
        };
        let mut out = Vec::new();
        for value in array.iter() {
            match value.as_str() {
                Some(s) => out.push(s.to_string()),
                None => {
                    let at = At {
                        line: self.line_of(value.span()).unwrap_or(at.line),
                        ..at.clone()
                    };
                    self.error(
                        &at,
                        format!("expected strings in the array, found {}", value.type_name()),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A string or an array of strings (gitlab-runner accepts both for `pull_policy`).
    pub(super) fn one_or_many(&mut self, at: &At, item: &Item) -> Option<Vec<String>> {
        match item.as_str() {
            Some(s) => Some(vec![s.to_string()]),
            None => self.strings(at, item),
        }
    }

    /// A path that must be absolute.
    pub(super) fn abs_path(&mut self, at: &At, item: &Item) -> Option<PathBuf> {
        let s = self.string(at, item)?;
        self.check(at, v::parse_absolute_path(&s))
    }

    pub(super) fn check<T>(&mut self, at: &At, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(t) => Some(t),
            Err(message) => {
                self.error(at, message);
                None
            }
        }
    }

    /// A duration written as a humantime string, or (for gitlab-runner's keys) as an integer
    /// number of seconds.
    pub(super) fn duration(
        &mut self,
        at: &At,
        item: &Item,
        integer_seconds: bool,
    ) -> Option<Duration> {
        if integer_seconds && let Some(n) = item.as_integer() {
            if n < 0 {
                self.error(at, format!("{n} seconds: must not be negative"));
                return None;
            }
            return Some(Duration::from_secs(n.unsigned_abs()));
        }
        let Some(s) = item.as_str() else {
            let expected = if integer_seconds {
                "a number of seconds or a duration string like \"30s\""
            } else {
                "a duration string like \"60s\""
            };
            self.type_error(at, expected, item);
            return None;
        };
        self.check(at, v::parse_duration(s))
    }

    pub(super) fn positive_duration(
        &mut self,
        at: &At,
        item: &Item,
        secs: bool,
    ) -> Option<Duration> {
        let d = self.duration(at, item, secs)?;
        if d.is_zero() {
            self.error(at, "must be more than zero");
            return None;
        }
        Some(d)
    }

    /// A size: a Docker-style string (`"4g"`) or an integer number of bytes.
    pub(super) fn size(&mut self, at: &At, item: &Item) -> Option<u64> {
        if let Some(n) = item.as_integer() {
            return self.check(
                at,
                u64::try_from(n).map_err(|_| format!("{n}: a size must not be negative")),
            );
        }
        let Some(s) = item.as_str() else {
            self.type_error(at, "a size like \"512m\" or \"4g\"", item);
            return None;
        };
        self.check(at, v::parse_size(s))
    }

    /// CPUs: gitlab-runner writes them as a string (`"1.5"`); a number is accepted too.
    pub(super) fn cpus(&mut self, at: &At, item: &Item) -> Option<f64> {
        if let Some(s) = item.as_str() {
            return self.check(at, v::parse_cpus(s));
        }
        let number = item
            .as_float()
            .or_else(|| item.as_integer().map(|n| n as f64));
        match number {
            Some(n) => self.check(at, v::check_cpus(n)),
            None => {
                self.type_error(at, "a number of CPUs like \"2\"", item);
                None
            }
        }
    }

    pub(super) fn mtu(&mut self, at: &At, item: &Item) -> Option<u32> {
        let n = self.integer(at, item, 0, 65535)?;
        if n != 0 && n < 576 {
            self.error(
                at,
                format!("{n} is too small for an MTU (0 = the host's, else 576 to 65535)"),
            );
            return None;
        }
        Some(n as u32)
    }
}
