//! Splitting text at an ASCII byte. Messages and session descriptions are
//! cut at `:`, ` `, `@` and line ends many times each; `str::split_once`
//! with a char pattern calls `memchr` and then `memcmp` for each candidate,
//! which was half the cost of reading a session description.

/// `text` split at its first `separator` (an ASCII byte), without it.
pub(crate) fn split_at_byte(text: &str, separator: u8) -> Option<(&str, &str)> {
    let at = memchr::memchr(separator, text.as_bytes())?;
    Some((&text[..at], &text[at + 1..]))
}

/// `text` split at its last `separator` (an ASCII byte), without it.
pub(crate) fn rsplit_at_byte(text: &str, separator: u8) -> Option<(&str, &str)> {
    let at = memchr::memrchr(separator, text.as_bytes())?;
    Some((&text[..at], &text[at + 1..]))
}

/// The pieces of `text` between `separator`s (an ASCII byte), as
/// `str::split` gives them.
pub(crate) fn fields(text: &str, separator: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let piece = rest?;
        match split_at_byte(piece, separator) {
            Some((field, after)) => {
                rest = Some(after);
                Some(field)
            }
            None => rest.take(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_as_str_does() {
        for text in ["", "a", ":", "a:b", "a::b:", "é:ü:", ":::"] {
            assert_eq!(split_at_byte(text, b':'), text.split_once(':'), "{text:?}");
            assert_eq!(
                rsplit_at_byte(text, b':'),
                text.rsplit_once(':'),
                "{text:?}"
            );
            assert_eq!(
                fields(text, b':').collect::<Vec<_>>(),
                text.split(':').collect::<Vec<_>>(),
                "{text:?}"
            );
        }
    }
}
