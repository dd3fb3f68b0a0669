#![allow(clippy::unwrap_used)]

use super::*;
use std::collections::HashMap;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "s3cr3t:pa55";

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| vars.get(name).cloned()
}

fn uri(text: &str) -> Uri {
    text.parse().unwrap()
}

fn configured(url: &str) -> EgressSettings {
    EgressSettings { proxy: Some(ProxySetting::parse(url).unwrap()), ..Default::default() }
}

const COORDINATOR: &str = "https://coordinator.example.org:7070";
const IDP: &str = "https://keycloak.intern.klinik.de/realms/verbund/protocol/openid-connect/certs";

#[test]
fn the_environment_names_the_proxy_when_nothing_is_configured() {
    let none = Egress::resolve(&EgressSettings::default(), env(&[])).unwrap();
    assert_eq!(none.proxy_for(&uri(COORDINATOR)), None);
    assert!(none.describe(&uri(COORDINATOR)).contains("HTTPS_PROXY not set"));

    let set = Egress::resolve(&EgressSettings::default(), env(&[("HTTPS_PROXY", "http://proxy.local:3128")])).unwrap();
    assert_eq!(set.proxy_for(&uri(COORDINATOR)), Some("http://proxy.local:3128"));
    assert_eq!(set.proxy_for(&uri(IDP)), Some("http://proxy.local:3128"));
    assert!(set.describe(&uri(COORDINATOR)).contains("(from HTTPS_PROXY)"), "{}", set.describe(&uri(COORDINATOR)));

    // The lower-case spelling first, as curl reads them; an empty value counts as unset.
    let both = env(&[("https_proxy", "https://lower.local:8443"), ("HTTPS_PROXY", "http://upper.local:3128")]);
    let lower = Egress::resolve(&EgressSettings::default(), both).unwrap();
    assert_eq!(lower.proxy_for(&uri(COORDINATOR)), Some("https://lower.local:8443"));
    let empty = env(&[("https_proxy", " "), ("HTTPS_PROXY", "http://upper.local:3128")]);
    let upper = Egress::resolve(&EgressSettings::default(), empty).unwrap();
    assert_eq!(upper.proxy_for(&uri(COORDINATOR)), Some("http://upper.local:3128"));

    // Without a scheme, http:// (as curl reads it); the port defaults to the scheme's.
    let bare = Egress::resolve(&EgressSettings::default(), env(&[("HTTPS_PROXY", "proxy.local:3128")])).unwrap();
    assert_eq!(bare.proxy_for(&uri(COORDINATOR)), Some("http://proxy.local:3128"));
    let portless =
        Egress::resolve(&EgressSettings::default(), env(&[("HTTPS_PROXY", "https://proxy.local/")])).unwrap();
    assert_eq!(portless.proxy_for(&uri(COORDINATOR)), Some("https://proxy.local:443"));
}

#[test]
fn no_proxy_from_the_environment_sends_its_destinations_directly() {
    let vars = [("HTTPS_PROXY", "http://proxy.local:3128"), ("NO_PROXY", ".Intern.Klinik.DE, 10.0.0.0/8")];
    let egress = Egress::resolve(&EgressSettings::default(), env(&vars)).unwrap();
    assert_eq!(egress.proxy_for(&uri(IDP)), None);
    assert!(egress.describe(&uri(IDP)).contains("no_proxy"));
    assert_eq!(egress.proxy_for(&uri("https://10.1.2.3:7070")), None);
    assert_eq!(egress.proxy_for(&uri(COORDINATOR)), Some("http://proxy.local:3128"));

    let lower_first = [("HTTPS_PROXY", "http://proxy.local:3128"), ("no_proxy", "*"), ("NO_PROXY", "x.example")];
    let egress = Egress::resolve(&EgressSettings::default(), env(&lower_first)).unwrap();
    assert_eq!(egress.proxy_for(&uri(COORDINATOR)), None, "no_proxy = * sends everything directly");
    // Odd entries in the environment are skipped (with a warning), not fatal.
    let odd = [("HTTPS_PROXY", "http://proxy.local:3128"), ("NO_PROXY", "<local>,coordinator.example.org")];
    let egress = Egress::resolve(&EgressSettings::default(), env(&odd)).unwrap();
    assert_eq!(egress.proxy_for(&uri(COORDINATOR)), None);
}

