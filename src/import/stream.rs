//! Import files of any size, read as a stream: a JSON array, JSON Lines
//! (or any whitespace-separated sequence of objects), or one object.
//!
//! Records are handed over one at a time as they are read, each checked
//! on its own (its position named in its error), so memory holds one
//! record, never the file. A single object is read exactly as
//! [`super::parse_import`] reads it (a Codex `auth.json`, say); a record
//! larger than [`MAX_RECORD`] is refused without being parsed.
//!
//! The stream is cut into records by [`Framer`], a scan of the bytes that
//! follows only strings and brackets, and each record is then parsed, and
//! so checked, by serde_json from its bytes: serde_json reading the stream
//! itself, a byte at a time through `io::Read`, took a third of an
//! import's time.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};

use serde::de::IgnoredAny;
use serde_json::Value;

use super::error::{ImportError, Result};
use super::{parse_record, ImportOptions};
use crate::credential::NewCredential;

/// The largest record accepted (the HTTP route's bound for a whole body).
pub const MAX_RECORD: usize = 1024 * 1024;

/// Reads `reader` as a stream of records and hands `each` every record's
/// outcome with its zero-based position: the credential, or why that
/// record is refused (its error wrapped in [`ImportError::InRecord`] unless
/// the input is a single object). A repeated id is refused at its second
/// appearance — also across the inputs of one command, which pass the same
/// `seen` set. `Err` only when the input as a whole is unreadable: not
/// JSON, no records, a record over the bound, or a top-level value that is
/// no object or array.
pub fn stream_import(
    reader: impl Read,
    opts: &ImportOptions,
    seen: &mut HashSet<String>,
    mut each: impl FnMut(usize, Result<NewCredential>),
) -> Result<()> {
    walk(reader, opts, &mut |index, raw, many| {
        let parsed = parse_raw(raw, opts).and_then(|c| match seen.insert(c.id.clone()) {
            true => Ok(c),
            false => Err(ImportError::DuplicateId(c.id)),
        });
        each(
            index,
            parsed.map_err(|e| match many {
                true => ImportError::InRecord {
                    index,
                    source: Box::new(e),
                },
                false => e,
            }),
        );
    })
}

/// Reads `reader` to its end as [`stream_import`] would, without reading
/// any record's fields: `Err` exactly when `stream_import` would fail the
/// input as a whole (each record's own refusals are left to it); `Ok` with
/// how many records the input holds. The cheap first look of a command
/// that must not import from a truncated or malformed file.
pub fn check_stream(reader: impl Read, opts: &ImportOptions) -> Result<usize> {
    let mut count = 0;
    walk(reader, opts, &mut |_, _, _| count += 1)?;
    Ok(count)
}

/// Room beside a record for the separators around it: a record is read
/// (and held) up to `MAX_RECORD + SEPARATOR_SLACK` bytes before the input
/// is refused as a whole; up to that, one over [`MAX_RECORD`] is refused
/// on its own.
const SEPARATOR_SLACK: usize = 64 * 1024;

/// Bytes of the input read ahead of the framer.
const READ_AHEAD: usize = 16 * 1024;

