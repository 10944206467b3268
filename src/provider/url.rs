//! Which token endpoint URLs are acceptable: `https://`, or `http://` to a
//! loopback host only; also the host/loopback rules the HTTP server's
//! `Host`/`Origin` checks reuse.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The host of a URL authority (`host[:port]`, `[v6][:port]`), if well formed.
/// User info is refused by the caller before this is reached.
pub(crate) fn url_host(authority: &str) -> Option<&str> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            rest[..end].parse::<Ipv6Addr>().ok()?;
            (&authority[..end + 2], &rest[end + 1..])
        }
        None => {
            let host = authority.split(':').next().unwrap_or_default();
            let ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            (ok.then_some(host)?, &authority[host.len()..])
        }
    };
    if !port.is_empty() {
        let p = port.strip_prefix(':')?;
        let ok = (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n));
        if !ok {
            return None;
        }
    }
    Some(host)
}

/// `localhost`, an address in 127.0.0.0/8, or `[::1]`.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks a token endpoint URL: absolute `https://`, or plain `http://` only
/// for a loopback host (127.0.0.0/8, `localhost`, `[::1]`). User info
/// (`user:pass@`), whitespace and malformed hosts or ports are refused. The
/// error names the host at most, never the path or query.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("token URL contains whitespace or control characters".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("token URL is not an absolute URL; expected https://host/path".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "token URL may not contain user info (user:password@); set client_id/client_secret instead"
                .into(),
        );
    }
    let host = url_host(authority).ok_or("token URL has no valid host[:port]")?;
    if scheme.eq_ignore_ascii_case("https") {
        Ok(())
    } else if scheme.eq_ignore_ascii_case("http") {
        if is_loopback_host(host) {
            Ok(())
        } else {
            Err(format!(
                "token URL uses plain http:// for {host}; use https:// \
                 (http:// is allowed only for loopback hosts: 127.0.0.0/8, localhost, [::1])"
            ))
        }
    } else {
        Err("token URL must start with https:// (or http:// for a loopback host)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_rule() {
        let table = [
            ("https://auth.openai.com/oauth/token", true),
            ("HTTPS://auth.openai.com:443/oauth/token?x=1", true),
            ("https://[2001:db8::1]:8443/token", true),
            ("http://127.0.0.1:8719/token", true),
            ("http://127.255.0.9/token", true),
            ("http://localhost:1234/oauth/token", true),
            ("http://LOCALHOST/token", true),
            ("http://[::1]:9000/token", true),
            ("http://[::1]", true),
            ("http://example.com/token", false),
            ("http://10.0.0.1/token", false),
            ("http://128.0.0.1/token", false),
            ("http://[::2]/token", false),
            ("http://127.0.0.1.evil.com/token", false),
            ("http://localhost.evil.com/token", false),
            ("http://localhost@evil.com/token", false),
            ("https://user:pw@example.com/token", false),
            ("ftp://example.com/token", false),
            ("example.com/token", false),
            ("https://", false),
            ("https:///token", false),
            ("https://exa mple.com/token", false),
            ("https://example.com:0/token", false),
            ("https://example.com:65536/token", false),
            ("https://example.com:/token", false),
            ("https://example.com:12ab/token", false),
            ("https://[::1/token", false),
            ("https://[nope]/token", false),
            ("https://ex%61mple.com/token", false),
            ("", false),
        ];
        for (url, ok) in table {
            assert_eq!(check_url(url).is_ok(), ok, "{url}: {:?}", check_url(url));
        }
        let err = check_url("http://example.com/token?secret=abc").unwrap_err();
        assert!(
            err.contains("example.com") && !err.contains("secret=abc"),
            "{err}"
        );
    }
}
