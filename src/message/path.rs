//! Request path normalisation: the one path that is routed, keyed and forwarded.

use std::borrow::Cow;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `..` segments (raw or `%2e%2e`) are refused rather than resolved.
    #[error("path contains a '..' segment")]
    DotDot,
    /// `%` not followed by two hex digits.
    #[error("path contains an invalid percent-encoding")]
    BadEscape,
    /// Not an origin-form path.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// `%2F` or `%5C`, or a raw `\\`: origins disagree on whether these separate segments (WSGI
    /// decodes `%2F` to `/`), so routing, keying and forwarding could not agree on one path.
    #[error("path contains an encoded slash or a backslash")]
    EncodedSlash,
}

/// RFC 3986 unreserved characters: never escaped, in paths and in keys.
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 normalisation: decode unreserved escapes, upper-case the others, drop `.` segments;
/// `..` segments are an error. The result is both keyed and forwarded.
///
/// # Errors
/// [`PathError`] for `..`, bad escapes, or a path not starting with `/`.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // One pass over the bytes: this runs for every request, and the substring search for
    // `/.` alone cost more than the rest of the check.
    let bytes = raw.as_bytes();
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::EncodedSlash),
            b'%' => needs_work = true,
            // `raw` starts with `/`, so a `.` is never first.
            b'.' if bytes[i - 1] == b'/' => needs_work = true,
            _ => {}
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(raw));
    }
    // Work on bytes: only ASCII escapes are decoded, so multi-byte UTF-8 characters pass
    // through untouched and the result stays valid UTF-8.
    let mut buf: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h * 16 + l;
            if v == b'/' || v == b'\\' {
                return Err(PathError::EncodedSlash);
            }
            if is_unreserved(v) {
                buf.push(v);
            } else {
                buf.extend_from_slice(format!("%{v:02X}").as_bytes());
            }
            i += 3;
        } else {
            buf.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(buf).map_err(|_| PathError::BadEscape)?;
    let mut out = String::with_capacity(decoded.len());
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            ".." => return Err(PathError::DotDot),
            "." => {
                if n == last {
                    out.push('/');
                }
            }
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_normalisation() {
        assert_eq!(normalize_path("/a/b/").unwrap(), "/a/b/");
        assert_eq!(normalize_path("/%61/%3f/").unwrap(), "/a/%3F/");
        assert_eq!(normalize_path("/a/./b").unwrap(), "/a/b");
        assert_eq!(normalize_path("/a/.").unwrap(), "/a/");
        assert_eq!(normalize_path("/a/%2e%2e/b"), Err(PathError::DotDot));
        assert_eq!(normalize_path("/../etc"), Err(PathError::DotDot));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/.well-known/a.b").unwrap(), "/.well-known/a.b");
        // A raw backslash anywhere, also after an escape that already asked for the slow path.
        assert_eq!(normalize_path("/%41/b\\c"), Err(PathError::EncodedSlash));
        assert_eq!(normalize_path("/a\\"), Err(PathError::EncodedSlash));
    }

    /// Found by fuzzing: multi-byte characters were re-encoded byte by byte.
    #[test]
    fn non_ascii_paths_survive_normalisation() {
        assert_eq!(normalize_path("/café/%41").unwrap(), "/café/A");
        assert_eq!(normalize_path("/naïve%20x").unwrap(), "/naïve%20x");
        let once = normalize_path("/.Ύ\0").unwrap().into_owned();
        assert_eq!(normalize_path(&once).unwrap(), once, "idempotent");
    }

    #[test]
    fn encoded_slashes_are_refused() {
        for p in ["/lectures%2F5/", "/a%2fb", "/a%5Cb", "/a\\b"] {
            assert_eq!(normalize_path(p), Err(PathError::EncodedSlash), "{p}");
        }
    }
}