#[test]
fn the_configured_setting_wins_over_the_environment() {
    let vars = [("HTTPS_PROXY", "http://env-proxy.local:3128"), ("NO_PROXY", "coordinator.example.org")];
    let egress = Egress::resolve(&configured("https://proxy.klinik.de:8443"), env(&vars)).unwrap();
    assert_eq!(egress.proxy_for(&uri(COORDINATOR)), Some("https://proxy.klinik.de:8443"), "NO_PROXY is not read");
    assert!(egress.describe(&uri(COORDINATOR)).contains("(configured)"));

    let mut settings = configured("http://proxy.klinik.de:3128");
    settings.no_proxy = vec!["keycloak.intern.klinik.de".into()];
    let egress = Egress::resolve(&settings, env(&vars)).unwrap();
    assert_eq!(egress.proxy_for(&uri(IDP)), None);
    assert_eq!(egress.proxy_for(&uri(COORDINATOR)), Some("http://proxy.klinik.de:3128"));

    let direct = Egress::resolve(&configured("direct"), env(&vars)).unwrap();
    assert_eq!(direct.proxy_for(&uri(COORDINATOR)), None);
    assert!(direct.describe(&uri(COORDINATOR)).contains("proxy = \"direct\""));
}

#[test]
fn the_proxy_setting_is_read_with_clear_refusals() {
    assert_eq!(ProxySetting::parse("direct").unwrap(), ProxySetting::Direct);
    assert_eq!(ProxySetting::parse("DIRECT").unwrap(), ProxySetting::Direct);
    assert!(matches!(ProxySetting::parse("https://proxy.local:8443").unwrap(), ProxySetting::Url(_)));
    let e = ProxySetting::parse(&format!("http://alice:{PASSWORD}@proxy.local:3128")).unwrap_err();
    assert!(e.contains("proxy_credentials") && !e.contains(PASSWORD) && !e.contains("alice"), "{e}");
    let e = ProxySetting::parse("proxy.local:3128").unwrap_err();
    assert!(e.contains("needs a scheme"), "{e}");
    let e = ProxySetting::parse("socks5://proxy.local:1080").unwrap_err();
    assert!(e.contains("socks5:// proxies are not supported"), "{e}");
    let e = ProxySetting::parse("http://").unwrap_err();
    assert!(e.contains("proxy 'http://'"), "{e}");

    let e = Egress::resolve(&EgressSettings::default(), env(&[("HTTPS_PROXY", "socks5h://p.local:1080")])).unwrap_err();
    assert!(e.to_string().starts_with("HTTPS_PROXY: socks5h:// proxies are not supported"), "{e}");
    let bad = format!("http://alice:{PASSWORD}@proxy local:3128");
    let e = Egress::resolve(&EgressSettings::default(), env(&[("https_proxy", &bad)])).unwrap_err().to_string();
    assert!(e.starts_with("https_proxy: ") && e.contains("not a URL") && !e.contains(PASSWORD), "{e}");
}

#[test]
fn contradicting_settings_are_refused() {
    let cases: [(EgressSettings, &str); 5] = [
        (
            EgressSettings { credentials: Some("p".into()), ..configured("direct") },
            "proxy_credentials: is set, but proxy = \"direct\"",
        ),
        (EgressSettings { ca: Some("ca.pem".into()), ..configured("direct") }, "proxy_ca: is set"),
        (
            EgressSettings { ca: Some("ca.pem".into()), ..configured("http://p.local:3128") },
            "proxy_ca: is for an https:// proxy",
        ),
        (
            EgressSettings { no_proxy: vec!["x.example".into()], ..Default::default() },
            "no_proxy: applies to the proxy named by `proxy`",
        ),
        (
            EgressSettings { connect_timeout: Duration::ZERO, ..Default::default() },
            "connect_timeout_seconds: must be at least 1",
        ),
    ];
    for (settings, expected) in cases {
        let e = settings.validate().unwrap_err().to_string();
        assert!(e.starts_with(expected), "{e}");
    }
    let bad = EgressSettings { no_proxy: vec!["<local>".into()], ..configured("http://p.local:3128") };
    assert!(bad.validate().unwrap_err().to_string().contains("\"<local>\""));
}

#[test]
fn the_credentials_file_is_read_once_and_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}")));
    for (name, content) in [
        ("plain", format!("alice:{PASSWORD}")),
        ("newline", format!("alice:{PASSWORD}\n")),
        ("crlf", format!("alice:{PASSWORD}\r\nsecond line ignored\r\n")),
        ("bom", format!("\u{feff}alice:{PASSWORD}\n")),
    ] {
        let credentials = ProxyCredentials::load(&write(name, content.as_bytes())).unwrap();
        assert_eq!(credentials.authorization, expected, "{name}");
    }
    let secret = format!("alice{PASSWORD}"); // no ':' before the password's own
    for (name, content, problem) in [
        ("empty", &b""[..], "is empty"),
        ("blank-first-line", &b"\nalice:hunter2\n"[..], "is empty"),
        ("no-colon", secret.as_bytes(), "holds no ':'"),
        ("no-user", &b":hunter2\n"[..], "names no user"),
        ("binary", &b"al\xffice:hunter2"[..], "is not UTF-8"),
        ("control", &b"alice:hunter\x002"[..], "control characters"),
    ] {
        let path =
            if name == "no-colon" { write(name, secret.replace(':', "").as_bytes()) } else { write(name, content) };
        let e = ProxyCredentials::load(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains(problem), "{name}: {e}");
        assert!(!e.contains("hunter") && !e.contains("s3cr3t"), "{name}: the content leaks: {e}");
    }
    let e = ProxyCredentials::load(&dir.path().join("missing")).unwrap_err().to_string();
    assert!(e.contains("missing: cannot be read"), "{e}");
    // At resolution, a bad file stops the start.
    let mut settings = configured("http://p.local:3128");
    settings.credentials = Some(dir.path().join("empty"));
    assert!(Egress::resolve(&settings, env(&[])).unwrap_err().to_string().contains("is empty"));
}

