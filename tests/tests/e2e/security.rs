//! Mutual TLS on the node link, and researcher tokens checked at the coordinator and, on
//! their own authority, at every node.

use base64::Engine;
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use verbund_node::{Catalogue, Refusal};
use verbund_proto::v1 as pb;
use verbund_proto::v1::node_link_client::NodeLinkClient;
use verbund_security::files::Overwrite;
use verbund_security::pki::{NetworkCa, Validity};
use verbund_security::tls::TlsFiles;
use verbund_security::token::{DevIssuer, now_unix};
use verbund_tests::compare::ints;
use verbund_tests::{Network, PROJECT, memory_catalogue, open_policy, status, with_token};

fn vitals(rows: i64) -> Catalogue {
    let ids: Vec<String> = (0..rows).map(|i| format!("p{i}")).collect();
    let batch = RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(ids)) as _),
        ("value", Arc::new(Int64Array::from_iter_values(0..rows)) as _),
    ])
    .unwrap();
    memory_catalogue("vitals", vec![batch], &["value"])
}

const COUNT: &str = "SELECT count(*) AS n FROM vitals";

/// The error and each of its sources in turn, joined with ": " (a transport error's own
/// text says little; the reason is further down the chain).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    parts.join(": ")
}

/// TLS for a node link client from files as they are (no local expiry check, unlike
/// `node_client_tls`, so that the coordinator's own check is what refuses).
fn raw_client_tls(files: &TlsFiles, server_name: &str) -> tonic::transport::ClientTlsConfig {
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(&files.ca)))
        .identity(tonic::transport::Identity::from_pem(read(&files.cert), read(&files.key)))
        .domain_name(server_name)
}

/// The coordinator's verdict on a client's certificate, seen from a bare TLS client: in TLS
/// 1.3 the client's side of the handshake ends before the server has checked the client's
/// certificate, and a refusal arrives as the server's alert on the first read (a gRPC client
/// only sees the connection close). The client trusts the network's CA and presents
/// `identity`'s certificate, if any.
async fn tls_verdict(network: &Network, identity: Option<&TlsFiles>) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in verbund_security::certs::load_certs(&network.pki.ca_path).unwrap() {
        roots.add(cert).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some(files) => builder
            .with_client_auth_cert(
                verbund_security::certs::load_certs(&files.cert).unwrap(),
                verbund_security::certs::load_key(&files.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let address = network.link.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {}", chain(&e)))?;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(0)) => Err("closed without a word".into()),
        Ok(Ok(_)) => Ok(()), // the server's first HTTP/2 frames: the certificate was taken
        Ok(Err(e)) => Err(format!("read: {}", chain(&e))),
        Err(_) => Err("no answer".into()),
    }
}

/// What the coordinator answers a plaintext HTTP/2 client: the raw bytes, up to its close.
async fn plaintext_answer(network: &Network) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = network.link.trim_start_matches("https://");
    let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await.unwrap().unwrap();
    answer
}

