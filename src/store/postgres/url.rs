//! Reading a `postgres://` / `postgresql://` database URL: the parameters
//! tokenwarden takes itself (`sslmode`, `sslrootcert`, `schema`) are taken
//! out, the rest is handed to the driver as it is. Pure: no I/O.

use crate::error::{Error, Result};

use crate::store::is_postgres_url;

/// How the connection is protected (libpq's `sslmode`, the three modes
/// that mean something: `prefer` and `allow` would fall back to plain
/// text without saying so, and `verify-ca` checks less than
/// `verify-full` for no gain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Plain TCP (or a unix socket).
    Disable,
    /// TLS, the server's certificate not checked (as libpq's `require`
    /// without a root certificate): protects from listeners, not from a
    /// man in the middle.
    Require,
    /// TLS, the certificate checked against `sslrootcert` and the host
    /// name.
    VerifyFull,
}

/// A database URL, split into what tokenwarden does itself and what the
/// driver gets. Its `Debug` shows the URL without its password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PgUrl {
    /// The URL without tokenwarden's parameters, for the driver.
    pub driver_url: String,
    pub ssl: SslMode,
    /// The CA file of `verify-full` (`sslrootcert=`).
    pub root_cert: Option<String>,
    /// The schema holding tokenwarden's tables (`schema=`, default
    /// `tokenwarden`).
    pub schema: String,
    /// The URL with any password replaced by `***`, for messages.
    pub shown: String,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PgUrl({}, {:?}, schema {})",
            self.shown, self.ssl, self.schema
        )
    }
}

/// The schema used when the URL names none.
pub(crate) const DEFAULT_SCHEMA: &str = "tokenwarden";

/// `%XX`-decodes a URL component.
fn decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad("a bad %-escape"))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad("a %-escape that is not UTF-8"))
}

fn bad(why: &str) -> Error {
    Error::Config(format!("the PostgreSQL URL has {why}"))
}

/// Whether `s` is a plain SQL identifier: it is written into statements
/// unquoted (as the search path and the notification channel).
fn plain_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

impl PgUrl {
    /// Reads `url`; an unknown `sslmode` or a bad `schema` is refused here,
    /// at start-up, with what to write instead.
    pub(crate) fn parse(url: &str) -> Result<PgUrl> {
        if !is_postgres_url(url) {
            return Err(bad("to start with postgres:// or postgresql://"));
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut ssl = None;
        let mut root_cert = None;
        let mut schema = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    ssl = Some(match decode(value)?.as_str() {
                        "disable" => SslMode::Disable,
                        "require" => SslMode::Require,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(Error::Config(format!(
                                "sslmode={other} is not supported: use disable, require or \
                                 verify-full (with sslrootcert=CA-FILE)"
                            )))
                        }
                    })
                }
                "sslrootcert" => root_cert = Some(decode(value)?),
                "schema" => schema = Some(decode(value)?),
                _ => kept.push(pair),
            }
        }
        let schema = schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_owned());
        if !plain_identifier(&schema) {
            return Err(Error::Config(format!(
                "schema={schema:?}: a schema name is lower-case letters, digits and _, \
                 starting with a letter or _ (at most 63)"
            )));
        }
        // libpq's default is `prefer`, which silently falls back to plain
        // text; here an address that is not local must say what it wants.
        let ssl = match ssl {
            Some(mode) => mode,
            None if local_host(base) => SslMode::Disable,
            None => SslMode::Require,
        };
        if ssl == SslMode::VerifyFull && root_cert.is_none() {
            return Err(Error::Config(
                "sslmode=verify-full needs sslrootcert=CA-FILE (the certificate authority \
                 that signed the server's certificate)"
                    .into(),
            ));
        }
        let driver_url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok(PgUrl {
            shown: crate::store::shown(std::path::Path::new(&driver_url)),
            driver_url,
            ssl,
            root_cert,
            schema,
        })
    }
}

/// Whether the URL's host is this machine (loopback or a unix socket
/// directory; no host at all means the default socket).
fn local_host(base: &str) -> bool {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    matches!(host, "" | "localhost" | "127.0.0.1" | "::1") || host.starts_with("%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each URL: what the driver gets, the TLS mode, the CA file, the
    /// schema — or the refusal's words.
    #[test]
    fn urls_split_into_ours_and_the_drivers() {
        type Want = std::result::Result<
            (&'static str, SslMode, Option<&'static str>, &'static str),
            &'static str,
        >;
        let cases: &[(&str, Want)] = &[
            (
                "postgres://tw@localhost/tw",
                Ok((
                    "postgres://tw@localhost/tw",
                    SslMode::Disable,
                    None,
                    "tokenwarden",
                )),
            ),
            (
                "postgresql://tw:pw@db.internal:5433/tw?sslmode=require&application_name=x",
                Ok((
                    "postgresql://tw:pw@db.internal:5433/tw?application_name=x",
                    SslMode::Require,
                    None,
                    "tokenwarden",
                )),
            ),
            (
                "postgres://tw@db.internal/tw",
                Ok((
                    "postgres://tw@db.internal/tw",
                    SslMode::Require,
                    None,
                    "tokenwarden",
                )),
            ),
            (
                "postgres://tw@db/tw?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&schema=tw_2",
                Ok((
                    "postgres://tw@db/tw",
                    SslMode::VerifyFull,
                    Some("/etc/ca.pem"),
                    "tw_2",
                )),
            ),
            (
                "postgres://tw@%2Ftmp%2Fpg/tw?sslmode=disable",
                Ok((
                    "postgres://tw@%2Ftmp%2Fpg/tw",
                    SslMode::Disable,
                    None,
                    "tokenwarden",
                )),
            ),
            (
                "postgres://tw@db/tw?sslmode=prefer",
                Err("sslmode=prefer is not supported"),
            ),
            (
                "postgres://tw@db/tw?sslmode=verify-full",
                Err("needs sslrootcert"),
            ),
            (
                "postgres://tw@db/tw?schema=Bad-Name",
                Err("a schema name is"),
            ),
            ("postgres://tw@db/tw?schema=a;drop", Err("a schema name is")),
            ("postgres://tw@db/tw?sslrootcert=%zz", Err("bad %-escape")),
            ("mysql://db/tw", Err("to start with postgres://")),
        ];
        for (url, want) in cases {
            let got = PgUrl::parse(url);
            match (want, got) {
                (Ok((driver, ssl, root, schema)), Ok(u)) => {
                    assert_eq!(u.driver_url, *driver, "{url}");
                    assert_eq!(u.ssl, *ssl, "{url}");
                    assert_eq!(u.root_cert.as_deref(), *root, "{url}");
                    assert_eq!(u.schema, *schema, "{url}");
                }
                (Err(words), Err(e)) => assert!(e.to_string().contains(words), "{url}: {e}"),
                (want, got) => panic!("{url}: want {want:?}, got {got:?}"),
            }
        }
    }

    /// A password never reaches a message.
    #[test]
    fn the_shown_url_hides_the_password() {
        let u = PgUrl::parse("postgres://tw:s3cret@db:5432/tw?sslmode=require").unwrap();
        assert_eq!(u.shown, "postgres://tw:***@db:5432/tw");
        assert!(!format!("{u:?}").contains("s3cret"));
        let u = PgUrl::parse("postgres://tw@db/tw").unwrap();
        assert_eq!(u.shown, "postgres://tw@db/tw");
    }
}
