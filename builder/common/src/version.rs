//! Appliance versions: which strings are versions, and which of two is newer.
//!
//! An appliance's version names its root partitions (`<name>_<version>`, the Discoverable
//! Partitions Specification's scheme), its UKI (`EFI/Linux/<name>_<version>.efi`, which
//! systemd-boot sorts to pick the newest entry) and its update bundle, and the updater refuses a
//! bundle that is not newer than the running version. So the order is systemd's: the UAPI
//! Version Format Specification (UAPI.10, `strverscmp_improved()` in systemd,
//! `systemd-analyze compare-versions`), which systemd-boot and systemd-sysupdate use too. The
//! updater and the boot loader then agree on which version is newer.
//!
//! A valid airlock version starts with a digit and holds only characters UAPI.10 compares
//! (`0-9 a-z A-Z . ~ ^ -`): no `_` (the separator of `<name>_<version>`) and no `+` (boot
//! counting's `+LEFT-DONE` suffix on the UKI's file name), at most [`MAX_LEN`] characters.

use std::cmp::Ordering;
use std::fmt;

/// The longest version: `<name>_<version>_verity` must fit a GPT name (36 UTF-16 units) with a
/// short appliance name, and a file name anywhere.
pub const MAX_LEN: usize = 24;

/// A checked version string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// `text` as a version, or what is wrong with it.
    pub fn parse(text: &str) -> Result<Version, String> {
        if let Some(why) = problem(text) {
            return Err(format!("`{}` is not a valid version: {why}", text.escape_debug()));
        }
        Ok(Version(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// UAPI.10's order. Two different strings can be equal versions (`1.01` and `1.1`); then the
/// strings decide, so that the order is total and consistent with `Eq`.
impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0).then_with(|| self.0.cmp(&other.0))
    }
}

/// Whether `a` and `b` are the same version in UAPI.10's order (`1.01` is `1.1`).
pub fn same(a: &Version, b: &Version) -> bool {
    compare(&a.0, &b.0) == Ordering::Equal
}

fn problem(text: &str) -> Option<&'static str> {
    if text.is_empty() {
        return Some("it is empty");
    }
    if text.len() > MAX_LEN {
        return Some("it is longer than 24 characters");
    }
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return Some("it must start with a digit");
    }
    if text.contains('_') {
        return Some("`_` separates the appliance's name from its version in partition and file names");
    }
    if text.contains('+') {
        return Some("`+` starts systemd-boot's boot counter in a UKI's file name");
    }
    if !text.bytes().all(valid_char) {
        return Some("only letters, digits and . ~ ^ - are compared as a version (UAPI.10)");
    }
    Some("it must end with a letter or digit").filter(|_| !text.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn valid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// UAPI.10's comparison (systemd's `strverscmp_improved`) of any two strings: characters it does
/// not compare are skipped; `~` sorts before everything, even the end (`1~rc1` < `1`); then the
/// end (`1` < `1-1`); `-` before `^` before `.`; digit runs compare as numbers and are newer
/// than letter runs; letter runs compare as text, the longer newer.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    if a.is_empty() || b.is_empty() {
        return a.cmp(b);
    }
    loop {
        a = skip_invalid(a);
        b = skip_invalid(b);
        for sep in [b'~', b'-', b'^', b'.'] {
            if sep == b'-' && (a.is_empty() || b.is_empty()) {
                // Except for `~`, the string with more left is newer.
                return a.cmp(b);
            }
            let (sa, sb) = (a.first() == Some(&sep), b.first() == Some(&sep));
            if sa || sb {
                // The string with the separator is older (for `~`, the pre-release).
                let r = (!sa).cmp(&!sb);
                if r != Ordering::Equal {
                    return r;
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
        let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let letters = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_alphabetic()).count();
        let starts_digit = |s: &[u8]| s.first().is_some_and(u8::is_ascii_digit);
        let (na, nb);
        if starts_digit(a) || starts_digit(b) {
            (na, nb) = (digits(a), digits(b));
            // A number is newer than no number.
            let r = (na != 0).cmp(&(nb != 0));
            if r != Ordering::Equal {
                return r;
            }
            let (ta, tb) = (trim_zeros(&a[..na]), trim_zeros(&b[..nb]));
            let r = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb));
            if r != Ordering::Equal {
                return r;
            }
        } else {
            (na, nb) = (letters(a), letters(b));
            let common = na.min(nb);
            let r = a[..common].cmp(&b[..common]).then_with(|| na.cmp(&nb));
            if r != Ordering::Equal {
                return r;
            }
        }
        a = &a[na..];
        b = &b[nb..];
    }
}

fn skip_invalid(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| !valid_char(**c)).count();
    &s[n..]
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| **c == b'0').count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// UAPI.10's own examples, each older than the next, and the pairs of
    /// `systemd-analyze compare-versions`' documentation.
    #[test]
    fn the_specifications_examples_are_in_order() {
        let ordered = [
            "122.1",
            "123~rc1-1",
            "123",
            "123-a",
            "123-a.1",
            "123-1",
            "123-1.1",
            "123^post1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124-1",
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare(w[0], w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
            assert_eq!(compare(w[1], w[0]), Ordering::Greater, "{} > {}", w[1], w[0]);
        }
        for (a, b) in [("0.1.0", "0.2.0"), ("1.9", "1.10"), ("2~rc1", "2"), ("1.3.3", "1_2_3"), ("1.0", "1.0.1")] {
            assert_eq!(compare(a, b), Ordering::Less, "{a} < {b}");
        }
        for (a, b) in [("1.01", "1.1"), ("00123", "123"), ("1.0", "1.0")] {
            assert_eq!(compare(a, b), Ordering::Equal, "{a} = {b}");
        }
    }

    #[test]
    fn versions_order_and_equal_versions_are_the_same() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(v("0.1.0") < v("0.2.0") && v("0.2.0") < v("0.10.0"));
        assert!(v("1.0~rc1") < v("1.0"));
        assert!(same(&v("1.01"), &v("1.1")) && v("1.01") != v("1.1"));
        let mut list = [v("0.10.0"), v("0.2.0"), v("0.2.0~rc2"), v("0.1.0")];
        list.sort();
        assert_eq!(list.iter().map(Version::as_str).collect::<Vec<_>>(), ["0.1.0", "0.2.0~rc2", "0.2.0", "0.10.0"]);
    }

    #[test]
    fn what_is_not_a_version_says_why() {
        for (text, why) in [
            ("", "empty"),
            ("v1.0", "start with a digit"),
            ("1.0_beta", "`_` separates"),
            ("1.0+3", "boot counter"),
            ("1.0 beta", "only letters, digits"),
            ("1.0/2", "only letters, digits"),
            ("1.0-", "end with a letter or digit"),
            ("1.2.3.4.5.6.7.8.9.10.11.12", "longer than 24"),
        ] {
            let err = Version::parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        for ok in ["0.1.0", "2026.12.6", "3.0.0-fixture", "1.0~rc1", "123^post1"] {
            assert!(Version::parse(ok).is_ok(), "{ok}");
        }
    }
}
