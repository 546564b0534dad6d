//! Job variables: the payload's list plus what the runner adds, `$VAR` expansion, and file
//! variables.

use crate::gitlab::types::JobVariable;

/// The runner's version, as `CI_RUNNER_VERSION`.
pub const RUNNER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// An ordered variable list; later entries override earlier ones with the same key.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    list: Vec<JobVariable>,
}

impl Variables {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a plain (public, unmasked) variable.
    pub fn push(&mut self, key: &str, value: impl Into<String>) {
        self.list.push(JobVariable {
            key: key.to_string(),
            value: value.into(),
            public: true,
            ..Default::default()
        });
    }

    /// Appends a variable as it is.
    pub fn push_var(&mut self, var: JobVariable) {
        self.list.push(var);
    }

    /// Appends many.
    pub fn extend(&mut self, vars: impl IntoIterator<Item = JobVariable>) {
        self.list.extend(vars);
    }

    /// The effective value of `key` (the last entry wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.list
            .iter()
            .rev()
            .find(|v| v.key == key)
            .map(|v| v.value.as_str())
    }

    /// The effective entry of `key`.
    pub fn get_var(&self, key: &str) -> Option<&JobVariable> {
        self.list.iter().rev().find(|v| v.key == key)
    }

    /// The effective variables, one per key, in first-appearance order.
    pub fn effective(&self) -> Vec<&JobVariable> {
        let mut out: Vec<&JobVariable> = Vec::new();
        for v in &self.list {
            if let Some(slot) = out.iter_mut().find(|o| o.key == v.key) {
                *slot = v;
            } else {
                out.push(v);
            }
        }
        out
    }

    /// Values of masked variables, for the log masker.
    pub fn masked_values(&self) -> Vec<String> {
        self.list
            .iter()
            .filter(|v| v.masked && !v.value.is_empty())
            .map(|v| v.value.clone())
            .collect()
    }

    /// Expands `$VAR` and `${VAR}` in `s` with these variables; unknown names become empty
    /// (as gitlab-runner does), `$$` is a literal `$`. Values of `raw` variables are inserted as
    /// they are, never expanded further (no value is expanded recursively).
    pub fn expand(&self, s: &str) -> String {
        expand_with(s, |k| self.get(k).map(str::to_string))
    }
}

/// Expands `$VAR`/`${VAR}` with a lookup function.
pub fn expand_with(s: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            // Copy one UTF-8 char.
            let ch_len = s[i..].chars().next().map(char::len_utf8).unwrap_or(1);
            out.push_str(&s[i..i + ch_len]);
            i += ch_len;
            continue;
        }
        if i + 1 < bytes.len() && bytes[i + 1] == b'$' {
            out.push('$');
            i += 2;
            continue;
        }
        if i + 1 < bytes.len()
            && bytes[i + 1] == b'{'
            && let Some(end) = s[i + 2..].find('}')
        {
            let name = &s[i + 2..i + 2 + end];
            out.push_str(&lookup(name).unwrap_or_default());
            i += 3 + end;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if end == start {
            out.push('$');
            i += 1;
            continue;
        }
        out.push_str(&lookup(&s[start..end]).unwrap_or_default());
        i = end;
    }
    out
}

/// `<os>/<arch>` as gitlab-runner reports it (`linux/amd64`).
pub fn executable_arch() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// The first 9 characters of a runner token after its `glrt-` prefix (gitlab-runner's short
/// token); empty when there is no token.
pub fn short_token(token: &str) -> String {
    let t = token.strip_prefix("glrt-").unwrap_or(token);
    t.chars().take(9).collect()
}

/// True when `key` is a valid shell variable name (others cannot be exported).
pub fn is_valid_name(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_wins_and_expand() {
        let mut v = Variables::new();
        v.push("A", "1");
        v.push("B", "x$A");
        v.push("A", "2");
        assert_eq!(v.get("A"), Some("2"));
        assert_eq!(v.expand("img:$A-${A}-$NOPE-$$-$"), "img:2-2--$-$");
        // No recursive expansion: B's `$A` stays literal.
        assert_eq!(v.expand("$B"), "x$A");
        assert_eq!(v.effective().len(), 2);
    }

    #[test]
    fn short_token_and_names() {
        assert_eq!(short_token("glrt-abcdefghijkl"), "abcdefghi");
        assert!(is_valid_name("CI_JOB_ID"));
        assert!(!is_valid_name("1A"));
        assert!(!is_valid_name("A-B"));
    }
}
