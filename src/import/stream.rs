//! Import files of any size, read as a stream: a JSON array, JSON Lines
//! (or any whitespace-separated sequence of objects), or one object.
//!
//! Records are handed over one at a time as they are parsed, each checked
//! on its own (its position named in its error), so memory holds one
//! record, never the file. A single object is read exactly as
//! [`super::parse_import`] reads it (a Codex `auth.json`, say); a record
//! larger than [`MAX_RECORD`] is refused without being parsed.

use std::cell::Cell;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};

use serde::de::{Deserializer as _, SeqAccess, Visitor};
use serde_json::value::RawValue;
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

/// Bytes of the input read ahead of the parser: small beside the bound,
/// which allows for them (see [`Guard`]).
const READ_AHEAD: usize = 16 * 1024;

/// Frames `reader` into records and hands each to `record` with its
/// position and whether the input holds several; the input-wide rules of
/// [`stream_import`] (the bound, `--id` with one record only) are kept
/// here.
fn walk(
    reader: impl Read,
    opts: &ImportOptions,
    record: &mut dyn FnMut(usize, &RawValue, bool),
) -> Result<()> {
    // Bytes read since the last record ended, and records seen: the guard
    // refuses a record that grows past the bound while it is being read,
    // so memory never holds more than one record of at most MAX_RECORD.
    let since = Cell::new(0usize);
    let handed = Cell::new(0usize);
    // The buffer outside the guard: serde_json reads a byte at a time, and
    // a `BufReader` hands those out of its buffer without a call per byte.
    let mut reader = BufReader::with_capacity(
        READ_AHEAD,
        Guard {
            inner: reader,
            since: &since,
        },
    );
    skip_bom_and_space(&mut reader)?;
    let first = reader.fill_buf().map_err(not_json)?.first().copied();
    let too_large = |e: serde_json::Error| match e.io_error_kind() {
        Some(std::io::ErrorKind::FileTooLarge) => ImportError::InRecord {
            index: handed.get(),
            source: Box::new(ImportError::TooLarge(MAX_RECORD)),
        },
        _ => not_json(e),
    };
    // With `--id` the input must hold one record: the first is kept aside
    // and the rest only counted, so that more than one is refused whole.
    let mut kept: Option<Box<RawValue>> = None;
    let mut handle = |index: usize, raw: Box<RawValue>, many: bool| {
        since.set(0);
        handed.set(index + 1);
        match &opts.id {
            None => record(index, &raw, many),
            Some(_) if index == 0 => kept = Some(raw),
            Some(_) => {}
        }
    };
    let (count, many) = match first {
        Some(b'[') => {
            let mut de = serde_json::Deserializer::from_reader(reader);
            let n = de
                .deserialize_seq(Elements(&mut |i, raw| handle(i, raw, true)))
                .map_err(too_large)?;
            de.end().map_err(not_json)?;
            (n, true)
        }
        Some(b'{') => {
            let values = serde_json::Deserializer::from_reader(reader).into_iter::<Box<RawValue>>();
            // One object is a file of one record (a Codex auth.json, say);
            // more are JSON Lines, each named by its position.
            let mut pending: Option<Box<RawValue>> = None;
            let mut n = 0;
            for raw in values {
                let raw = raw.map_err(too_large)?;
                if let Some(prev) = pending.take() {
                    handle(n - 1, prev, true);
                }
                if n == 0 {
                    pending = Some(raw);
                } else {
                    handle(n, raw, true);
                }
                n += 1;
            }
            if let Some(only) = pending {
                handle(0, only, false);
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

/// One record, from its raw JSON: refused unread when too large.
fn parse_raw(raw: &RawValue, opts: &ImportOptions) -> Result<NewCredential> {
    if raw.get().len() > MAX_RECORD {
        return Err(ImportError::TooLarge(MAX_RECORD));
    }
    match serde_json::from_str::<Value>(raw.get()).map_err(not_json)? {
        Value::Object(map) => parse_record(&map, opts),
        _ => Err(ImportError::UnknownFormat),
    }
}

fn not_json(e: impl std::fmt::Display) -> ImportError {
    ImportError::NotJson(e.to_string())
}

/// Counts the bytes read since the last record ended (`since`, reset as
/// each record is handed over) and fails the read, with
/// `ErrorKind::FileTooLarge`, once they pass the bound: serde buffers a
/// record whole, so its size must be checked while it is read. The bound
/// allows for the separators around a record and for the [`READ_AHEAD`]
/// bytes of the next one already read when the count is reset, so that no
/// record within [`MAX_RECORD`] is ever refused here.
struct Guard<'a, R> {
    inner: R,
    since: &'a Cell<usize>,
}

/// Room beside a record for the separators around it.
const SEPARATOR_SLACK: usize = 64 * 1024;

impl<R: Read> Read for Guard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let since = self.since.get() + n;
        self.since.set(since);
        if since > MAX_RECORD + SEPARATOR_SLACK + READ_AHEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "a record larger than the bound",
            ));
        }
        Ok(n)
    }
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

/// Hands each element of a JSON array to a callback as it is parsed;
/// counts them.
struct Elements<'f>(&'f mut dyn FnMut(usize, Box<RawValue>));

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<usize, A::Error> {
        let mut n = 0;
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            (self.0)(n, raw);
            n += 1;
        }
        Ok(n)
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
