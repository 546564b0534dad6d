//! Streaming masking of secrets in the job log.
//!
//! Output arrives in arbitrary chunks, so a secret may be split across two writes. The
//! [`Masker`] holds back the shortest tail that could still grow into a secret (never longer than
//! the longest pattern − 1 bytes) and decides about it when more bytes arrive or on
//! [`Masker::finish`]. The result is the same for every chunking of the same text.

use base64::Engine;

/// What GitLab puts in place of a masked value.
pub const MASK: &[u8] = b"[MASKED]";

/// Values shorter than this are not masked, as in GitLab (which refuses to mark them masked).
pub const MIN_MASKED_LEN: usize = 8;

/// Token prefixes masked by default: the token that follows the prefix becomes `[MASKED]`.
pub const DEFAULT_TOKEN_PREFIXES: &[&str] = &[
    "glpat-",
    "gloas-",
    "gldt-",
    "glrt-",
    "glrtr-",
    "glcbt-",
    "glptt-",
    "glft-",
    "glimt-",
    "glagent-",
    "glsoat-",
    "glffct-",
    "gltok-",
    "_gitlab_session=",
    "GR1348941",
];

/// Characters that continue a token after its prefix.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'=' | b'-')
}

#[derive(Debug, Clone)]
enum Pattern {
    /// The exact bytes are replaced.
    Value(Vec<u8>),
    /// The prefix is kept, the token run after it replaced.
    Prefix(Vec<u8>),
}

impl Pattern {
    fn bytes(&self) -> &[u8] {
        match self {
            Pattern::Value(b) | Pattern::Prefix(b) => b,
        }
    }
}

/// A streaming masker. Not `Debug`: it holds secret values.
pub struct Masker {
    /// Longest first, so that of two secrets starting at one place the longer wins.
    patterns: Vec<Pattern>,
    /// Bytes not yet decided about.
    pending: Vec<u8>,
    /// Inside the token after a prefix: token characters are swallowed.
    in_token: bool,
}

impl Masker {
    /// A masker for these secret values and token prefixes. Values shorter than
    /// [`MIN_MASKED_LEN`] are ignored; the base64 forms of each value at all three alignments
    /// (see [`base64_forms`]) and its URL-encoded form are masked too.
    pub fn new<S: AsRef<str>, P: AsRef<str>>(values: &[S], prefixes: &[P]) -> Self {
        let mut patterns: Vec<Pattern> = Vec::new();
        let add_value = |v: Vec<u8>, patterns: &mut Vec<Pattern>| {
            if v.len() >= MIN_MASKED_LEN && !patterns.iter().any(|p| p.bytes() == v.as_slice()) {
                patterns.push(Pattern::Value(v));
            }
        };
        for value in values {
            let value = value.as_ref();
            if value.len() < MIN_MASKED_LEN {
                continue;
            }
            add_value(value.as_bytes().to_vec(), &mut patterns);
            // The whole encoding (with its padding) first: a value encoded on its own is then
            // masked to the last character.
            add_value(
                base64::engine::general_purpose::STANDARD
                    .encode(value)
                    .into_bytes(),
                &mut patterns,
            );
            for form in base64_forms(value.as_bytes()) {
                add_value(form.into_bytes(), &mut patterns);
            }
            add_value(url_encode(value).into_bytes(), &mut patterns);
        }
        for prefix in prefixes {
            let p = prefix.as_ref().as_bytes().to_vec();
            if !p.is_empty() && !patterns.iter().any(|q| q.bytes() == p.as_slice()) {
                patterns.push(Pattern::Prefix(p));
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.bytes().len()));
        Masker {
            patterns,
            pending: Vec::new(),
            in_token: false,
        }
    }

