//! Paths inside inputs: normalization and the rules that keep them inside the tree.

use super::Problem;

/// Normalizes a path from an input (tar entry, link target): strips `./` prefixes and empty or
/// `.` components. Refuses absolute paths, `..` components and NUL bytes: nothing in an input
/// may name a place outside the tree, whatever it would resolve to.
pub fn normalize(raw: &[u8]) -> Result<Vec<u8>, Problem> {
    if raw.contains(&0) {
        return Err(Problem::Nul);
    }
    if raw.first() == Some(&b'/') {
        return Err(Problem::Absolute);
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(Problem::DotDot),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Ok(out)
}

/// Components of a normalized path (empty for the root).
pub fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect()
}

/// A path for messages: UTF-8 where it is, `\xNN` where it is not, control characters
/// escaped (an entry name must not reach the terminal as an escape sequence).
pub fn display(path: &[u8]) -> String {
    crate::printable::escape_bytes(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b".").unwrap(), b"");
    }

    #[test]
    fn refuses_escapes() {
        assert_eq!(normalize(b"../etc/passwd"), Err(Problem::DotDot));
        assert_eq!(normalize(b"a/../../b"), Err(Problem::DotDot));
        assert_eq!(normalize(b"/etc/passwd"), Err(Problem::Absolute));
        assert_eq!(normalize(b"a\0b"), Err(Problem::Nul));
    }
}
