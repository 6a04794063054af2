//! File names on FAT: the 8.3 short name every entry has, the VFAT long name that carries what
//! 8.3 cannot say, and the volume label.
//!
//! A name that already is a valid upper-case 8.3 name (`EFI`, `BOOTX64.EFI`) is stored as its
//! short name alone, which is what firmware written against plain FAT expects to find. Every
//! other name gets long-name entries plus a generated short name that is unique in its
//! directory (`LOADER~1.CON`), following the basis-name rules of Microsoft's FAT specification.

use crate::tree::path;
use std::collections::{HashMap, HashSet};

/// Longest long name VFAT stores, in UTF-16 code units.
const MAX_LONG_NAME_UNITS: usize = 255;
/// UTF-16 code units one long-name directory entry holds.
pub(super) const UNITS_PER_LONG_ENTRY: usize = 13;
/// Characters besides `A-Z` and `0-9` that a short name may contain. Space is legal too, but
/// only as padding in practice: tools disagree about embedded spaces, so names with spaces get a
/// long name.
const SHORT_NAME_PUNCTUATION: &[u8] = b"!#$%&'()-@^_`{}~";

/// How one directory entry is named on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FatName {
    /// 8 base bytes then 3 extension bytes, space padded, without the dot.
    pub short: [u8; 11],
    /// The UTF-16 long name, present when the short name cannot carry the name by itself.
    pub long: Option<Vec<u16>>,
}

impl FatName {
    /// Number of 32-byte directory entries this name occupies.
    pub fn slots(&self) -> usize {
        1 + self.long.as_ref().map_or(0, |long| long.len().div_ceil(UNITS_PER_LONG_ENTRY))
    }
}

/// Why a name cannot be stored on FAT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum NameProblem {
    #[error("the name is not valid UTF-8, and FAT long names are Unicode")]
    NotUtf8,
    #[error("the name contains {0:?}, which FAT forbids in file names")]
    ForbiddenChar(char),
    #[error(
        "the name ends with {0:?}, which Windows and the Linux vfat driver strip when looking \
         names up, so the file could not be opened"
    )]
    TrailingDotOrSpace(char),
    #[error("the name is {0} UTF-16 code units long; FAT long names hold at most 255")]
    TooLong(usize),
    #[error(
        "the name differs only in case from `{0}` in the same directory, and FAT compares \
         names case-insensitively"
    )]
    CaseCollision(String),
    #[error("no unique short name is left for it in its directory")]
    ShortNamesExhausted,
}

/// A name that cannot be stored, with the path (inside the filesystem) it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{path}`: {problem}")]
pub(super) struct NameError {
    pub path: String,
    pub problem: NameProblem,
}

