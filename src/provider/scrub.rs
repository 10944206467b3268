//! Making upstream text safe to quote: known secrets, token-field values
//! and anything that looks like a token become `***`, and excerpts are
//! flattened and cut short.

/// Whether a run of token characters looks like a credential: long, with
/// both letters and digits (JWTs, opaque tokens, keys); anything that
/// starts like a JWT (`eyJ`, base64 of `{"`), even cut short; or a long
/// run of the base64url alphabet alone.
fn looks_like_token(run: &str) -> bool {
    let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    (run.len() >= 24
        && run.bytes().any(|b| b.is_ascii_digit())
        && run.bytes().any(|b| b.is_ascii_alphabetic()))
        || (run.len() >= 8
            && run
                .split(['.', '/', '=', '+', '~'])
                .any(|p| p.starts_with("eyJ")))
        || (run.len() >= 32 && run.bytes().all(b64url))
}

/// The names whose values are always secret, wherever they appear.
const TOKEN_FIELDS: [&str; 3] = ["access_token", "refresh_token", "id_token"];

/// Replaces the value after each `access_token`, `refresh_token` or
/// `id_token` (as a JSON member, `"name": "value"`, or a form or header
/// pair, `name=value`) with `***`, whatever it looks like: the value may be
/// short or cut off.
fn redact_token_fields(text: &str) -> String {
    // ASCII lower-casing keeps every byte offset.
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let skip = |mut j: usize, set: &[u8]| {
        while j < bytes.len() && set.contains(&bytes[j]) {
            j += 1;
        }
        j
    };
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // The next place of each name at or after `i`, found again only once
    // passed (None: no more), so a text naming one field many times costs
    // one pass per name, not one per mention.
    let mut next: Vec<Option<usize>> = TOKEN_FIELDS.iter().map(|f| lower.find(f)).collect();
    loop {
        for (k, f) in TOKEN_FIELDS.iter().enumerate() {
            if next[k].is_some_and(|at| at < i) {
                next[k] = lower[i..].find(f).map(|at| i + at);
            }
        }
        let Some((at, len)) = next
            .iter()
            .zip(TOKEN_FIELDS)
            .filter_map(|(at, f)| at.map(|at| (at, f.len())))
            .min()
        else {
            break;
        };
        let name_end = at + len;
        let j = skip(name_end, b"\"'\\ \t");
        if j >= bytes.len() || !matches!(bytes[j], b':' | b'=') {
            out.push_str(&text[i..name_end]);
            i = name_end;
            continue;
        }
        let start = skip(j + 1, b" \t\"'\\");
        let mut end = start;
        // Every delimiter is ASCII, so `end` stays on a char boundary.
        while end < bytes.len() && !b"\"'\\,;&}]) \t\r\n<>".contains(&bytes[end]) {
            end += 1;
        }
        out.push_str(&text[i..start]);
        if end > start {
            out.push_str("***");
        }
        i = end;
    }
    out.push_str(&text[i..]);
    out
}

/// The shortest piece of a known secret [`scrub`] finds anywhere in other
/// text. Upstreams quote tokens cut short ("token abcd1234… is unknown");
/// twelve characters of a random token are far more than anything else
/// shares with it by chance, and still a useful start for a guess.
pub const MIN_SECRET_PIECE: usize = 12;

/// The shortest run of token characters [`scrub`] replaces for being made
/// of a known secret's characters in order (every 8 of them in a row
/// appear so in the secret): a token quoted in groups ("abcd1234 efgh5678",
/// split by spaces, lines or markup) goes group by group.
pub const MIN_SECRET_RUN: usize = 8;

/// Whether `c` can be part of a token (base64, base64url, JWTs, URLs'
/// path characters).
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.~+/=".contains(c)
}

/// `s` cut into segments: each run of token characters, and each other
/// character alone.
fn segments(s: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut run_start = None;
    for (i, c) in s.char_indices() {
        match (is_token_char(c), run_start) {
            (true, None) => run_start = Some(i),
            (true, Some(_)) => {}
            (false, start) => {
                if let Some(start) = start {
                    out.push(start..i);
                }
                run_start = None;
                out.push(i..i + c.len_utf8());
            }
        }
    }
    if let Some(start) = run_start {
        out.push(start..s.len());
    }
    out
}

/// The bytes of `text` that belong to a known secret: each whole secret
/// (at least 4 bytes long); each piece of one at least
/// [`MIN_SECRET_PIECE`] bytes long, wherever it lies; and each run of
/// token characters at least [`MIN_SECRET_RUN`] long that is made of a
/// secret's characters in order. Pieces and runs are compared with ASCII
/// case folded (a proxy may upper-case a message). All of it is worked out
/// on `text` as it came, so one secret inside another hides neither.
/// Linear in the lengths: windows are looked up in sets. `segments` are
/// `text`'s ([`segments`]; ASCII case folding keeps them).
fn secret_marks(text: &str, segments: &[std::ops::Range<usize>], secrets: &[&str]) -> Vec<bool> {
    let mut marked = vec![false; text.len()];
    let mut mark = |r: std::ops::Range<usize>| marked[r].iter_mut().for_each(|m| *m = true);
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        for (at, _) in text.match_indices(secret) {
            mark(at..at + secret.len());
        }
    }
    let folded: Vec<String> = secrets.iter().map(|s| s.to_ascii_lowercase()).collect();
    let windows = |w: usize| -> std::collections::HashSet<&[u8]> {
        folded
            .iter()
            .flat_map(|s| s.as_bytes().windows(w))
            .collect()
    };
    let (pieces, runs) = (windows(MIN_SECRET_PIECE), windows(MIN_SECRET_RUN));
    if runs.is_empty() {
        return marked;
    }
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    for (i, w) in bytes.windows(MIN_SECRET_PIECE).enumerate() {
        if pieces.contains(w) {
            mark(i..i + MIN_SECRET_PIECE);
        }
    }
    // A segment that long is a run of token characters (any other
    // segment is one character).
    for seg in segments {
        let run = &bytes[seg.clone()];
        if run.len() >= MIN_SECRET_RUN && run.windows(MIN_SECRET_RUN).all(|w| runs.contains(w)) {
            mark(seg.clone());
        }
    }
    marked
}

