//! Percent-encoding for URL path segments and query values (RFC 3986):
//! everything but the unreserved characters is encoded, byte by byte of
//! the UTF-8 text, so names and keys can hold any character.

use std::fmt::Write;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn push_encoded(out: &mut String, b: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "%{b:02X}");
}

/// Encodes `s` as one query value (or key).
pub fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            push_encoded(&mut out, b);
        }
    }
    out
}

/// Encodes `s` as one path segment. `.` and `..` are encoded too, as a
/// literal dot segment would be resolved away by the URL rules.
pub fn path_segment(s: &str) -> String {
    if s == "." || s == ".." {
        return "%2E".repeat(s.len());
    }
    query_value(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_and_non_ascii() {
        assert_eq!(query_value("abc-XYZ_0.9~"), "abc-XYZ_0.9~");
        assert_eq!(
            query_value("a b/c?d&e=f#g%"),
            "a%20b%2Fc%3Fd%26e%3Df%23g%25"
        );
        assert_eq!(query_value("é"), "%C3%A9");
        assert_eq!(query_value("+"), "%2B");
        assert_eq!(query_value(""), "");
    }

    #[test]
    fn dot_segments() {
        assert_eq!(path_segment("."), "%2E");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("a.b"), "a.b");
        assert_eq!(path_segment("a/../b"), "a%2F..%2Fb");
    }
}
