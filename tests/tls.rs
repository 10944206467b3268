//! `serve --tls-cert FILE --tls-key FILE`: the real binary over HTTPS, with
//! a CA and a server certificate made by the test (rcgen), and a plain
//! listen on a public address warning loudly.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::http::{free_port, raw, read_answer, Answer, Served};
use crate::common::tw::{code, text, Env};

pub(crate) const KEY: &str = "tls-test-key-0123456789";

/// A test CA and a server certificate it signed for `localhost` and
/// 127.0.0.1, written as PEM files in `dir`.
pub(crate) struct Pki {
    pub(crate) ca_der: Vec<u8>,
    /// The chain's PEM file.
    pub(crate) cert: PathBuf,
    /// The server key's PEM file.
    pub(crate) key: PathBuf,
}

pub(crate) fn make_pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tokenwarden test CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate().expect("server key");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .expect("server certificate");
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    // The chain: the server's certificate, then the CA's.
    std::fs::write(&cert, format!("{}{}", leaf_cert.pem(), ca_cert.pem())).expect("write cert");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    Pki {
        ca_der: ca_cert.der().to_vec(),
        cert,
        key,
    }
}

/// A ureq agent trusting only `ca_der` (none: the default web roots).
pub(crate) fn agent(ca_der: Option<&[u8]>) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder();
    if let Some(der) = ca_der {
        let roots = vec![Certificate::from_der(der).to_owned()];
        tls = tls.root_certs(RootCerts::Specific(Arc::new(roots)));
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .tls_config(tls.build())
        .build()
        .new_agent()
}

