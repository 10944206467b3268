//! docs/openapi.yaml as the tests read it: the document, its routes, and a
//! small validator for the subset of JSON Schema (2020-12, as OpenAPI 3.1
//! uses it) that the document is written in. A keyword outside that subset
//! is an error, so the document cannot say more than the tests check.
//!
//! Shared by tests/openapi.rs (the contract) and tests/fuzz_http.rs (every
//! fuzzed answer must match the contract too).

use serde_json::Value;

/// The methods OpenAPI path items may hold, upper-cased.
pub const METHODS: [&str; 8] = [
    "GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
];

/// Keywords that only annotate: never checked.
const ANNOTATIONS: [&str; 5] = ["description", "format", "title", "examples", "deprecated"];

/// Keywords the validator checks.
const ASSERTIONS: [&str; 16] = [
    "$ref",
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minItems",
    "oneOf",
    "not",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
];

/// One answer as the checks see it.
pub struct Seen<'a> {
    /// Request method as sent.
    pub method: &'a str,
    /// Request target as sent (path and query).
    pub target: &'a str,
    /// Status.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: &'a [(String, String)],
    /// Body.
    pub body: &'a str,
}

/// The parsed document.
pub struct Spec {
    /// The whole document as JSON.
    pub doc: Value,
}

impl Spec {
    /// Reads docs/openapi.yaml; panics on a parse error or a dangling
    /// `$ref`.
    pub fn load() -> Spec {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("read docs/openapi.yaml");
        let doc: Value =
            serde_norway::from_str(&text).unwrap_or_else(|e| panic!("docs/openapi.yaml: {e}"));
        let spec = Spec { doc };
        spec.check_refs(&spec.doc, "#");
        spec
    }

    fn check_refs(&self, v: &Value, at: &str) {
        match v {
            Value::Object(map) => {
                if let Some(r) = map.get("$ref") {
                    let r = r
                        .as_str()
                        .unwrap_or_else(|| panic!("{at}: $ref not a string"));
                    assert!(
                        r.starts_with("#/") && self.doc.pointer(&r[1..]).is_some(),
                        "{at}: dangling $ref {r}"
                    );
                }
                for (k, v) in map {
                    self.check_refs(v, &format!("{at}/{k}"));
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.check_refs(v, &format!("{at}/{i}"));
                }
            }
            _ => {}
        }
    }

