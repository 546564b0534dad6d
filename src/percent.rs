//! Percent-decoding of URL parts (`%XX`), shared by the job's git credentials and the inner
//! policy's reading of request paths.

/// `%XX` escapes (two hex digits) decoded; a `%` not followed by two hex digits is kept as it
/// is. Bytes that are not UTF-8 after decoding become U+FFFD.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| char::from(*c).to_digit(16)),
                b.get(i + 2).and_then(|c| char::from(*c).to_digit(16)),
            )
            && let Ok(v) = u8::try_from(h * 16 + l)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn escapes_are_decoded_and_the_rest_kept() {
        assert_eq!(decode("a%2Fb%3a"), "a/b:");
        assert_eq!(decode("p%40ss%25"), "p@ss%");
        // not two hex digits (a sign is no digit): kept as written
        assert_eq!(decode("%zz%2%+f%"), "%zz%2%+f%");
        assert_eq!(decode("%ff"), "\u{fffd}");
    }
}