pub(crate) fn get(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, ureq::Error> {
    let mut req = agent
        .get(url)
        .header("Authorization", format!("Bearer {KEY}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    read_answer(req.call()?)
}

pub(crate) fn spawn_tls(env: &Env, pki: &Pki, port: u16, extra: &[&str]) -> Child {
    tls_serve(env.cmd(), KEY, pki, port)
        .args(extra)
        .spawn()
        .expect("spawn serve")
}

/// `cmd` (the binary, perhaps under a wrapper) made `serve` over TLS with
/// `pki` on 127.0.0.1:`port`, admin key `key`, logging at info to a piped
/// stderr; more arguments may follow.
pub(crate) fn tls_serve(mut cmd: Command, key: &str, pki: &Pki, port: u16) -> Command {
    cmd.env("TOKENWARDEN_API_KEY", key)
        .env("TOKENWARDEN_LOG", "info")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--no-refresher", "--threads", "2", "--tls-cert"])
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(&pki.key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

pub(crate) fn wait_up(child: &mut Child, agent: &ureq::Agent, base: &str) {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("serve exited ({status}): {err}");
        }
        let last = match get(agent, &format!("{base}/healthz"), &[]) {
            Ok(a) => {
                assert_eq!(a.status, 200, "{}", a.body);
                return;
            }
            Err(e) => e,
        };
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("serve did not come up on {base}: {last}\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn terminate(mut child: Child) -> (Option<i32>, String) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let status = child.wait().expect("wait");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).ok();
    (status.code(), err)
}

/// `serve --tls-cert --tls-key` answers over HTTPS with the given certificate, and an `http://` origin is another site.
#[test]
fn serve_speaks_tls_with_the_given_certificate() {
    let env = Env::new();
    let g = env.login("tls", 3000);
    let pki = make_pki(env.dir.path());
    let port = free_port();
    let mut child = spawn_tls(&env, &pki, port, &[]);
    let trusted = agent(Some(&pki.ca_der));
    for base in [
        format!("https://localhost:{port}"),
        format!("https://127.0.0.1:{port}"),
    ] {
        wait_up(&mut child, &trusted, &base);
        let a = get(&trusted, &format!("{base}/v1/credentials/tls/token"), &[]).expect("https");
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["access_token"], g.access_token.as_str());
        // The server's own origin is https://…; http://… is another one.
        let own = base.clone();
        let a = get(
            &trusted,
            &format!("{base}/v1/credentials"),
            &[("Origin", &own)],
        )
        .expect("https");
        assert_eq!(a.status, 200, "{}", a.body);
        let plain_origin = base.replace("https://", "http://");
        let a = get(
            &trusted,
            &format!("{base}/v1/credentials"),
            &[("Origin", &plain_origin)],
        )
        .expect("https");
        assert_eq!((a.status, a.code().as_str()), (403, "forbidden_origin"));
    }
    let base = format!("https://localhost:{port}");

    // A client that does not trust the test CA refuses the server.
    let e = get(&agent(None), &format!("{base}/healthz"), &[]).expect_err("untrusted");
    assert!(
        e.to_string().to_lowercase().contains("cert")
            || e.to_string().to_lowercase().contains("tls"),
        "{e}"
    );

    // Plain HTTP on the TLS port gets no HTTP answer.
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let plain = raw(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(15),
    );
    assert!(plain.is_none(), "a plain answer on the TLS port: {plain:?}");

    // Connections that never finish a handshake hold no one else up (a
    // handshake on the accept thread would stop every other connection).
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(&[0x16, 0x03, 0x01])
        .expect("a byte of a ClientHello");
    for _ in 0..3 {
        let a = get(&trusted, &format!("{base}/v1/credentials/tls/token"), &[]).expect("https");
        assert_eq!(a.status, 200, "{}", a.body);
    }
    drop(idle);
    drop(slow);

    // Keep-alive: several requests on one agent (one connection).
    for _ in 0..5 {
        let a = get(&trusted, &format!("{base}/v1/credentials"), &[]).expect("https");
        assert_eq!(a.status, 200);
    }
    // A POST with a body crosses the relay too.
    let a = read_answer(
        trusted
            .post(format!("{base}/v1/credentials/tls/refresh"))
            .header("Authorization", format!("Bearer {KEY}"))
            .send("ignored body")
            .expect("https POST"),
    )
    .expect("answer");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_ne!(a.json()["access_token"], g.access_token.as_str());

    let (status, stderr) = terminate(child);
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("https://127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("clear text"), "{stderr}");
}

/// Missing, unreadable or mismatched TLS files, or one flag without the other, exit 2 saying which, never echoing a key.
#[test]
fn bad_tls_files_are_a_configuration_error() {
    let env = Env::new();
    let pki = make_pki(env.dir.path());
    let garbage = env.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").expect("write");
    let other = make_pki(&{
        let d = env.dir.path().join("other");
        std::fs::create_dir(&d).expect("mkdir");
        d
    });
    let missing = env.dir.path().join("missing.pem");
    let cases: [(&Path, &Path, &str); 4] = [
        (&garbage, &pki.key, "--tls-cert"),
        (&pki.cert, &garbage, "--tls-key"),
        (&missing, &pki.key, "--tls-cert"),
        (&pki.cert, &other.key, "pair"),
    ];
    for (cert, key, says) in cases {
        let out = env
            .cmd()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-refresher",
                "--tls-cert",
            ])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .expect("run serve");
        assert_eq!(code(&out), 2, "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(says), "{says}: {err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }
    // One without the other is a usage error.
    let out = env
        .cmd()
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&pki.cert)
        .output()
        .expect("run serve");
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
}

/// Plain HTTP on a public address warns loudly about clear text and points at `--tls-cert`.
#[test]
fn plain_http_off_loopback_warns_loudly() {
    let env = Env::new();
    let port = free_port();
    let mut cmd = env.cmd();
    cmd.env("TOKENWARDEN_API_KEY", KEY)
        .args(["serve", "--listen", &format!("0.0.0.0:{port}")])
        .arg("--no-refresher");
    let served = Served::spawn(cmd, ([127, 0, 0, 1], port).into());
    let (status, stderr) = served.terminate();
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        stderr.contains("clear text") && stderr.contains("--tls-cert"),
        "{stderr}"
    );
}

/// The console over HTTPS: its cookies are `Secure` too, a sign-in from the server's own `https://` origin works, and an `http://` origin is refused.
#[test]
fn the_console_over_tls_sets_secure_cookies() {
    let env = Env::new();
    let pki = make_pki(env.dir.path());
    let port = free_port();
    let mut child = spawn_tls(&env, &pki, port, &[]);
    let base = format!("https://127.0.0.1:{port}");
    wait_up(&mut child, &agent(Some(&pki.ca_der)), &base);
    // Redirects are answers here, not followed.
    let browser = {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let roots = vec![Certificate::from_der(&pki.ca_der).to_owned()];
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .build();
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(tls)
            .build()
            .new_agent()
    };
    let form = read_answer(
        browser
            .get(format!("{base}/ui/login"))
            .call()
            .expect("https"),
    )
    .expect("answer");
    assert_eq!(form.status, 200, "{}", form.body);
    let pre = form
        .header("set-cookie")
        .expect("a pre-session cookie")
        .to_owned();
    assert!(
        pre.starts_with("tw_pre=") && pre.ends_with("; Secure"),
        "{pre}"
    );
    let pre = pre.split(';').next().expect("name=value").to_owned();
    let marker = r#"name="csrf" value=""#;
    let at = form.body.find(marker).expect("csrf input") + marker.len();
    let csrf = &form.body[at..at + form.body[at..].find('"').expect("quote")];
    let sign_in = |origin: &str| {
        read_answer(
            browser
                .post(format!("{base}/ui/login"))
                .header("Cookie", &pre)
                .header("Origin", origin)
                .content_type("application/x-www-form-urlencoded")
                .send(format!("csrf={csrf}&key={KEY}"))
                .expect("https"),
        )
        .expect("answer")
    };
    let refused = sign_in(&format!("http://127.0.0.1:{port}"));
    assert_eq!(refused.status, 403, "{}", refused.body);
    let ok = sign_in(&base);
    assert_eq!(ok.status, 303, "{}", ok.body);
    let session = ok
        .headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with("tw_session="))
        .map(|(_, v)| v.clone())
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Strict")
            && session.ends_with("; Secure"),
        "{session}"
    );
    let _ = terminate(child);
}

/// The TCP ports process `pid` listens on (from its socket descriptors and
/// the kernel's table of listening sockets).
pub(crate) fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, …, st (0A: LISTEN), …, inode
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().expect("port");
                ports.push(u16::from_str_radix(port, 16).expect("hex port"));
            }
        }
    }
    ports
}