#[test]
fn credentials_appear_in_no_message_and_no_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.credentials");
    std::fs::write(&path, format!("alice:{PASSWORD}\n")).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}"));
    let mut settings = configured("https://proxy.local:8443");
    settings.credentials = Some(path.clone());
    let egress = Egress::resolve(&settings, env(&[])).unwrap();
    let from_env = Egress::resolve(
        &EgressSettings::default(),
        env(&[("HTTPS_PROXY", &format!("http://alice:{}@proxy.local:3128", PASSWORD.replace(':', "%3A")))]),
    )
    .unwrap();
    assert_eq!(
        from_env.proxy.as_ref().unwrap().credentials.as_ref().unwrap().authorization,
        format!("Basic {encoded}")
    );
    let errors = [
        EgressError::ProxyAuthRequired {
            proxy: "http://p:1".into(),
            target: "t:1".into(),
            offered: vec!["Basic".into()],
        },
        EgressError::ProxyAuthRejected { proxy: "http://p:1".into(), target: "t:1".into(), offered: vec![] },
    ];
    let mut shown = vec![
        format!("{egress:?}"),
        format!("{from_env:?}"),
        format!("{settings:?}"),
        egress.describe(&uri(COORDINATOR)),
        from_env.describe(&uri(COORDINATOR)),
    ];
    for e in &errors {
        shown.push(e.to_string());
        shown.push(format!("{e:?}"));
    }
    for text in shown {
        for secret in [PASSWORD, "s3cr3t", encoded.as_str(), "alice"] {
            assert!(!text.contains(secret), "'{secret}' shows in: {text}");
        }
    }
    assert!(egress.describe(&uri(COORDINATOR)).contains("Basic credentials from file"));
    assert!(from_env.describe(&uri(COORDINATOR)).contains("Basic credentials from the URL in HTTPS_PROXY"));
}

#[test]
fn auth_messages_say_which_case_it_is() {
    let required = EgressError::ProxyAuthRequired {
        proxy: "http://127.0.0.1:3128".into(),
        target: "coordinator:7070".into(),
        offered: vec!["Basic".into()],
    };
    assert_eq!(
        required.to_string(),
        "the proxy http://127.0.0.1:3128 asks for credentials (407) to reach coordinator:7070; name a file holding \
         user:password with proxy_credentials"
    );
    let ntlm = EgressError::ProxyAuthRejected {
        proxy: "http://127.0.0.1:3128".into(),
        target: "coordinator:7070".into(),
        offered: vec!["NTLM".into(), "Negotiate".into()],
    };
    let text = ntlm.to_string();
    assert!(text.starts_with("the proxy http://127.0.0.1:3128 refused these credentials (407)"), "{text}");
    assert!(text.contains("offers only NTLM, Negotiate, but verbund authenticates with Basic"), "{text}");
}

/// A fake proxy on loopback that answers one connection with `answer` (and then holds it
/// open), or holds it without answering when `answer` is empty. Returns its address and
/// the request it received.
async fn fake_proxy(answer: &'static [u8]) -> (Uri, tokio::sync::oneshot::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let mut request = Vec::new();
        let mut buf = [0u8; 512];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
        if answer == b"close" {
            return;
        }
        let _ = stream.write_all(answer).await;
        // Hold the connection until the client goes.
        let _ = stream.read(&mut buf).await;
    });
    (uri(&format!("http://{address}")), rx)
}

fn through(proxy: &Uri, credentials: Option<PathBuf>, timeout: Duration) -> Egress {
    let settings = EgressSettings {
        proxy: Some(ProxySetting::Url(proxy.clone())),
        credentials,
        connect_timeout: timeout,
        ..Default::default()
    };
    Egress::resolve(&settings, env(&[])).unwrap()
}

const TARGET: &str = "https://127.0.0.1:7070";