/// Cuts `reader` into records, checks that each is JSON and hands its text
/// to `record` with its position and whether the input holds several; the
/// input-wide rules of [`stream_import`] (JSON throughout, the bound,
/// `--id` with one record only) are kept here.
fn walk(
    reader: impl Read,
    opts: &ImportOptions,
    record: &mut dyn FnMut(usize, &str, bool),
) -> Result<()> {
    let mut f = Framer {
        r: BufReader::with_capacity(READ_AHEAD, reader),
        buf: Vec::new(),
    };
    skip_bom_and_space(&mut f.r)?;
    let first = f.peek()?;
    // With `--id` the input must hold one record: the first is kept aside
    // and the rest only counted, so that more than one is refused whole.
    let mut kept: Option<String> = None;
    let mut handle = |index: usize, raw: &str, many: bool| match &opts.id {
        None => record(index, raw, many),
        Some(_) if index == 0 => kept = Some(raw.to_owned()),
        Some(_) => {}
    };
    // serde_json's line and column count within the record: say which.
    let at = |n: usize, e: ImportError| match e {
        ImportError::NotJson(m) => ImportError::NotJson(format!("record {}: {m}", n + 1)),
        other => other,
    };
    let (count, many) = match first {
        Some(b'[') => {
            f.r.consume(1);
            let mut n = 0;
            f.skip_space()?;
            if f.peek()? == Some(b']') {
                f.r.consume(1);
            } else {
                loop {
                    f.frame(n).map_err(|e| at(n, e))?;
                    handle(n, f.checked().map_err(|e| at(n, e))?, true);
                    n += 1;
                    f.skip_space()?;
                    match f.peek()? {
                        Some(b',') => {
                            f.r.consume(1);
                            f.skip_space()?;
                        }
                        Some(b']') => {
                            f.r.consume(1);
                            break;
                        }
                        Some(_) => return Err(not_json("expected `,` or `]` after a record")),
                        None => return Err(not_json("the input ends inside the array")),
                    }
                }
            }
            f.skip_space()?;
            if f.peek()?.is_some() {
                return Err(not_json("trailing characters after the array"));
            }
            (n, true)
        }
        Some(b'{') => {
            // One object is a file of one record (a Codex auth.json, say);
            // more are JSON Lines, each named by its position.
            let mut pending: Option<String> = None;
            let mut n = 0;
            while f.peek()?.is_some() {
                f.frame(n).map_err(|e| at(n, e))?;
                let raw = f.checked().map_err(|e| at(n, e))?;
                if let Some(prev) = pending.take() {
                    handle(n - 1, &prev, true);
                }
                if n == 0 {
                    pending = Some(raw.to_owned());
                } else {
                    handle(n, raw, true);
                }
                n += 1;
                f.skip_space()?;
            }
            if let Some(only) = pending {
                handle(0, &only, false);
            }
            (n, n > 1)
        }
        None => return Err(ImportError::NotJson("the input is empty".into())),
        Some(_) => return Err(ImportError::UnknownFormat),
    };
    if count == 0 {
        return Err(ImportError::Empty);
    }
    if opts.id.is_some() {
        if count > 1 {
            return Err(ImportError::IdForMany(count));
        }
        if let Some(raw) = kept {
            record(0, &raw, many);
        }
    }
    Ok(())
}

/// One record, from its JSON text: refused unread when too large.
fn parse_raw(raw: &str, opts: &ImportOptions) -> Result<NewCredential> {
    if raw.len() > MAX_RECORD {
        return Err(ImportError::TooLarge(MAX_RECORD));
    }
    match serde_json::from_str::<Value>(raw).map_err(not_json)? {
        Value::Object(map) => parse_record(&map, opts),
        _ => Err(ImportError::UnknownFormat),
    }
}

fn not_json(e: impl std::fmt::Display) -> ImportError {
    ImportError::NotJson(e.to_string())
}

/// Cuts a stream of JSON values into one value's bytes at a time. It
/// follows strings (and their escapes) and bracket depth only; whether the
/// bytes are JSON is serde_json's to say, when [`Framer::parse`] reads
/// them. A value's bytes are held whole, up to `MAX_RECORD +
/// SEPARATOR_SLACK`: past that the input is refused while it is read.
struct Framer<R> {
    r: BufReader<R>,
    /// The current value's bytes.
    buf: Vec<u8>,
}

impl<R: Read> Framer<R> {
    /// The next byte, not consumed; `None` at the end of the input.
    fn peek(&mut self) -> Result<Option<u8>> {
        Ok(self.r.fill_buf().map_err(not_json)?.first().copied())
    }

    fn skip_space(&mut self) -> Result<()> {
        loop {
            let chunk = self.r.fill_buf().map_err(not_json)?;
            let n = chunk.iter().take_while(|b| b.is_ascii_whitespace()).count();
            let more = n == chunk.len() && n > 0;
            self.r.consume(n);
            if !more {
                return Ok(());
            }
        }
    }

