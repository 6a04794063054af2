//! `WWW-Authenticate` challenges (RFC 7235), as registries send them with a 401:
//! `Bearer realm="http://127.0.0.1:5001/token",service="local-registry",scope="repository:a/b:pull"`
//! or `Basic realm="Registry Realm"`.

use std::collections::BTreeMap;

/// One challenge: its scheme (lowercase) and parameters (names lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses one header value, which may hold several challenges separated by commas.
pub fn parse(header: &str) -> Result<Vec<Challenge>, String> {
    let mut p = Parser { s: header.as_bytes(), i: 0 };
    let mut out = Vec::new();
    loop {
        p.skip(|b| b == b',' || is_space(b));
        if p.done() {
            break;
        }
        let scheme =
            p.token().ok_or_else(|| format!("`{header}`: expected an authentication scheme at byte {}", p.i))?;
        let mut challenge = Challenge { scheme: scheme.to_ascii_lowercase(), params: BTreeMap::new() };
        loop {
            p.skip(is_space);
            let start = p.i;
            let Some(name) = p.token() else { break };
            p.skip(is_space);
            if p.peek() != Some(b'=') {
                // A token not followed by `=` is the next challenge's scheme.
                p.i = start;
                break;
            }
            p.i += 1;
            p.skip(is_space);
            let value = if p.peek() == Some(b'"') {
                p.quoted().ok_or_else(|| format!("`{header}`: unterminated quoted string for `{name}`"))?
            } else {
                // token68 (`Basic abc==`) ends in `=` padding: the name was the whole credential.
                match p.token() {
                    Some(v) => v,
                    None => {
                        p.skip(|b| b == b'=');
                        break;
                    }
                }
            };
            challenge.params.insert(name.to_ascii_lowercase(), value);
            p.skip(is_space);
            if p.peek() == Some(b',') {
                p.i += 1;
            } else {
                break;
            }
        }
        out.push(challenge);
    }
    if out.is_empty() {
        return Err(format!("`{header}` holds no challenge"));
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&b)
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        self.skip(is_tchar);
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// A quoted string with backslash escapes; the cursor is on the opening quote.
    fn quoted(&mut self) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
                b'\\' => {
                    self.i += 1;
                    out.push(self.peek()?);
                    self.i += 1;
                }
                b => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn bearer_challenge_of_a_registry() {
        let c = parse(
            r#"Bearer realm="http://127.0.0.1:5001/token",service="local-registry",scope="repository:pulumi/service:pull""#,
        )
        .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(
            params(&c[0]),
            [
                ("realm", "http://127.0.0.1:5001/token"),
                ("scope", "repository:pulumi/service:pull"),
                ("service", "local-registry")
            ]
        );
    }

    #[test]
    fn spacing_case_tokens_and_escapes() {
        let c =
            parse(r#"BEARER  Realm = "http://127.0.0.1:9/t" , Service=local ,error="insufficient \"scope\"""#).unwrap();
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("http://127.0.0.1:9/t"));
        assert_eq!(c[0].param("service"), Some("local"));
        assert_eq!(c[0].param("error"), Some("insufficient \"scope\""));
    }

    #[test]
    fn several_challenges_in_one_header() {
        let c = parse(r#"Basic realm="Registry Realm", Bearer realm="http://x/token",service="s""#).unwrap();
        let schemes: Vec<&str> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer"]);
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(params(&c[1]), [("realm", "http://x/token"), ("service", "s")]);
        let bare = parse("Basic").unwrap();
        assert_eq!(bare[0].scheme, "basic");
        assert!(bare[0].params.is_empty());
        let token68 = parse("Negotiate abc==, Basic realm=x").unwrap();
        assert_eq!(token68.len(), 2);
        assert_eq!(token68[1].param("realm"), Some("x"));
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert!(parse("").is_err());
        assert!(parse(r#"Bearer realm="unterminated"#).is_err());
        assert!(parse("=x").is_err());
    }
}
