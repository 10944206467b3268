//! The console's form bodies and query strings, read strictly:
//! `application/x-www-form-urlencoded`, each field at most once, only the
//! fields the form has, valid `%XX` escapes and UTF-8. Anything else is a
//! 400 that says what was wrong, never quoting a value (a sign-in form
//! carries a key).

/// A decoded form: name/value pairs in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

/// Why a form or query was refused (the message of a 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

/// Decodes one component: `+` is a space, `%XX` a byte; a broken escape
/// or bytes that are not UTF-8 are refused.
fn component(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(())?;
                let s = std::str::from_utf8(hex).map_err(|_| ())?;
                out.push(u8::from_str_radix(s, 16).map_err(|_| ())?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ())
}

fn shown(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
        .take(32)
        .collect()
}

impl Form {
    /// Parses `raw` (a body or a query string) allowing only `fields`.
    pub fn parse(raw: &[u8], fields: &[&str]) -> Result<Form, Malformed> {
        let raw =
            std::str::from_utf8(raw).map_err(|_| Malformed("the form is not UTF-8 text".into()))?;
        let mut pairs: Vec<(String, String)> = Vec::new();
        for piece in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            let name = component(name)
                .map_err(|()| Malformed("a field name is not properly %-encoded".into()))?;
            if !fields.contains(&name.as_str()) {
                return Err(Malformed(format!(
                    "unknown field {:?}; this form takes {}",
                    shown(&name),
                    fields.join(", ")
                )));
            }
            let value = component(value)
                .map_err(|()| Malformed(format!("field {name:?} is not properly %-encoded")))?;
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(Malformed(format!("field {name:?} is given twice")));
            }
            pairs.push((name, value));
        }
        Ok(Form { pairs })
    }

    /// A field's value, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A field's value when sent and not blank.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_strict() {
        let f = Form::parse(
            b"csrf=a%2Bb&seconds=60&key=x+y",
            &["csrf", "seconds", "key"],
        )
        .expect("ok");
        assert_eq!(f.get("csrf"), Some("a+b"));
        assert_eq!(f.get("key"), Some("x y"));
        assert_eq!(f.get("nope"), None);
        let f = Form::parse(b"state=&pool=p", &["state", "pool"]).expect("ok");
        assert_eq!(f.non_empty("state"), None);
        assert_eq!(f.non_empty("pool"), Some("p"));
        for (raw, words) in [
            (&b"csrf=1&csrf=2"[..], "twice"),
            (b"other=1", "unknown field \"other\""),
            (b"csrf=%zz", "%-encoded"),
            (b"csrf=%4", "%-encoded"),
            (b"csrf=%ff", "%-encoded"),
            (b"csrf=\xff", "UTF-8"),
            (b"%=1", "%-encoded"),
        ] {
            let e = Form::parse(raw, &["csrf"]).expect_err("refused");
            assert!(e.0.contains(words), "{raw:?}: {}", e.0);
        }
        let e = Form::parse(b"key=SECRETVALUE&key=2", &["key"]).expect_err("refused");
        assert!(!e.0.contains("SECRETVALUE"));
        assert_eq!(Form::parse(b"", &[]).expect("empty"), Form::default());
    }
}
