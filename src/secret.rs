//! Secrets that must never reach a log line.
//!
//! Runner tokens, job tokens, masked variables and private keys live in [`Secret`]. Its `Debug`
//! and `Display` print `[MASKED]`, so a `{:?}` on a struct that holds one cannot leak it; the
//! value is reached only through [`Secret::expose`], which makes every use greppable.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A string whose value is redacted in `Debug` and `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself. Call this only at the edge where the secret is used (an HTTP header, a
    /// file written with mode 0600), never to format a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[MASKED]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[MASKED]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // GitLab sends `null` for some token-like fields in odd cases; treat it as empty.
        Ok(Secret(
            Option::<String>::deserialize(d)?.unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("glrt-abcdef");
        assert_eq!(format!("{s:?}"), "[MASKED]");
        assert_eq!(format!("{s}"), "[MASKED]");
        assert_eq!(s.expose(), "glrt-abcdef");
    }
}