    /// Masks `data`, returning the bytes that are now safe to show. Some bytes may be held back.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        self.process(false)
    }

    /// Releases everything held back (end of a stage or of the job).
    pub fn finish(&mut self) -> Vec<u8> {
        let out = self.process(true);
        self.in_token = false;
        out
    }

    /// Bytes currently held back (for tests of the bound).
    pub fn held_back(&self) -> usize {
        self.pending.len()
    }

    fn process(&mut self, last: bool) -> Vec<u8> {
        let buf = std::mem::take(&mut self.pending);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'outer: while i < buf.len() {
            if self.in_token {
                if is_token_char(buf[i]) {
                    i += 1;
                    continue;
                }
                self.in_token = false;
            }
            let rest = &buf[i..];
            for pattern in &self.patterns {
                let p = pattern.bytes();
                match pattern {
                    Pattern::Value(_) => {
                        if rest.starts_with(p) {
                            out.extend_from_slice(MASK);
                            i += p.len();
                            continue 'outer;
                        }
                        if !last && rest.len() < p.len() && p.starts_with(rest) {
                            // Could still become this secret: decide when more bytes arrive.
                            self.pending = rest.to_vec();
                            return out;
                        }
                    }
                    Pattern::Prefix(_) => {
                        if rest.len() > p.len() && rest.starts_with(p) {
                            if is_token_char(rest[p.len()]) {
                                out.extend_from_slice(p);
                                out.extend_from_slice(MASK);
                                i += p.len();
                                self.in_token = true;
                                continue 'outer;
                            }
                        } else if !last && rest.len() <= p.len() && p.starts_with(rest) {
                            self.pending = rest.to_vec();
                            return out;
                        }
                    }
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        out
    }
}

/// The base64 text a value shows wherever it sits in encoded input. Base64 encodes 3-byte
/// groups, so a value that starts at byte offset 1 or 2 of its group (the job token after
/// `gitlab-ci-token:` in a Basic auth header) encodes to characters that differ from its own
/// encoding. For each offset `k` this is the run of characters that depend on the value's
/// bytes alone: the first characters mixed with the `k` bytes before it (2 for `k = 1`, 3 for
/// `k = 2`) and the last one mixed with the bytes after it (when the value ends inside a group)
/// are left out. Those edges carry at most 4 bits of the value each.
pub fn base64_forms(value: &[u8]) -> [String; 3] {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    [0usize, 1, 2].map(|k| {
        let mut input = vec![0u8; k];
        input.extend_from_slice(value);
        let encoded = STANDARD_NO_PAD.encode(&input);
        let front = [0, 2, 3][k];
        let back = usize::from(input.len() % 3 != 0);
        encoded
            .get(front..encoded.len().saturating_sub(back))
            .unwrap_or_default()
            .to_string()
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters (as a URL query would).
fn url_encode(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_all(m: &mut Masker, chunks: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for c in chunks {
            out.extend(m.push(c));
        }
        out.extend(m.finish());
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn masks_whole_value_and_keeps_short_ones() {
        let mut m = Masker::new(&["supersecret1", "short"], &[] as &[&str]);
        let s = mask_all(&mut m, &[b"a supersecret1 and short\n"]);
        assert_eq!(s, "a [MASKED] and short\n");
    }

    #[test]
    fn masks_token_after_prefix() {
        let mut m = Masker::new(&[] as &[&str], DEFAULT_TOKEN_PREFIXES);
        let s = mask_all(
            &mut m,
            &[b"token glpat-abc_DEF.12 end glrt-", b"xyz\nglcbt- alone"],
        );
        assert_eq!(s, "token glpat-[MASKED] end glrt-[MASKED]\nglcbt- alone");
    }

    #[test]
    fn masks_encoded_forms() {
        let mut m = Masker::new(&["p@ss word/1"], &[] as &[&str]);
        let b64 = base64::engine::general_purpose::STANDARD.encode("p@ss word/1");
        let text = format!("{b64} p%40ss%20word%2F1");
        let s = mask_all(&mut m, &[text.as_bytes()]);
        assert_eq!(s, "[MASKED] [MASKED]");
    }

    /// The token inside `base64("gitlab-ci-token:" + token)` (offset 16, so 1 byte into a
    /// group) and a secret at offset 2 are masked, whole and split into random chunks, and the
    /// text around them decodes to the same prefix as before.
    #[test]
    fn all_three_base64_alignments() {
        use base64::engine::general_purpose::STANDARD;
        let token = "glcbt-64_Zq9xYwVuTsRqPoNm";
        let secret = "s3cr3t-value-XYZ";
        let mut rng = XorShift(0x0ba5_e64a_11c0_ffee);
        for (lead, value) in [
            ("", secret),
            ("a", secret),
            ("ab", secret),
            ("gitlab-ci-token:", token),
            ("x", token),
            ("xy", token),
        ] {
            for tail in ["", "!", "!?", "!?#"] {
                let encoded = STANDARD.encode(format!("{lead}{value}{tail}"));
                let line = format!("Authorization: Basic {encoded}\n");
                // No prefix list: only the value patterns may catch it.
                let mut m = Masker::new(&[token, secret], &[] as &[&str]);
                let whole = mask_all(&mut m, &[line.as_bytes()]);
                assert!(whole.contains("[MASKED]"), "{lead:?}+{tail:?}: {whole}");
                let bytes = line.as_bytes();
                let mut chunks = Vec::new();
                let mut at = 0;
                while at < bytes.len() {
                    let end = (at + 1 + rng.below(5)).min(bytes.len());
                    chunks.push(&bytes[at..end]);
                    at = end;
                }
                let mut m = Masker::new(&[token, secret], &[] as &[&str]);
                assert_eq!(mask_all(&mut m, &chunks), whole, "chunking changed it");
                // The characters that encode the value's bytes alone are gone.
                let k = lead.len() % 3;
                let forms = base64_forms(value.as_bytes());
                assert!(
                    encoded.contains(&forms[k]),
                    "{lead:?}: form {k} not in {encoded}"
                );
                assert!(!whole.contains(&forms[k]), "{lead:?}+{tail:?}: {whole}");
            }
        }
    }

    #[test]
    fn secret_split_across_chunks() {
        let mut m = Masker::new(&["0123456789abcdef"], &[] as &[&str]);
        let s = mask_all(&mut m, &[b"xx0123456", b"789ab", b"cdefyy"]);
        assert_eq!(s, "xx[MASKED]yy");
    }

    #[test]
    fn held_back_tail_is_bounded_and_released_on_finish() {
        let mut m = Masker::new(&["0123456789abcdef"], &[] as &[&str]);
        let out = m.push(b"hello 0123456789abcde");
        assert_eq!(out, b"hello ");
        assert!(m.held_back() < "0123456789abcdef".len());
        assert_eq!(m.finish(), b"0123456789abcde");
    }

    /// A small deterministic generator so the property loop is reproducible.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_chunkings_never_leak() {
        let secrets = ["s3cr3t-value-XYZ", "another_secret_42", "s3cr3t-value"];
        let token = "glcbt-Zq9_abcdefghijklmnop";
        let mut rng = XorShift(0x5eed_1234_abcd_9876);
        for round in 0..500 {
            // Build a text with secrets at random places, sometimes back to back.
            let mut text = String::new();
            for _ in 0..(5 + rng.below(10)) {
                match rng.below(5) {
                    0 => text.push_str(secrets[rng.below(secrets.len())]),
                    1 => text.push_str(token),
                    2 => text.push('\n'),
                    3 => text.push_str("s3cr3t-"),
                    _ => text.push_str("plain text "),
                }
            }
            let mut m = Masker::new(&secrets, DEFAULT_TOKEN_PREFIXES);
            let whole = mask_all(&mut m, &[text.as_bytes()]);
            let bytes = text.as_bytes();
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let n = 1 + rng.below(7);
                let end = (at + n).min(bytes.len());
                chunks.push(&bytes[at..end]);
                at = end;
            }
            let mut m = Masker::new(&secrets, DEFAULT_TOKEN_PREFIXES);
            let chunked = mask_all(&mut m, &chunks);
            assert_eq!(chunked, whole, "round {round}: chunking changed the result");
            for s in secrets {
                assert!(
                    !chunked.contains(s),
                    "round {round}: leaked {s} in {chunked:?}"
                );
            }
            assert!(!chunked.contains("Zq9_abc"), "round {round}: leaked token");
        }
    }
}