/// Behind the TLS front, tiny_http listens on an internal loopback port of
/// its own; a plain HTTP request sent there straight (any local process
/// can connect) is refused with 421 before it is routed — even with the
/// right key — while the same request over HTTPS is answered.
#[test]
fn the_tls_fronts_internal_port_is_no_way_around_tls() {
    let env = Env::new();
    env.login("tls", 3000);
    let pki = make_pki(env.dir.path());
    let port = free_port();
    let mut child = spawn_tls(&env, &pki, port, &[]);
    let trusted = agent(Some(&pki.ca_der));
    let base = format!("https://127.0.0.1:{port}");
    wait_up(&mut child, &trusted, &base);
    let internal: Vec<u16> = listening_ports(child.id())
        .into_iter()
        .filter(|p| *p != port)
        .collect();
    assert_eq!(internal.len(), 1, "one internal port: {internal:?}");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], internal[0]).into();
    let request = format!(
        "GET /v1/credentials/tls/token HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
         Authorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        internal[0]
    );
    let a = crate::common::http::raw(addr, request.as_bytes(), Duration::from_secs(10))
        .expect("an answer");
    assert_eq!(a.status, 421, "{}", a.body);
    assert!(!a.body.contains("access_token"), "{}", a.body);
    let a = get(
        &trusted,
        &format!("{base}/v1/credentials/tls/token"),
        &[("Authorization", &format!("Bearer {KEY}"))],
    )
    .expect("https");
    assert_eq!(a.status, 200, "{}", a.body);
    terminate(child);
}

/// A TLS client connection to 127.0.0.1:`port` trusting `ca_der`, its
/// handshake done.
pub(crate) fn tls_connect(
    port: u16,
    ca_der: &[u8],
) -> Option<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).ok()?;
    }
    Some(rustls::StreamOwned::new(conn, sock))
}