    /// `v`, with `$ref`s followed.
    pub fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..16 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    v = self
                        .doc
                        .pointer(&r[1..])
                        .unwrap_or_else(|| panic!("dangling $ref {r}"));
                }
                None => return v,
            }
        }
        panic!("a $ref loop");
    }

    /// Every documented (path pattern, METHOD).
    pub fn operations(&self) -> Vec<(String, String)> {
        let mut ops = Vec::new();
        for (pattern, item) in self.paths() {
            for m in METHODS {
                if item.get(m.to_ascii_lowercase()).is_some() {
                    ops.push((pattern.clone(), m.to_owned()));
                }
            }
        }
        ops
    }

    fn paths(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.doc["paths"].as_object().expect("paths").iter()
    }

    /// The documented pattern `path` (no query) belongs to: `{x}` matches
    /// exactly one segment, whatever it holds.
    pub fn route_of(&self, path: &str) -> Option<&str> {
        self.paths()
            .map(|(p, _)| p.as_str())
            .find(|p| pattern_matches(p, path))
    }

    /// Whether `path` (no query) is the console's (`x-console.paths`: a
    /// path as listed, or under a `/*` prefix), not the JSON API's.
    pub fn is_console(&self, path: &str) -> bool {
        self.doc["x-console"]["paths"]
            .as_array()
            .expect("x-console paths")
            .iter()
            .filter_map(Value::as_str)
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == p,
            })
    }

    /// The operation object of `pattern` + `method` (as sent: `get` is not
    /// `GET`).
    pub fn operation(&self, pattern: &str, method: &str) -> Option<&Value> {
        if !METHODS.contains(&method) {
            return None;
        }
        self.doc["paths"][pattern].get(method.to_ascii_lowercase())
    }

    /// The response objects a request may get, by status: the operation's,
    /// or — for a request no operation covers — those of `x-unrouted`
    /// (404 only for an unknown path, 405 only for a known one).
    pub fn responses_for(&self, method: &str, path: &str) -> Vec<(u16, &Value)> {
        if self.is_console(path) {
            return self.doc["x-console"]["responses"]
                .as_object()
                .expect("x-console responses")
                .iter()
                .map(|(s, r)| {
                    let status = s.parse().unwrap_or_else(|_| panic!("status {s}"));
                    (status, self.resolve(r))
                })
                .collect();
        }
        let route = self.route_of(path);
        let (responses, drop): (&Value, Option<&str>) =
            match route.and_then(|p| self.operation(p, method)) {
                Some(op) => (&op["responses"], None),
                None => (
                    &self.doc["x-unrouted"]["responses"],
                    Some(if route.is_some() { "404" } else { "405" }),
                ),
            };
        responses
            .as_object()
            .expect("responses")
            .iter()
            .filter(|(s, _)| Some(s.as_str()) != drop)
            .map(|(s, r)| {
                let status = s.parse().unwrap_or_else(|_| panic!("status {s}"));
                (status, self.resolve(r))
            })
            .collect()
    }

    /// Whether an operation lets anyone in (`security: []`).
    pub fn is_public(&self, pattern: &str, method: &str) -> bool {
        self.operation(pattern, method)
            .and_then(|op| op.get("security"))
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
    }

    /// Checks one answer: its status is documented for the request, its
    /// required headers are there and fit their schemas, and its body has a
    /// documented content type and fits that schema. `Err` says what does
    /// not.
    pub fn check(&self, seen: &Seen) -> Result<(), String> {
        let path = seen.target.split('?').next().unwrap_or_default();
        let responses = self.responses_for(seen.method, path);
        let Some((_, response)) = responses.iter().find(|(s, _)| *s == seen.status) else {
            let documented: Vec<u16> = responses.iter().map(|(s, _)| *s).collect();
            return Err(format!(
                "status {} is not documented for {} {} (documented: {documented:?})",
                seen.status, seen.method, seen.target
            ));
        };
        let header = |name: &str| {
            let name = name.to_ascii_lowercase();
            seen.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            for (name, h) in headers {
                let h = self.resolve(h);
                match header(name) {
                    None if h["required"] == Value::Bool(true) => {
                        return Err(format!("required header {name} is missing"));
                    }
                    None => {}
                    Some(value) => {
                        let schema = &h["schema"];
                        let as_json = match self.resolve(schema)["type"].as_str() {
                            Some("integer") => {
                                value.parse::<i64>().map(Value::from).map_err(|_| {
                                    format!("header {name}: {value:?} is not an integer")
                                })?
                            }
                            _ => Value::from(value),
                        };
                        self.validate(schema, &as_json, &format!("header {name}"))?;
                    }
                }
            }
        }
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return match seen.body.is_empty() {
                true => Ok(()),
                false => Err(format!("an undocumented body: {}", seen.body)),
            };
        };
        if seen.method == "HEAD" {
            return Ok(());
        }
        let ctype = header("content-type").ok_or("no Content-Type")?;
        let essence = ctype.split(';').next().unwrap_or_default().trim();
        let media = content
            .iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(essence))
            .map(|(_, m)| m)
            .ok_or_else(|| format!("content type {ctype} is not documented"))?;
        let schema = &media["schema"];
        let value = if essence == "application/json" {
            serde_json::from_str(seen.body)
                .map_err(|e| format!("body is not JSON ({e}): {}", seen.body))?
        } else {
            Value::from(seen.body)
        };
        self.validate(schema, &value, "body")
            .map_err(|e| format!("{e}\nbody: {}", seen.body))
    }

    /// Validates `value` against `schema`; `Err` names the first mismatch.
    pub fn validate(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let Value::Object(s) = schema else {
            return match schema {
                Value::Bool(true) => Ok(()),
                Value::Bool(false) => Err(format!("{at}: nothing is allowed here")),
                _ => panic!("{at}: a schema must be an object or a boolean: {schema}"),
            };
        };
        for k in s.keys() {
            assert!(
                ASSERTIONS.contains(&k.as_str())
                    || ANNOTATIONS.contains(&k.as_str())
                    || k.starts_with("x-"),
                "{at}: unsupported schema keyword {k:?}; extend tests/common/spec.rs"
            );
        }
        if let Some(r) = s.get("$ref") {
            assert_eq!(s.len(), 1, "{at}: $ref with siblings");
            let target = self
                .doc
                .pointer(&r.as_str().expect("$ref")[1..])
                .expect("$ref");
            return self.validate(target, value, at);
        }
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => panic!("{at}: bad type {t}"),
            };
            if !types.iter().any(|t| type_matches(t, value)) {
                return Err(format!("{at}: {value} is not of type {t}"));
            }
        }
        if let Some(options) = s.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                return Err(format!("{at}: {value} is not one of {options:?}"));
            }
        }
        if let Some(c) = s.get("const") {
            if c != value {
                return Err(format!("{at}: {value} is not {c}"));
            }
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    return Err(format!("{at}: {n} < minimum {min}"));
                }
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    return Err(format!("{at}: {n} > maximum {max}"));
                }
            }
        }
        if let Some(text) = value.as_str() {
            let len = text.chars().count() as u64;
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                return Err(format!("{at}: {text:?} is too short"));
            }
            if s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                return Err(format!("{at}: {text:?} is too long"));
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                if !Pattern::parse(p).matches(text) {
                    return Err(format!("{at}: {text:?} does not match {p}"));
                }
            }
        }
        if let Value::Object(map) = value {
            if let Some(required) = s.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        return Err(format!("{at}: required field {r:?} is missing"));
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, v) in map {
                match props.and_then(|p| p.get(k)) {
                    Some(sub) => self.validate(sub, v, &format!("{at}.{k}"))?,
                    None => match s.get("additionalProperties") {
                        None => {}
                        Some(extra) => self
                            .validate(extra, v, &format!("{at}.{k}"))
                            .map_err(|e| format!("{e} (an undocumented field)"))?,
                    },
                }
            }
        }
        if let Value::Array(items) = value {
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| (items.len() as u64) < m)
            {
                return Err(format!("{at}: too few items"));
            }
            if let Some(item) = s.get("items") {
                for (i, v) in items.iter().enumerate() {
                    self.validate(item, v, &format!("{at}[{i}]"))?;
                }
            }
        }
        if let Some(options) = s.get("oneOf").and_then(Value::as_array) {
            let results: Vec<Result<(), String>> = options
                .iter()
                .map(|o| self.validate(o, value, at))
                .collect();
            match results.iter().filter(|r| r.is_ok()).count() {
                1 => {}
                0 => {
                    let why: Vec<&str> = results
                        .iter()
                        .filter_map(|r| r.as_ref().err())
                        .map(String::as_str)
                        .collect();
                    return Err(format!("{at}: matches no oneOf option: {why:?}"));
                }
                n => return Err(format!("{at}: matches {n} oneOf options, not one")),
            }
        }
        if let Some(not) = s.get("not") {
            if self.validate(not, value, at).is_ok() {
                return Err(format!("{at}: {value} matches a `not` schema"));
            }
        }
        Ok(())
    }
}