/// Opens the node link at `address` (the network's link address unless given) with `tls`
/// (plain TCP without) and claims `site` in the Hello. Ok when the coordinator welcomes it;
/// else where it failed and the whole error chain.
async fn try_link(
    network: &Network,
    address: Option<&str>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    site: &str,
) -> Result<(), String> {
    let address = address.map_or_else(|| network.link.clone(), str::to_string);
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(address).unwrap().connect_timeout(Duration::from_secs(3));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {}", chain(&e)))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = pb::Hello { site: site.into(), catalogue: Some(pb::Catalogue::default()), ..Default::default() };
    tx.send(pb::NodeMessage { kind: Some(pb::node_message::Kind::Hello(hello)) }).await.unwrap();
    let refused = |s: tonic::Status| format!("{:?}: {}", s.code(), chain(&s));
    let response =
        tokio::time::timeout(Duration::from_secs(5), NodeLinkClient::new(channel).attach(ReceiverStream::new(rx)))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(refused)?;
    let mut inbound = response.into_inner();
    match tokio::time::timeout(Duration::from_secs(5), inbound.message()).await {
        Ok(Ok(Some(pb::CoordinatorMessage { kind: Some(pb::coordinator_message::Kind::Welcome(_)) }))) => Ok(()),
        Ok(Ok(other)) => Err(format!("unexpected {other:?}")),
        Ok(Err(s)) => Err(refused(s)),
        Err(_) => Err("no answer".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_link_admits_only_known_sites_with_valid_certificates() {
    let network = Network::start(&["good", "expired"]).await;
    let good = network.pki.site("good");
    let (tls, _) = verbund_security::tls::node_client_tls(&good, "127.0.0.1").unwrap();
    assert_eq!(try_link(&network, None, Some(tls), "good").await, Ok(()), "the normal path");
    assert_eq!(tls_verdict(&network, Some(&good)).await, Ok(()));
    // Refused in the TLS handshake: a gRPC client sees only its connection end (how exactly
    // varies: closed, broken pipe), never an answer of the service; the server's alert says why.
    let refused_in_tls = |err: &str, what: &str| {
        assert!(err.contains("transport error") && !err.contains("PermissionDenied"), "{what}: {err}");
    };

    // A certificate from another CA.
    let dir = tempfile::tempdir().unwrap();
    let rogue_ca = NetworkCa::create("rogue", Validity::days(10)).unwrap();
    let (cert, key) =
        rogue_ca.issue_site("good", Validity::days(1)).unwrap().write(dir.path(), "good", Overwrite::Refuse).unwrap();
    // The rogue client trusts the real coordinator (real CA) but presents the rogue cert.
    let rogue = TlsFiles { ca: network.pki.ca_path.clone(), cert, key };
    let err = try_link(&network, None, Some(raw_client_tls(&rogue, "127.0.0.1")), "good").await.unwrap_err();
    refused_in_tls(&err, "a certificate from another CA");
    let err = tls_verdict(&network, Some(&rogue)).await.unwrap_err();
    assert_eq!(err, "read: received fatal alert: UnknownCA", "a certificate from another CA");

    // An expired certificate (issued by the right CA). A node does not even try with it.
    let expired = network
        .pki
        .site_with("expired", Validity { starts_in: time::Duration::days(-10), lasts: time::Duration::days(1) });
    let err = chain(&verbund_security::tls::node_client_tls(&expired, "127.0.0.1").unwrap_err());
    assert!(err.contains("expired.pem: has expired; renew it"), "{err}");
    let err = try_link(&network, None, Some(raw_client_tls(&expired, "127.0.0.1")), "expired").await.unwrap_err();
    refused_in_tls(&err, "an expired certificate");
    let err = tls_verdict(&network, Some(&expired)).await.unwrap_err();
    assert_eq!(err, "read: received fatal alert: CertificateExpired", "an expired certificate");
    assert!(!network.coordinator.sites().is_connected("expired"));

    // TLS without a client certificate.
    let anonymous = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&network.pki.ca_path).unwrap()))
        .domain_name("127.0.0.1");
    let err = try_link(&network, None, Some(anonymous), "good").await.unwrap_err();
    refused_in_tls(&err, "no client certificate");
    let err = tls_verdict(&network, None).await.unwrap_err();
    assert_eq!(err, "read: received fatal alert: CertificateRequired", "no client certificate");

    // A valid certificate for a site the network does not know: TLS takes it, the link does not.
    let intruder = network.pki.site("intruder");
    assert_eq!(tls_verdict(&network, Some(&intruder)).await, Ok(()));
    let err = try_link(&network, None, Some(raw_client_tls(&intruder, "127.0.0.1")), "intruder").await.unwrap_err();
    assert!(err.starts_with("PermissionDenied: ") && err.contains("site 'intruder' is not a member"), "{err}");

    // A Hello that claims another site than the certificate names.
    let err = try_link(&network, None, Some(raw_client_tls(&good, "127.0.0.1")), "expired").await.unwrap_err();
    assert!(
        err.starts_with("PermissionDenied: ")
            && err.contains("the certificate identifies site 'good', but the Hello claims 'expired'"),
        "{err}"
    );

    // Plain TCP: refused, and what comes back is a TLS alert (fatal, decode_error), not HTTP/2.
    let plain = network.link.replace("https://", "http://");
    assert!(try_link(&network, Some(&plain), None, "good").await.is_err(), "a plaintext client");
    assert_eq!(plaintext_answer(&network).await, [21, 3, 3, 0, 2, 2, 50], "a TLS alert record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_coordinator_with_the_wrong_name() {
    let network = Network::start(&["careful"]).await;
    let mut options = network.link_options("careful");
    options.coordinator_name = "coordinator.other-network.example".into();
    // The TLS the node builds from these options refuses the coordinator's certificate.
    let (tls, _) = verbund_security::tls::node_client_tls(&options.tls, &options.coordinator_name).unwrap();
    let err = try_link(&network, None, Some(tls), "careful").await.unwrap_err();
    assert!(
        err.starts_with("connect: ")
            && err.contains(
                r#"invalid peer certificate: certificate not valid for name "coordinator.other-network.example""#
            ),
        "{err}"
    );
    let _node = verbund_tests::NodeProcess::start(network.node("careful", vitals(5), open_policy(1)), options);
    assert!(!network.coordinator.sites().wait_for(&["careful"], Duration::from_millis(1500)).await);

    // Nor does a node connect to a coordinator whose certificate its own CA did not issue.
    let dir = tempfile::tempdir().unwrap();
    let (other_ca, _) = NetworkCa::create("other", Validity::days(10)).unwrap().write(dir.path()).unwrap();
    let distrusting = TlsFiles { ca: other_ca, ..network.pki.site("careful") };
    let (tls, _) = verbund_security::tls::node_client_tls(&distrusting, "127.0.0.1").unwrap();
    let err = try_link(&network, None, Some(tls), "careful").await.unwrap_err();
    assert!(err.starts_with("connect: ") && err.contains("invalid peer certificate: UnknownIssuer"), "{err}");
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims(issuer: &DevIssuer) -> serde_json::Value {
    let now = now_unix();
    serde_json::json!({
        "sub": "mallory", "projects": [PROJECT], "roles": ["researcher"],
        "iss": issuer.issuer, "aud": issuer.audience, "iat": now, "nbf": now, "exp": now + 600,
    })
}

/// (name, token, the refusal must mention)
fn attacks(issuer: &DevIssuer) -> Vec<(&'static str, String, &'static str)> {
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(issuer);
        edit(&mut c);
        issuer.sign(&c, Some(&issuer.kid))
    };
    let valid = issuer.sign(&claims(issuer), Some(&issuer.kid));
    let parts: Vec<&str> = valid.split('.').collect();

    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"test-key"}"#),
        b64(claims(issuer).to_string().as_bytes())
    );
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(issuer.kid.clone());
    let confused = jsonwebtoken::encode(
        &hs_header,
        &claims(issuer),
        &jsonwebtoken::EncodingKey::from_secret(issuer.jwks.as_bytes()),
    )
    .unwrap();
    let mut tampered_claims = claims(issuer);
    tampered_claims["projects"] = serde_json::json!([PROJECT, "everything"]);
    tampered_claims["sub"] = serde_json::json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(tampered_claims.to_string().as_bytes()), parts[2]);
    let rogue = DevIssuer::generate("rogue-key", &issuer.issuer, &issuer.audience).unwrap();
    let unknown_kid = rogue.sign(&claims(issuer), Some("rogue-key"));
    let impostor = rogue.sign(&claims(issuer), Some(&issuer.kid));
    let now = now_unix();

    vec![
        ("alg none", none, "not accepted"),
        ("HS256 with the public key as secret", confused, "not accepted"),
        (
            "expired",
            with(&|c| {
                c["exp"] = serde_json::json!(now - 3600);
                c["nbf"] = serde_json::json!(now - 7200);
            }),
            "expired",
        ),
        (
            "not yet valid",
            with(&|c| {
                c["nbf"] = serde_json::json!(now + 3600);
                c["exp"] = serde_json::json!(now + 7200);
            }),
            "not valid yet",
        ),
        ("wrong issuer", with(&|c| c["iss"] = serde_json::json!("https://evil.example")), "issuer"),
        ("wrong audience", with(&|c| c["aud"] = serde_json::json!("another-network")), "audience"),
        ("tampered payload", tampered, "signature"),
        ("unknown kid", unknown_kid, "does not know"),
        ("another key under a known kid", impostor, "signature"),
        (
            "missing sub",
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            "sub",
        ),
        (
            "missing projects",
            with(&|c| {
                c.as_object_mut().unwrap().remove("projects");
            }),
            "projects",
        ),
        (
            "missing exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "exp",
        ),
        ("garbage", "not.a.token".to_string(), "malformed"),
        ("no token", String::new(), "no token"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_attacks_are_refused_at_the_coordinator_and_at_the_node() {
    let mut network = Network::start(&["site-a"]).await;
    let node = network.node("site-a", vitals(20), open_policy(1));
    network.add_node(node).await;
    // A second instance of the same node, to ask directly as a hostile coordinator would.
    let direct = network.node("site-a", vitals(20), open_policy(1));
    let query = pb::AggregateQuery {
        dataset: "vitals".into(),
        aggregates: vec![pb::Aggregate { kind: pb::AggregateKind::CountRows as i32, ..Default::default() }],
        ..Default::default()
    };

    for (name, token, says) in attacks(&network.pki.issuer) {
        let request = pb::ResearchQuery { sql: COUNT.into(), project: PROJECT.into(), ..Default::default() };
        let status = network.client().await.query(with_token(request, &token)).await.expect_err(name);
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{name}: {}", status.message());
        assert!(status.message().contains(says), "{name}: '{}' should say '{says}'", status.message());

        let forwarded = pb::NodeQuery {
            query_id: "direct".into(),
            identity: Some(pb::Identity {
                researcher_token: token.clone(),
                researcher: "mallory".into(),
                project: PROJECT.into(),
            }),
            timeout_ms: 5000,
            query: Some(query.clone()),
            model: None,
        };
        match direct.handle(&forwarded).await {
            Err(refusal @ Refusal::Unauthenticated { .. }) => {
                assert!(refusal.to_string().contains(says), "{name} at the node: '{refusal}'");
            }
            Err(other) => panic!("{name} at the node: refused for another reason: {other}"),
            Ok(_) => panic!("{name}: the node answered"),
        }
    }

    // The honest path still works, at the coordinator and directly.
    let (table, _) = network.query(COUNT).await.unwrap();
    assert_eq!(ints(&table, 0), vec![Some(20)]);
    let forwarded = pb::NodeQuery {
        query_id: "direct-ok".into(),
        identity: Some(pb::Identity {
            researcher_token: network.pki.token(),
            researcher: "alice".into(),
            project: PROJECT.into(),
        }),
        timeout_ms: 5000,
        query: Some(query),
        model: None,
    };
    assert!(direct.handle(&forwarded).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_are_decided_by_each_site() {
    let mut network = Network::start(&["open", "closed"]).await;
    let node = network.node("open", vitals(7), open_policy(1).allowing("oncology"));
    network.add_node(node).await;
    let node = network.node("closed", vitals(9), open_policy(1));
    network.add_node(node).await;
    let issuer = &network.pki.issuer;

    // A valid token for a project that one site allows and the other does not.
    let token = issuer.issue("bob", &["oncology"], &["researcher"], Duration::from_secs(600));
    let request = pb::ResearchQuery { sql: COUNT.into(), project: "oncology".into(), ..Default::default() };
    let response = network.client().await.query(with_token(request, &token)).await.unwrap().into_inner();
    assert_eq!(status(&response, "open").outcome(), pb::SiteOutcome::Answered);
    let closed = status(&response, "closed");
    assert_eq!(closed.outcome(), pb::SiteOutcome::Refused);
    assert!(closed.message.contains("'oncology' is not allowed at site closed"), "{}", closed.message);
    assert_eq!(ints(&verbund_tests::decode(&response.arrow_ipc).unwrap(), 0), vec![Some(7)]);

    // Asking in a project the token does not grant: refused at the coordinator.
    let request = pb::ResearchQuery { sql: COUNT.into(), project: PROJECT.into(), ..Default::default() };
    let status = network.client().await.query(with_token(request, &token)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("does not grant project"), "{}", status.message());

    // Listing sites needs a valid token too.
    let status = network.client().await.list_sites(pb::ListSitesRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_while_the_network_runs() {
    let mut network = Network::start(&["rotating"]).await;
    let node = network.node("rotating", vitals(11), open_policy(1));
    network.add_node(node).await;
    let list = || network.list_sites();
    let before = list().await;
    let site_expiry = before.sites[0].certificate_not_after_unix;

    // The site gets a renewed certificate (longer validity): the node notices and reconnects.
    network.pki.site_with("rotating", Validity::days(40));
    let started = std::time::Instant::now();
    loop {
        let now = list().await;
        if now.sites[0].connected && now.sites[0].certificate_not_after_unix > site_expiry + 86400 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the renewed site certificate was not taken up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (table, _) = network.query(COUNT).await.unwrap();
    assert_eq!(ints(&table, 0), vec![Some(11)]);

    // The coordinator gets a new certificate: new connections see it, queries keep working.
    let coordinator_expiry = before.coordinator_certificate_not_after_unix;
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    network
        .pki
        .ca
        .issue_coordinator(&names, Validity::days(3))
        .unwrap()
        .write(network.pki.dir.path(), "coordinator", Overwrite::Replace)
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if list().await.coordinator_certificate_not_after_unix < coordinator_expiry - 86400 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the coordinator did not reload its certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (table, response) = network.query(COUNT).await.unwrap();
    assert_eq!(status(&response, "rotating").outcome(), pb::SiteOutcome::Answered);
    assert_eq!(ints(&table, 0), vec![Some(11)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_keys_can_come_from_the_identity_providers_jwks_url() {
    let pki = verbund_tests::Pki::new();
    let url = verbund_tests::serve_jwks(&pki.coordinator, pki.issuer.jwks.clone()).await;
    let mut config = pki.auth.clone();
    config.jwks_file = None;
    config.jwks_url = Some(url.parse().unwrap());
    config.jwks_ca = Some(pki.ca_path.clone());
    let verifier = verbund_security::token::Verifier::from_config(&config).await.unwrap();
    assert_eq!(verifier.verify(&pki.token()).unwrap().sub, "alice");

    // A provider whose certificate the configured CA did not issue is not trusted.
    let other = verbund_tests::Pki::new();
    config.jwks_ca = Some(other.ca_path.clone());
    let err = verbund_security::token::Verifier::from_config(&config).await.unwrap_err().to_string();
    assert!(err.contains("cannot fetch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_request_takes_up_a_renewed_site_certificate_at_once() {
    let mut network = Network::start(&["reloading"]).await;
    let node: std::sync::Arc<verbund_node::Node> = network.node("reloading", vitals(3), open_policy(1)).into();
    let mut options = network.link_options("reloading");
    options.tls_reload = Duration::from_secs(3600); // only the reload request can notice
    network.add_node_with(node.clone(), options).await;
    let expiry = || async {
        let sites = network.list_sites().await;
        (sites.sites[0].connected, sites.sites[0].certificate_not_after_unix)
    };
    let (_, before) = expiry().await;
    node.check_tls_files(); // unchanged files: the link stays as it is
    tokio::time::sleep(Duration::from_millis(200)).await; // (let the node look before the renewal)
    assert_eq!(expiry().await, (true, before));
    network.pki.site_with("reloading", Validity::days(40));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(expiry().await, (true, before), "nothing happens before the reload request");
    node.check_tls_files(); // as SIGHUP does
    let started = std::time::Instant::now();
    while expiry().await.1 <= before + 86400 {
        assert!(started.elapsed() < Duration::from_secs(10), "the renewed certificate was not taken up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (table, _) = network.query(COUNT).await.unwrap();
    assert_eq!(ints(&table, 0), vec![Some(3)]);
}
