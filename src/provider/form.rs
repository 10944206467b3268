//! The `application/x-www-form-urlencoded` codec of RFC 6749 bodies and
//! `client_secret_basic` credentials.

/// Percent-encodes one component the `application/x-www-form-urlencoded`
/// way: `A-Z a-z 0-9 * - . _` stay, a space becomes `+`, every other byte
/// of the UTF-8 text becomes `%XX`.
pub fn form_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Encodes name/value pairs as an `application/x-www-form-urlencoded` body.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_component(k), form_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Decodes an `application/x-www-form-urlencoded` body into name/value
/// pairs, in order. Lenient, for mock servers and tests: a malformed `%`
/// escape is kept as it is, and bytes that are not UTF-8 become U+FFFD.
pub fn form_decode(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_unescape(k), form_unescape(v))
        })
        .collect()
}

/// Decodes one form component: `+` is a space, `%XX` a byte; a malformed
/// `%` escape is kept as it is, and bytes that are not UTF-8 become U+FFFD.
pub fn form_unescape(s: &str) -> String {
    unescape(s, true)
}

/// Decodes one URL query value (RFC 3986): `%XX` is a byte and `+` stays a
/// plus sign — credential ids may hold one, and a client that sends a
/// cursor back as it got it must get the same page boundary. Malformed
/// escapes and bytes that are not UTF-8 as in [`form_unescape`].
pub fn percent_unescape(s: &str) -> String {
    unescape(s, false)
}

fn unescape(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) if plus_is_space => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query value keeps `+`; a form value reads it as a space.
    #[test]
    fn plus_is_a_space_only_in_forms() {
        assert_eq!(form_unescape("a+b%2B%40"), "a b+@");
        assert_eq!(percent_unescape("a+b%2B%40"), "a+b+@");
        assert_eq!(percent_unescape("%zz%4"), "%zz%4");
    }

    #[test]
    fn form_encoding() {
        let table = [
            ("abc-._*XYZ019", "abc-._*XYZ019"),
            ("a b", "a+b"),
            ("a+b&c=d/e?f#g%", "a%2Bb%26c%3Dd%2Fe%3Ff%23g%25"),
            ("é~", "%C3%A9%7E"),
            ("", ""),
        ];
        for (raw, enc) in table {
            assert_eq!(form_component(raw), enc, "{raw:?}");
            let body = form_encode(&[("k y", raw)]);
            assert_eq!(form_decode(&body), vec![("k y".to_owned(), raw.to_owned())]);
        }
        assert_eq!(
            form_decode("a=%ZZ&b=%4&c&=x&&d=%41%42"),
            [("a", "%ZZ"), ("b", "%4"), ("c", ""), ("", "x"), ("d", "AB")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }
}