#[tokio::test]
async fn a_tunnel_opens_on_200_and_nothing_after_the_header_is_consumed() {
    let (proxy, request) = fake_proxy(b"HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\nhello").await;
    let mut stream = through(&proxy, None, Duration::from_secs(5)).connect(&uri(TARGET)).await.unwrap();
    let mut hello = [0u8; 5];
    stream.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello");
    let request = request.await.unwrap();
    assert!(request.starts_with("CONNECT 127.0.0.1:7070 HTTP/1.1\r\nHost: 127.0.0.1:7070\r\n"), "{request}");
    assert!(!request.contains("Proxy-Authorization"), "{request}");
}

#[tokio::test]
async fn a_407_is_reported_as_missing_or_refused_credentials() {
    let (proxy, _) = fake_proxy(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n").await;
    let e = through(&proxy, None, Duration::from_secs(5)).connect(&uri(TARGET)).await.unwrap_err();
    assert!(matches!(&e, EgressError::ProxyAuthRequired { offered, .. } if offered == &["Basic"]), "{e:?}");
    assert!(e.to_string().contains(&format!("the proxy {} asks for credentials", settings::url_text(&proxy))), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials");
    std::fs::write(&path, format!("alice:{PASSWORD}\n")).unwrap();
    let (proxy, request) =
        fake_proxy(b"HTTP/1.1 407 Nope\r\nProxy-Authenticate: Negotiate\r\nProxy-Authenticate: NTLM\r\n\r\n").await;
    let e = through(&proxy, Some(path), Duration::from_secs(5)).connect(&uri(TARGET)).await.unwrap_err();
    assert!(matches!(&e, EgressError::ProxyAuthRejected { .. }), "{e:?}");
    assert!(
        e.to_string().contains("refused these credentials") && e.to_string().contains("offers only Negotiate, NTLM")
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}"));
    assert!(request.await.unwrap().contains(&format!("\r\nProxy-Authorization: Basic {encoded}\r\n")));
}

#[tokio::test]
async fn a_proxy_that_refuses_closes_or_answers_garbage_is_named_at_once() {
    let timeout = Duration::from_secs(5);
    let (proxy, _) = fake_proxy(b"HTTP/1.1 403 Forbidden by policy\r\n\r\n").await;
    let e = through(&proxy, None, timeout).connect(&uri(TARGET)).await.unwrap_err();
    assert!(
        matches!(&e, EgressError::ProxyRefused { status: 403, reason, .. } if reason == "Forbidden by policy"),
        "{e:?}"
    );

    let (proxy, _) = fake_proxy(b"close").await;
    let e = through(&proxy, None, timeout).connect(&uri(TARGET)).await.unwrap_err();
    assert!(matches!(e, EgressError::ProxyClosed { .. }), "{e:?}");
    assert!(e.to_string().contains(&settings::url_text(&proxy)), "{e}");

    // Garbage is refused at its first bytes, although the other side keeps the line open.
    let started = Instant::now();
    let (proxy, _) = fake_proxy(b"SSH-2.0-OpenSSH_9.6\r\n").await;
    let e = through(&proxy, None, timeout).connect(&uri(TARGET)).await.unwrap_err();
    assert!(matches!(&e, EgressError::ProxyGarbage { what, .. } if what.contains("not HTTP")), "{e:?}");
    let (proxy, _) = fake_proxy(b"HTTP/1.1 OK\r\n\r\n").await;
    let e = through(&proxy, None, timeout).connect(&uri(TARGET)).await.unwrap_err();
    assert!(matches!(&e, EgressError::ProxyGarbage { what, .. } if what.contains("malformed status line")), "{e:?}");
    assert!(started.elapsed() < timeout);
}

#[tokio::test]
async fn a_stalling_proxy_costs_the_connect_timeout_and_no_more() {
    let (proxy, request) = fake_proxy(b"").await;
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let e = through(&proxy, None, timeout).connect(&uri(TARGET)).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, EgressError::ProxyTimeout { .. }), "{e:?}");
    assert!(e.to_string().contains(&settings::url_text(&proxy)), "{e}");
    assert!(took >= timeout && took < Duration::from_secs(3), "{took:?}");
    assert!(request.await.is_ok(), "the proxy did get the request");
}

#[tokio::test]
async fn unreachable_proxies_and_destinations_are_named() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = uri(&format!("http://{closed}"));
    let e = through(&proxy, None, Duration::from_secs(5)).connect(&uri(TARGET)).await.unwrap_err();
    assert!(matches!(e, EgressError::ProxyUnreachable { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("cannot reach the proxy http://{closed}")), "{e}");
    let e = Egress::direct().connect(&uri(&format!("https://{closed}"))).await.unwrap_err();
    assert!(e.to_string().starts_with(&format!("cannot connect to {closed}")), "{e}");
}
