//! Quoting for POSIX shells, used for guest commands the harness builds and for logging argv.

/// Quotes `s` so a POSIX shell reads it back as one word with the same bytes.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain { s.to_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_bare() {
        assert_eq!(quote("nginx.service"), "nginx.service");
        assert_eq!(quote("-drive"), "-drive");
    }

    #[test]
    fn everything_else_is_single_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
    }

    #[test]
    fn a_shell_reads_the_quoted_word_back() {
        let tricky = "it's a \"test\" with $HOME, `ticks` and \\ backslash\nnewline";
        let out =
            std::process::Command::new("sh").args(["-c", &format!("printf %s {}", quote(tricky))]).output().unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);
    }
}