    /// Reads the value that starts here (record `index`) into `buf`: an
    /// object or array to its closing bracket, a string to its closing
    /// quote, anything else up to the next separator.
    fn frame(&mut self, index: usize) -> Result<()> {
        self.buf.clear();
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        let mut scalar = false;
        let mut started = false;
        loop {
            let chunk = self.r.fill_buf().map_err(not_json)?;
            if chunk.is_empty() {
                // The end of the input: a scalar ends here; anything else
                // is cut short (serde_json says where).
                return match (scalar, self.checked()) {
                    (true, _) => Ok(()),
                    (false, Err(e)) => Err(e),
                    (false, Ok(_)) => Err(not_json("the input ends inside a record")),
                };
            }
            let mut end = None;
            let mut i = 0;
            while i < chunk.len() {
                let b = chunk[i];
                i += 1;
                if !started {
                    started = true;
                    match b {
                        b'{' | b'[' => depth = 1,
                        b'"' => in_string = true,
                        _ => scalar = true,
                    }
                    if scalar && is_separator(b) {
                        // No value here at all (`[,`, `]`…): let serde_json
                        // say what it expected.
                        end = Some(i);
                        break;
                    }
                    continue;
                }
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                        if depth == 0 {
                            end = Some(i);
                            break;
                        }
                    } else {
                        // Most of a record is string: skip to the next
                        // quote or backslash in one tight loop.
                        while i < chunk.len() && !matches!(chunk[i], b'"' | b'\\') {
                            i += 1;
                        }
                    }
                } else if scalar {
                    if is_separator(b) {
                        end = Some(i - 1);
                        break;
                    }
                } else {
                    match b {
                        b'"' => in_string = true,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(i);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            let take = end.unwrap_or(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            self.r.consume(take);
            if self.buf.len() > MAX_RECORD + SEPARATOR_SLACK {
                return Err(ImportError::InRecord {
                    index,
                    source: Box::new(ImportError::TooLarge(MAX_RECORD)),
                });
            }
            if end.is_some() {
                return Ok(());
            }
        }
    }

    /// The text of the value [`Framer::frame`] read, once serde_json
    /// has read it as JSON: UTF-8, one value, well formed (what reading it
    /// as a `RawValue` checks; whether it is a record is the reader's to
    /// say).
    fn checked(&self) -> Result<&str> {
        let text = std::str::from_utf8(&self.buf).map_err(not_json)?;
        serde_json::from_str::<IgnoredAny>(text).map_err(not_json)?;
        Ok(text)
    }
}

/// Where a bare value (a number, `true`, …) ends.
fn is_separator(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b',' | b']' | b'}' | b'[' | b'{' | b'"' | b':')
}

/// Skips a UTF-8 byte-order mark and leading whitespace.
fn skip_bom_and_space(r: &mut impl BufRead) -> Result<()> {
    let buf = r.fill_buf().map_err(not_json)?;
    if buf.starts_with(b"\xEF\xBB\xBF") {
        r.consume(3);
    }
    loop {
        let buf = r.fill_buf().map_err(not_json)?;
        let n = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if n == 0 {
            return Ok(());
        }
        r.consume(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::parse_import;

    /// Every outcome of streaming `text`, or the whole input's error.
    fn stream(text: &str, opts: &ImportOptions) -> Result<Vec<(usize, Result<NewCredential>)>> {
        let mut out = Vec::new();
        stream_import(text.as_bytes(), opts, &mut HashSet::new(), |i, r| {
            out.push((i, r))
        })?;
        Ok(out)
    }

    fn rec(id: &str) -> String {
        format!(r#"{{"id":"{id}","provider":"codex","refresh_token":"rt-{id}"}}"#)
    }

    /// Every fixture file, and each input shape parse_import reads, streams
    /// to the same credentials or the same error.
    #[test]
    fn streaming_reads_what_parse_import_reads() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/import");
        let mut inputs: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        inputs.extend([
            format!("\u{feff}  [{}, {}]", rec("a"), rec("b")),
            format!("[{}]", rec("a")),
            rec("a"),
            "[]".into(),
            "".into(),
            "42".into(),
            "{".into(),
            format!("[{}, 7]", rec("a")),
            format!("[{}, {}]", rec("a"), rec("a")),
            r#"{"id":"x","provider":"codex"}"#.into(),
        ]);
        for opts in [
            ImportOptions::default(),
            ImportOptions {
                id: Some("given".into()),
                provider: None,
            },
        ] {
            for text in &inputs {
                let whole = parse_import(text.as_bytes(), &opts, 0);
                // The first look fails the input exactly where the stream
                // does, with the same error, and counts its records.
                let outcomes = stream(text, &opts);
                match (check_stream(text.as_bytes(), &opts), &outcomes) {
                    (Ok(n), Ok(rs)) => assert_eq!(n, rs.len(), "{text}"),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
                    (a, b) => panic!("{text}: {a:?} / {b:?}"),
                }
                let streamed = outcomes
                    .and_then(|rs| rs.into_iter().map(|(_, r)| r).collect::<Result<Vec<_>>>());
                match (&whole, &streamed) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                    // The stream names a repeated id's position too.
                    (
                        Err(a @ ImportError::DuplicateId(_)),
                        Err(ImportError::InRecord { source, .. }),
                    ) => {
                        assert_eq!(a.to_string(), source.to_string(), "{text}")
                    }
                    (Err(a), Err(b)) => assert_eq!(
                        std::mem::discriminant(a),
                        std::mem::discriminant(b),
                        "{text}: {a} / {b}"
                    ),
                    _ => panic!("{text}: {whole:?} / {streamed:?}"),
                }
            }
        }
    }

    /// The framer cuts records at the right byte whatever their strings
    /// hold, and what it cannot cut, or serde_json cannot read as JSON, is
    /// refused whole, by the first look and the stream alike; a record that
    /// is JSON but no credential is refused on its own.
    #[test]
    fn records_are_cut_where_json_says_and_bad_json_is_refused_whole() {
        let odd = r#"{"id":"odd","provider":"codex","refresh_token":"rt-}]\"{[,"}"#;
        let (a, b) = (rec("a"), rec("b"));
        let huge_number =
            r#"{"id":"n","provider":"codex","refresh_token":"rt-n","expires_at":1e400}"#;
        // Records read, of which refused on their own; `None`: the input
        // refused whole.
        type Want = Option<(usize, usize)>;
        let table: Vec<(Vec<u8>, Want)> = vec![
            (format!("[{odd}]").into(), Some((1, 0))),
            (format!("{odd}\n{a}").into(), Some((2, 0))),
            (format!("{a}{b}").into(), Some((2, 0))),
            (format!(" [ {a} ,\n\t{b} ] \n").into(), Some((2, 0))),
            (
                format!("[{a}, \"just a string\", 7, null, []]").into(),
                Some((5, 4)),
            ),
            (format!("[{huge_number}, {a}]").into(), Some((2, 1))),
            (format!("{a}\n7").into(), Some((2, 1))),
            (format!("[{a} {b}]").into(), None),
            (format!("[{a},]").into(), None),
            (format!("[,{a}]").into(), None),
            (format!("[{a}").into(), None),
            (format!("[{a}] x").into(), None),
            (format!("[{a}]]").into(), None),
            (format!("{a}}}").into(), None),
            (format!("{a}\n{{\"id\":").into(), None),
            (format!("[{a}, {{\"id\": tru}}]").into(), None),
            (format!("[{a}, 12x]").into(), None),
            (
                [b"[{\"id\":\"\xff\"}, ".as_slice(), a.as_bytes(), b"]"].concat(),
                None,
            ),
        ];
        for (input, want) in table {
            let shown = String::from_utf8_lossy(&input).into_owned();
            let mut outcomes = Vec::new();
            let streamed = stream_import(
                input.as_slice(),
                &ImportOptions::default(),
                &mut HashSet::new(),
                |_, r| outcomes.push(r),
            );
            let checked = check_stream(input.as_slice(), &ImportOptions::default());
            match want {
                Some((n, refused)) => {
                    streamed.unwrap_or_else(|e| panic!("{shown}: {e}"));
                    assert_eq!(checked.unwrap(), n, "{shown}");
                    assert_eq!(outcomes.len(), n, "{shown}");
                    let bad = outcomes.iter().filter(|r| r.is_err()).count();
                    assert_eq!(bad, refused, "{shown}: {outcomes:?}");
                }
                None => {
                    let e = streamed.expect_err(&shown);
                    assert!(matches!(e, ImportError::NotJson(_)), "{shown}: {e}");
                    if shown.contains("tru}") {
                        assert!(e.to_string().contains("(record 2: "), "{e}");
                    }
                    assert_eq!(checked.unwrap_err().to_string(), e.to_string(), "{shown}");
                }
            }
        }
        let mut read = None;
        stream_import(
            format!("[{odd}]").as_bytes(),
            &ImportOptions::default(),
            &mut HashSet::new(),
            |_, r| read = Some(r.unwrap()),
        )
        .unwrap();
        assert_eq!(read.unwrap().refresh_token.expose(), "rt-}]\"{[,");
    }

    /// JSON Lines and arrays: each record refused on its own with its
    /// position, the others read; a repeated id refused where it repeats.
    #[test]
    fn each_record_is_refused_on_its_own_with_its_position() {
        let lines = format!(
            "{}\n{{\"id\":\"bad\"}}\n{}\n{}\n",
            rec("a"),
            rec("b"),
            rec("a")
        );
        let array = format!(
            "[{}, {{\"id\":\"bad\"}}, {}, {}]",
            rec("a"),
            rec("b"),
            rec("a")
        );
        for text in [lines, array] {
            let out = stream(&text, &ImportOptions::default()).unwrap();
            let shown: Vec<(usize, String)> = out
                .iter()
                .map(|(i, r)| {
                    let what = match r {
                        Ok(c) => c.id.clone(),
                        Err(e) => e.to_string(),
                    };
                    (*i, what)
                })
                .collect();
            assert_eq!(shown.len(), 4, "{shown:?}");
            assert_eq!(shown[0], (0, "a".into()));
            assert!(
                shown[1].1.starts_with("record 2 of the array: "),
                "{shown:?}"
            );
            assert_eq!(shown[2], (2, "b".into()));
            assert_eq!(
                shown[3],
                (
                    3,
                    "record 4 of the array: id \"a\" appears more than once in the input".into()
                )
            );
        }
    }

    /// A record over the bound is refused unread; `--id` with several
    /// records refuses the whole input, counting them.
    #[test]
    fn oversized_records_and_id_for_many() {
        let big = format!(
            r#"{{"id":"big","provider":"codex","refresh_token":"{}"}}"#,
            "x".repeat(MAX_RECORD)
        );
        let out = stream(&format!("[{big}, {}]", rec("a")), &ImportOptions::default()).unwrap();
        assert!(matches!(
            &out[0].1,
            Err(ImportError::InRecord { source, .. }) if matches!(**source, ImportError::TooLarge(_))
        ));
        assert_eq!(out[1].1.as_ref().unwrap().id, "a");
        let opts = ImportOptions {
            id: Some("me".into()),
            provider: None,
        };
        let three = format!("{}\n{}\n{}", rec("a"), rec("b"), rec("c"));
        assert!(matches!(
            stream(&three, &opts),
            Err(ImportError::IdForMany(3))
        ));
    }

    /// A record far over the bound is refused while it is read: the input
    /// is not read (nor held) much past the bound.
    #[test]
    fn a_huge_record_is_refused_while_it_is_read() {
        struct Endless<'a>(&'a std::cell::Cell<usize>);
        impl Read for Endless<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let head = br#"[{"id":"a","provider":"codex","refresh_token":"rt-a"}, {"id":"big","refresh_token":""#;
                let at = self.0.get();
                let n = if at < head.len() {
                    let n = buf.len().min(head.len() - at);
                    buf[..n].copy_from_slice(&head[at..at + n]);
                    n
                } else {
                    buf.fill(b'x');
                    buf.len()
                };
                self.0.set(at + n);
                Ok(n)
            }
        }
        let read = std::cell::Cell::new(0);
        let mut handed = Vec::new();
        let err = stream_import(
            Endless(&read),
            &ImportOptions::default(),
            &mut HashSet::new(),
            |i, r| handed.push((i, r.map(|c| c.id))),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ImportError::InRecord { index: 1, source } if matches!(**source, ImportError::TooLarge(_))),
            "{err}"
        );
        assert_eq!(handed.len(), 1);
        assert!(
            read.get() < MAX_RECORD + 2 * SEPARATOR_SLACK + 64 * 1024,
            "{}",
            read.get()
        );
    }

    /// A stream of 20,000 records is read one at a time: each outcome is
    /// handed over before the next record is parsed.
    #[test]
    fn records_are_handed_over_as_they_are_read() {
        struct Trickle<'a>(&'a [u8], std::rc::Rc<std::cell::Cell<usize>>);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(4096);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                self.1.set(self.1.get() + n);
                Ok(n)
            }
        }
        let text = format!(
            "[{}]",
            (0..20_000)
                .map(|i| rec(&format!("c{i}")))
                .collect::<Vec<_>>()
                .join(",")
        );
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut first_seen_after = None;
        let mut n = 0;
        stream_import(
            Trickle(text.as_bytes(), read.clone()),
            &ImportOptions::default(),
            &mut HashSet::new(),
            |_, r| {
                r.unwrap();
                first_seen_after.get_or_insert(read.get());
                n += 1;
            },
        )
        .unwrap();
        assert_eq!(n, 20_000);
        assert!(
            first_seen_after.unwrap() < 256 * 1024,
            "the first record came after {} of {} bytes",
            first_seen_after.unwrap(),
            text.len()
        );
    }
}