/// Replaces every known secret (at least 4 characters long), every piece
/// or run of one (see `secret_marks`; the whole run of token characters
/// it is in goes with it), the values of `access_token`, `refresh_token`
/// and `id_token`, and every token-looking run of
/// `A-Z a-z 0-9 - _ . ~ + / =` in `text` with `***`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let segs = segments(text);
    let marks = secret_marks(text, &segs, secrets);
    // A segment holding a mark goes; one `***` stands for neighbours that
    // all do (a secret with spaces in it).
    let mut s = String::with_capacity(text.len());
    let mut last_marked = false;
    for seg in segs {
        let marked = marks[seg.clone()].iter().any(|m| *m);
        match marked {
            true if last_marked => {}
            true => s.push_str("***"),
            false => s.push_str(&text[seg]),
        }
        last_marked = marked;
    }
    let s = redact_token_fields(&s);
    let mut out = String::with_capacity(s.len());
    for seg in segments(&s) {
        let part = &s[seg];
        out.push_str(if looks_like_token(part) { "***" } else { part });
    }
    out
}

/// Collapses whitespace and control characters to single spaces (and, with
/// `ascii_only`, anything outside printable ASCII to `?`), then truncates to
/// `max` characters with a `...` marker.
pub(super) fn clean(text: &str, max: usize, ascii_only: bool) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = true;
    for c in text.chars() {
        let c = if c.is_whitespace() || c.is_control() {
            ' '
        } else if ascii_only && !c.is_ascii_graphic() {
            '?'
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        if count == max {
            out.push_str("...");
            return out.trim_end().to_owned();
        }
        last_space = c == ' ';
        out.push(c);
        count += 1;
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::testkit::*;

    #[test]
    fn token_fields_are_redacted() {
        let table = [
            (
                r#"{"access_token":"abc","x":1}"#,
                r#"{"access_token":"***","x":1}"#,
            ),
            (
                r#"{"Refresh_Token" : "abc"}"#,
                r#"{"Refresh_Token" : "***"}"#,
            ),
            ("a=1&id_token=abc&b=2", "a=1&id_token=***&b=2"),
            (r#"{"access_token":"cut off"#, r#"{"access_token":"*** off"#),
            ("access_token", "access_token"),
            ("access_token=", "access_token="),
            ("the access_token is wrong", "the access_token is wrong"),
            (
                "access_tokenrefresh_token=zz",
                "access_tokenrefresh_token=***",
            ),
            ("é access_token: ü", "é access_token: ***"),
        ];
        for (text, want) in table {
            assert_eq!(redact_token_fields(text), want, "{text}");
        }
    }

    #[test]
    fn scrubbing() {
        let jwtish = jwt(r#"{"sub":"123456"}"#);
        let table = [
            ("plain words stay", "plain words stay"),
            ("token rt_old_secret here", "token *** here"),
            (
                "see https://platform.openai.com/docs/guides/error-codes",
                "see https://platform.openai.com/docs/guides/error-codes",
            ),
            ("id 9d1c250a-e61b-44d9-88ed-5944d1962f5e.", "id ***"),
            ("short abc123 stays", "short abc123 stays"),
        ];
        for (text, want) in table {
            assert_eq!(scrub(text, &[OLD_REFRESH]), want, "{text}");
        }
        assert_eq!(scrub(&format!("bearer {jwtish}!"), &[]), "bearer ***!");
        assert_eq!(
            scrub("abc", &["a"]),
            "abc",
            "secrets under 4 characters are not replaced"
        );
    }

    #[test]
    fn pieces_of_known_secrets_are_scrubbed() {
        // Short, so not token-looking by themselves: only knowing the
        // secret finds their pieces.
        let rt = "rt-Kq9-zzzzzzzzzzzzzzzzzzzz-tail";
        let sig = "abcdefghijklmnopqrstuvwxyzABCDEFGH_sig";
        let table = [
            // A cut-short prefix, with the ellipsis upstreams add.
            (
                format!("token {}\u{2026} is unknown", &rt[..20]),
                "token ***\u{2026} is unknown",
            ),
            // A suffix inside a longer run: the whole run goes.
            (
                format!("sig x{} expired", &sig[sig.len() - 12..]),
                "sig *** expired",
            ),
            // A piece in markup.
            (format!("<b>{}</b>", &rt[4..16]), "<b>***</b>"),
            // Eleven characters, a run of the secret's: gone.
            (format!("id {}", &rt[..11]), "id ***"),
            // Seven: under the run length, kept.
            (format!("id {} x", &rt[..7]), "id rt-Kq9- x"),
            // Eight in another case: gone.
            (format!("id {}", rt[..8].to_uppercase()), "id ***"),
            // Whole, as before.
            (format!("{rt} refused"), "*** refused"),
        ];
        for (text, want) in table {
            assert_eq!(scrub(&text, &[rt, sig]), want, "{text}");
        }
        // A secret with spaces: its piece goes where it lies.
        let spaced = "correct horse battery staple";
        assert_eq!(
            scrub("said: horse battery st. ok", &[spaced]),
            "said:*** ok"
        );
        assert_eq!(scrub("nothing here", &[]), "nothing here");
    }
}