/// Names every entry of the directory at `dir` (a path inside the tree, empty for the root).
/// `names` come in the tree's sorted order; the result is in the same order.
pub(super) fn name_directory(dir: &[u8], names: &[&[u8]]) -> Result<Vec<FatName>, NameError> {
    let fail = |name: &[u8], problem| NameError { path: path::display(&join(dir, name)), problem };
    let mut valid = Vec::with_capacity(names.len());
    let mut folded: HashMap<String, &str> = HashMap::with_capacity(names.len());
    for raw in names {
        let name = check_long_name(raw).map_err(|problem| fail(raw, problem))?;
        if let Some(first) = folded.insert(fold_case(name), name) {
            return Err(fail(raw, NameProblem::CaseCollision(first.to_string())));
        }
        valid.push(name);
    }

    // Every name whose upper-case form is a valid 8.3 name claims that short name before any
    // `~N` name is generated. Drivers match a looked-up name against short names too, so a
    // generated `LONGFI~1.TXT` must never equal another entry's name (`longfi~1.txt`), and
    // claiming first keeps that true whatever the sort order.
    let claimed: Vec<Option<[u8; 11]>> = valid.iter().map(|n| exact_short_name(&fold_case(n))).collect();
    let mut used: HashSet<[u8; 11]> = claimed.iter().flatten().copied().collect();
    valid
        .iter()
        .zip(claimed)
        .map(|(name, claimed)| {
            let long = || Some(name.encode_utf16().collect());
            match claimed {
                // Case-insensitively distinct names claim distinct short names.
                Some(short) if exact_short_name(name).is_some() => Ok(FatName { short, long: None }),
                Some(short) => Ok(FatName { short, long: long() }),
                None => match generate_short_name(name, &mut used) {
                    Some(short) => Ok(FatName { short, long: long() }),
                    None => Err(fail(name.as_bytes(), NameProblem::ShortNamesExhausted)),
                },
            }
        })
        .collect()
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// The name as a long name, if FAT can store it.
fn check_long_name(raw: &[u8]) -> Result<&str, NameProblem> {
    let name = std::str::from_utf8(raw).map_err(|_| NameProblem::NotUtf8)?;
    if let Some(c) = name.chars().find(|c| c.is_ascii_control() || "\"*/:<>?\\|".contains(*c)) {
        return Err(NameProblem::ForbiddenChar(c));
    }
    if let Some(c) = name.chars().last().filter(|c| matches!(c, '.' | ' ')) {
        return Err(NameProblem::TrailingDotOrSpace(c));
    }
    let units = name.encode_utf16().count();
    if units > MAX_LONG_NAME_UNITS {
        return Err(NameProblem::TooLong(units));
    }
    Ok(name)
}

/// Case folding as FAT implementations compare names: per character, simple upper-casing (one
/// character to one, like Windows' up-case table; `ß` stays `ß`).
fn fold_case(name: &str) -> String {
    name.chars().map(upper_simple).collect()
}

fn upper_simple(c: char) -> char {
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

fn is_short_name_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || SHORT_NAME_PUNCTUATION.contains(&b)
}

/// `name` as an 11-byte short name if it already is a valid upper-case 8.3 name.
pub(super) fn exact_short_name(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.split_once('.') {
        Some((base, ext)) => (base.as_bytes(), ext.as_bytes()),
        None => (name.as_bytes(), &b""[..]),
    };
    let base_ok = (1..=8).contains(&base.len()) && base.iter().all(|&b| is_short_name_byte(b));
    // A dot must be followed by an extension: `FOO.` is not the short name `FOO`.
    let ext_ok = if name.contains('.') {
        (1..=3).contains(&ext.len()) && ext.iter().all(|&b| is_short_name_byte(b))
    } else {
        true
    };
    if !(base_ok && ext_ok) {
        return None;
    }
    let mut short = [b' '; 11];
    short[..base.len()].copy_from_slice(base);
    short[8..8 + ext.len()].copy_from_slice(ext);
    Some(short)
}

/// A short name for `name` not in `used` (and adds it there): the basis name with a numeric
/// tail (`~1`, `~2`, ...).
fn generate_short_name(name: &str, used: &mut HashSet<[u8; 11]>) -> Option<[u8; 11]> {
    let (base, ext) = basis_name(name);
    // Windows switches to hashed tails after `~4`; plain counting stays readable and is just as
    // unique, and a directory (at most 65,536 entries) can never use up six digits.
    for n in 1..=999_999u32 {
        let tail = format!("~{n}");
        let keep = base.len().min(8 - tail.len());
        let mut short = [b' '; 11];
        short[..keep].copy_from_slice(&base[..keep]);
        short[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        short[8..8 + ext.len()].copy_from_slice(&ext);
        if used.insert(short) {
            return Some(short);
        }
    }
    None
}

/// The basis of a generated short name: upper case, characters 8.3 cannot hold replaced by `_`,
/// spaces and leading dots dropped, the base cut to 8 bytes and the part after the last dot to 3.
fn basis_name(name: &str) -> (Vec<u8>, Vec<u8>) {
    let mapped: Vec<u8> = name
        .chars()
        .filter(|&c| c != ' ')
        .map(|c| match upper_simple(c) {
            '.' => b'.',
            u if u.is_ascii() && is_short_name_byte(u as u8) => u as u8,
            _ => b'_',
        })
        .collect();
    let start = mapped.iter().position(|&b| b != b'.').unwrap_or(mapped.len());
    let mapped = &mapped[start..];
    let (base, ext) = match mapped.iter().rposition(|&b| b == b'.') {
        Some(dot) => (&mapped[..dot], &mapped[dot + 1..]),
        None => (mapped, &b""[..]),
    };
    let mut base: Vec<u8> = base.iter().copied().filter(|&b| b != b'.').take(8).collect();
    if base.is_empty() {
        // Only names of dots and spaces map to nothing, and those are refused earlier; a short
        // name still needs a first byte.
        base.push(b'_');
    }
    (base, ext.iter().copied().take(3).collect())
}

/// The checksum of a short name that each of its long-name entries carries (a rotate-right-
/// and-add over the 11 bytes), so a driver can tell stale long-name entries from current ones.
pub(super) fn short_name_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Why a volume label cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum LabelProblem {
    #[error("it is {0} characters long; a FAT volume label holds at most 11")]
    TooLong(usize),
    #[error("it contains {0:?}; a FAT volume label holds ASCII letters, digits, spaces and !#$%&'()-@^_`{{}}~")]
    BadChar(char),
    #[error("it starts with a space, which FAT treats as an empty label")]
    LeadingSpace,
}

/// The 11-byte, space-padded, upper-case form of a volume label; `None` for an empty label.
pub(super) fn volume_label(label: &str) -> Result<Option<[u8; 11]>, LabelProblem> {
    if label.is_empty() {
        return Ok(None);
    }
    let count = label.chars().count();
    if count > 11 {
        return Err(LabelProblem::TooLong(count));
    }
    if let Some(c) = label.chars().find(|&c| {
        let u = c.to_ascii_uppercase();
        !(u == ' ' || (u.is_ascii() && is_short_name_byte(u as u8)))
    }) {
        return Err(LabelProblem::BadChar(c));
    }
    if label.starts_with(' ') {
        return Err(LabelProblem::LeadingSpace);
    }
    let mut out = [b' '; 11];
    for (slot, b) in out.iter_mut().zip(label.bytes()) {
        *slot = b.to_ascii_uppercase();
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Result<Vec<FatName>, NameError> {
        let raw: Vec<&[u8]> = list.iter().map(|n| n.as_bytes()).collect();
        name_directory(b"dir", &raw)
    }

    fn short(name: &FatName) -> String {
        let base = String::from_utf8_lossy(&name.short[..8]).trim_end().to_string();
        let ext = String::from_utf8_lossy(&name.short[8..]).trim_end().to_string();
        if ext.is_empty() { base } else { format!("{base}.{ext}") }
    }

    #[test]
    fn exact_short_names_get_no_long_name() {
        let got = names(&["BOOTX64.EFI", "EFI", "A-B_C~1.X", "12345678.123"]).unwrap();
        assert!(got.iter().all(|n| n.long.is_none()));
        assert_eq!(&got[0].short, b"BOOTX64 EFI");
        assert_eq!(&got[1].short, b"EFI        ");
        assert_eq!(short(&got[3]), "12345678.123");
    }

    #[test]
    fn other_names_get_long_names_and_basis_short_names() {
        let list = [
            "loader.conf",
            "foo.txt",
            "MixedCase Name.txt",
            ".bashrc",
            "my.file.tar.gz",
            "café.txt",
            "a+b=c[1].txt",
            "EFI.",
        ];
        // `EFI.` ends in a dot: refused; test the others.
        let got = names(&list[..7]).unwrap();
        let shorts: Vec<String> = got.iter().map(short).collect();
        assert_eq!(
            shorts,
            ["LOADER~1.CON", "FOO.TXT", "MIXEDC~1.TXT", "BASHRC~1", "MYFILE~1.GZ", "CAF_~1.TXT", "A_B_C_~1.TXT"]
        );
        assert!(got.iter().all(|n| n.long.is_some()));
        assert_eq!(got[5].long.as_deref(), Some(&"café.txt".encode_utf16().collect::<Vec<_>>()[..]));
    }

    #[test]
    fn numeric_tails_avoid_each_other_and_exact_names() {
        // `LONGFI~1.TXT` sorts after the names that would generate it, yet keeps its name.
        let got = names(&["longfilename-a.txt", "longfilename-b.txt", "LONGFI~1.TXT", "lowercas", "LOWERC~1"]).unwrap();
        let shorts: Vec<String> = got.iter().map(short).collect();
        assert_eq!(shorts, ["LONGFI~2.TXT", "LONGFI~3.TXT", "LONGFI~1.TXT", "LOWERCAS", "LOWERC~1"]);
        assert_eq!(got[3].long.as_ref().map(Vec::len), Some(8));

        // A long name that reads like a generated short name keeps that short name for itself.
        let got = names(&["longfilename-a.txt", "longfi~1.txt"]).unwrap();
        let shorts: Vec<String> = got.iter().map(short).collect();
        assert_eq!(shorts, ["LONGFI~2.TXT", "LONGFI~1.TXT"]);
        assert!(got.iter().all(|n| n.long.is_some()));
    }

    #[test]
    fn tails_grow_into_the_base() {
        let list: Vec<String> = (0..12).map(|i| format!("same-prefix-{i:02}")).collect();
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        let got = names(&refs).unwrap();
        assert_eq!(short(&got[0]), "SAME-P~1");
        assert_eq!(short(&got[9]), "SAME-~10");
        let unique: HashSet<[u8; 11]> = got.iter().map(|n| n.short).collect();
        assert_eq!(unique.len(), got.len());
    }

    #[test]
    fn forbidden_names_name_the_path() {
        for (name, problem) in [
            ("a:b", NameProblem::ForbiddenChar(':')),
            ("a*b", NameProblem::ForbiddenChar('*')),
            ("a\\b", NameProblem::ForbiddenChar('\\')),
            ("q?", NameProblem::ForbiddenChar('?')),
            ("tab\there", NameProblem::ForbiddenChar('\t')),
            ("x\"y", NameProblem::ForbiddenChar('"')),
            ("pipe|", NameProblem::ForbiddenChar('|')),
            ("<>", NameProblem::ForbiddenChar('<')),
            ("trailing.", NameProblem::TrailingDotOrSpace('.')),
            ("trailing ", NameProblem::TrailingDotOrSpace(' ')),
        ] {
            let err = names(&[name]).unwrap_err();
            assert_eq!(err.problem, problem, "{name}");
            // Paths in messages show control characters escaped.
            assert_eq!(err.path, format!("dir/{}", crate::printable::escape(name)));
        }
        let err = name_directory(b"", &[b"bad\xff"]).unwrap_err();
        assert_eq!(err.problem, NameProblem::NotUtf8);
        assert!(err.to_string().starts_with("`bad\\xff`: "), "{err}");
    }

    #[test]
    fn long_name_limit_is_in_utf16_units() {
        let ok = "a".repeat(255);
        assert!(names(&[&ok]).is_ok());
        let err = names(&[&"a".repeat(256)]).unwrap_err();
        assert_eq!(err.problem, NameProblem::TooLong(256));
        // 128 astral characters are 256 UTF-16 units.
        let err = names(&["😀".repeat(128).as_str()]).unwrap_err();
        assert_eq!(err.problem, NameProblem::TooLong(256));
    }

    #[test]
    fn case_collisions_are_refused() {
        let err = names(&["Readme.txt", "README.TXT"]).unwrap_err();
        assert_eq!(err.problem, NameProblem::CaseCollision("Readme.txt".to_string()));
        assert_eq!(err.path, "dir/README.TXT");
        let err = names(&["café", "CAFÉ"]).unwrap_err();
        assert!(matches!(err.problem, NameProblem::CaseCollision(_)));
        // Full case mapping would fold these together; FAT implementations do not.
        assert!(names(&["STRASSE", "straße"]).is_ok());
    }

    #[test]
    fn slot_counts() {
        let got = names(&["EFI", "a", &"x".repeat(13), &"x".repeat(14)]).unwrap();
        let slots: Vec<usize> = got.iter().map(FatName::slots).collect();
        assert_eq!(slots, [1, 2, 2, 3]);
    }

    #[test]
    fn checksum_matches_reference() {
        // Reference values computed with the C loop of Microsoft's FAT specification.
        fn reference(name: &[u8; 11]) -> u8 {
            let mut sum: u8 = 0;
            for &b in name {
                sum = (if sum & 1 != 0 { 0x80u8 } else { 0 }).wrapping_add(sum >> 1).wrapping_add(b);
            }
            sum
        }
        for name in [b"LOADER~1CON", b"BOOTX64 EFI", b"           ", b"\xff\x00abc~1 XYZ"] {
            assert_eq!(short_name_checksum(name), reference(name));
        }
    }

    #[test]
    fn labels() {
        assert_eq!(volume_label("esp"), Ok(Some(*b"ESP        ")));
        assert_eq!(volume_label("EFI SYSTEM"), Ok(Some(*b"EFI SYSTEM ")));
        assert_eq!(volume_label(""), Ok(None));
        assert_eq!(volume_label("TWELVE CHARS"), Err(LabelProblem::TooLong(12)));
        assert_eq!(volume_label("A.B"), Err(LabelProblem::BadChar('.')));
        assert_eq!(volume_label("é"), Err(LabelProblem::BadChar('é')));
        assert_eq!(volume_label(" X"), Err(LabelProblem::LeadingSpace));
    }
}