/// Whether `pattern` (`/a/{x}/b`) fits `path`: `{x}` is one segment.
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    let (mut want, mut got) = (pattern.split('/'), path.split('/'));
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(_)) if w.starts_with('{') && w.ends_with('}') => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        // Strict: `1.0` is a number, not an integer.
        "integer" => v.is_i64() || v.is_u64(),
        other => panic!("unknown type {other}"),
    }
}

/// The regular expressions the document uses: `^…$` around a sequence of
/// literals and `[…]` classes, each with an optional `?`, `*`, `+` or
/// `{m,n}`.
struct Pattern {
    atoms: Vec<(Atom, usize, usize)>,
}

enum Atom {
    Literal(char),
    Class(Vec<(char, char)>),
}

impl Atom {
    fn accepts(&self, c: char) -> bool {
        match self {
            Atom::Literal(l) => *l == c,
            Atom::Class(ranges) => ranges.iter().any(|(a, b)| (*a..=*b).contains(&c)),
        }
    }
}

impl Pattern {
    fn parse(p: &str) -> Pattern {
        let inner = p
            .strip_prefix('^')
            .and_then(|p| p.strip_suffix('$'))
            .unwrap_or_else(|| panic!("pattern {p}: only ^…$ patterns are supported"));
        let chars: Vec<char> = inner.chars().collect();
        let mut atoms = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let atom = match chars[i] {
                '[' => {
                    let mut ranges = Vec::new();
                    i += 1;
                    while chars.get(i) != Some(&']') {
                        let mut c = *chars.get(i).expect("unclosed [");
                        if c == '\\' {
                            i += 1;
                            c = chars[i];
                        }
                        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2) != Some(&']') {
                            ranges.push((c, chars[i + 2]));
                            i += 3;
                        } else {
                            ranges.push((c, c));
                            i += 1;
                        }
                    }
                    i += 1;
                    Atom::Class(ranges)
                }
                '\\' => {
                    i += 2;
                    Atom::Literal(chars[i - 1])
                }
                c if "(|).".contains(c) => panic!("pattern {p}: {c:?} is not supported"),
                c => {
                    i += 1;
                    Atom::Literal(c)
                }
            };
            let (min, max) = match chars.get(i) {
                Some('?') => (0, 1),
                Some('*') => (0, usize::MAX),
                Some('+') => (1, usize::MAX),
                Some('{') => {
                    let end = i + chars[i..].iter().position(|c| *c == '}').expect("}");
                    let spec: String = chars[i + 1..end].iter().collect();
                    let (a, b) = spec.split_once(',').unwrap_or((&spec, &spec));
                    let min = a.parse().expect("{m,n}");
                    let max = if b.is_empty() {
                        usize::MAX
                    } else {
                        b.parse().expect("{m,n}")
                    };
                    i = end;
                    (min, max)
                }
                _ => {
                    atoms.push((atom, 1, 1));
                    continue;
                }
            };
            i += 1;
            atoms.push((atom, min, max));
        }
        Pattern { atoms }
    }

    fn matches(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        Self::match_from(&self.atoms, &chars)
    }

    fn match_from(atoms: &[(Atom, usize, usize)], text: &[char]) -> bool {
        let Some(((atom, min, max), rest)) = atoms.split_first() else {
            return text.is_empty();
        };
        let run = text.iter().take_while(|c| atom.accepts(**c)).count();
        let most = run.min(*max);
        (*min..=most)
            .rev()
            .any(|n| Self::match_from(rest, &text[n..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The validator's regular expressions match exactly what docs/openapi.yaml's patterns mean.
    #[test]
    fn patterns() {
        let p = Pattern::parse("^[A-Za-z0-9._@+-]{1,128}$");
        assert!(p.matches("a.b@c+d-e_f"));
        assert!(!p.matches(""));
        assert!(!p.matches("a/b"));
        assert!(!p.matches(&"x".repeat(129)));
        assert!(Pattern::parse("^twh_[a-z]+x?$").matches("twh_abc"));
        assert!(!Pattern::parse("^twh_[a-z]+x?$").matches("twh_"));
    }

    /// A path template's `{x}` fits exactly one segment.
    #[test]
    fn path_patterns() {
        assert!(pattern_matches("/v1/credentials/{id}", "/v1/credentials/a"));
        assert!(pattern_matches("/v1/credentials/{id}", "/v1/credentials/"));
        assert!(!pattern_matches("/v1/credentials/{id}", "/v1/credentials"));
        assert!(!pattern_matches("/healthz", "/healthz/"));
    }
}
