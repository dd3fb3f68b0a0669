//! Sites behind a hospital's outbound proxy: open, asking for Basic credentials, reached
//! over TLS with the hospital's own CA, chosen by the environment (`HTTPS_PROXY`,
//! `NO_PROXY`), refusing or stalling. The coordinator link and the fetch of the identity
//! provider's keys go the same way.

use crate::resilience::{fast_node, vitals};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use verbund_node::{Node, NodeConfig};
use verbund_proto::v1 as pb;
use verbund_security::egress::{Egress, EgressError, EgressSettings, ProxySetting};
use verbund_security::files::Overwrite;
use verbund_security::pki::{NetworkCa, Validity};
use verbund_security::tls::TlsFiles;
use verbund_security::token::Verifier;
use verbund_tests::compare::ints;
use verbund_tests::proxy::{Behaviour, Proxy};
use verbund_tests::{Network, NodeProcess, open_policy, status, wait_until};

const COUNT: &str = "SELECT count(*) AS n FROM vitals";
const USER: &str = "uniklinik-nord-node";
const PASSWORD: &str = "c0rrect:h0rse-battery";

/// The way out through `proxy`, with the settings `configure` adds; no environment.
fn through(proxy: &Proxy, configure: impl FnOnce(&mut EgressSettings)) -> Arc<Egress> {
    let mut settings = EgressSettings { proxy: Some(ProxySetting::Url(proxy.url())), ..Default::default() };
    configure(&mut settings);
    Arc::new(Egress::resolve(&settings, |_| None).unwrap())
}

/// A credentials file as hospital IT writes it: `user:password` and a newline.
fn credentials_file(dir: &Path, name: &str, user: &str, password: &str) -> PathBuf {
    let path = dir.join(name);
    verbund_security::files::write_secret(&path, format!("{user}:{password}\n").as_bytes(), Overwrite::Refuse).unwrap();
    path
}

/// The `host:port` of the coordinator's node link, as a CONNECT to it names it.
fn link_target(network: &Network) -> String {
    network.link.trim_start_matches("https://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_the_coordinator_through_an_http_proxy() {
    let mut network = Network::start(&["behind-proxy"]).await;
    let proxy = Proxy::start(false).await;
    let mut options = network.link_options("behind-proxy");
    options.egress = through(&proxy, |_| {});
    let node = fast_node(&network, "behind-proxy", 12);
    network.add_node_with(node, options).await;
    let (table, response) = network.query(COUNT).await.unwrap();
    assert_eq!(status(&response, "behind-proxy").outcome(), pb::SiteOutcome::Answered);
    assert_eq!(ints(&table, 0), vec![Some(12)]);
    assert!(proxy.tunnel_count() >= 1);
    assert!(proxy.saw_target(&link_target(&network)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_refuses_keeps_the_node_out_and_says_so() {
    let network = Network::start(&["refused"]).await;
    let proxy = Proxy::start(true).await;
    let mut options = network.link_options("refused");
    options.egress = through(&proxy, |_| {});
    let node: Arc<Node> = fast_node(&network, "refused", 3).into();
    let _process = NodeProcess::start(node.clone(), options);
    let connected = network.coordinator.sites().wait_for(&["refused"], Duration::from_millis(800)).await;
    assert!(!connected);
    assert_eq!(proxy.tunnel_count(), 0);
    wait_until("the node reports the refusal", Duration::from_secs(5), || node.link_error().is_some()).await;
    let why = node.readiness().unwrap_err();
    let expected = format!("the proxy {} refused to tunnel to {}: 403 Forbidden", proxy.address, link_target(&network));
    assert!(why.contains(&expected), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_from_a_file_pass_the_proxy() {
    let mut network = Network::start(&["authenticated"]).await;
    let proxy = Proxy::builder().basic_auth(USER, PASSWORD).start().await;
    let file = credentials_file(network.pki.dir.path(), "proxy.credentials", USER, PASSWORD);
    let mut options = network.link_options("authenticated");
    options.egress = through(&proxy, |s| s.credentials = Some(file));
    network.add_node_with(fast_node(&network, "authenticated", 9), options).await;
    let (table, response) = network.query(COUNT).await.unwrap();
    assert_eq!(status(&response, "authenticated").outcome(), pb::SiteOutcome::Answered);
    assert_eq!(ints(&table, 0), vec![Some(9)]);
    assert!(proxy.saw_target(&link_target(&network)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_wrong_credentials_are_told_apart() {
    let network = Network::start(&["wrong-credentials"]).await;
    let proxy = Proxy::builder().basic_auth(USER, PASSWORD).start().await;
    let link: verbund_security::settings::Uri = network.link.parse().unwrap();

    let missing = through(&proxy, |_| {}).connect(&link).await.unwrap_err();
    assert!(matches!(missing, EgressError::ProxyAuthRequired { .. }), "{missing:?}");
    let expected = format!("the proxy {} asks for credentials (407) to reach {}", proxy.address, link_target(&network));
    assert!(missing.to_string().starts_with(&expected), "{missing}");

    let wrong_password = "n0t-the-password";
    let file = credentials_file(network.pki.dir.path(), "wrong.credentials", USER, wrong_password);
    let egress = through(&proxy, |s| s.credentials = Some(file));
    let wrong = egress.connect(&link).await.unwrap_err();
    assert!(matches!(wrong, EgressError::ProxyAuthRejected { .. }), "{wrong:?}");
    assert!(wrong.to_string().starts_with(&format!("the proxy {} refused these credentials (407)", proxy.address)));
    assert_eq!(proxy.tunnel_count(), 0);

    // A node with the wrong credentials stays out, and its readiness probe says why,
    // without the password.
    let mut options = network.link_options("wrong-credentials");
    options.egress = egress;
    let node: Arc<Node> = fast_node(&network, "wrong-credentials", 3).into();
    let _process = NodeProcess::start(node.clone(), options);
    wait_until("the node reports the refusal", Duration::from_secs(5), || node.link_error().is_some()).await;
    let why = node.readiness().unwrap_err();
    assert!(why.contains("refused these credentials"), "{why}");
    assert!(!why.contains(wrong_password) && !why.contains(USER), "{why}");
    assert!(!network.coordinator.sites().wait_for(&["wrong-credentials"], Duration::from_millis(300)).await);
}

/// A certificate for 127.0.0.1 from a CA of its own: the hospital's, not the network's.
fn hospital_certificate(dir: &Path) -> TlsFiles {
    let ca = NetworkCa::create("hospital", Validity::days(30)).unwrap();
    let (ca_path, _) = ca.write(dir).unwrap();
    let (cert, key) = ca
        .issue_coordinator(&["127.0.0.1".to_string()], Validity::days(10))
        .unwrap()
        .write(dir, "proxy", Overwrite::Refuse)
        .unwrap();
    TlsFiles { ca: ca_path, cert, key }
}

/// An `https://` proxy with the hospital's certificate and credentials: the node's mutual
/// TLS to the coordinator runs inside the TLS to the proxy, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_proxy_with_the_hospitals_own_ca_carries_the_mutual_tls_link() {
    let mut network = Network::start(&["tls-proxy"]).await;
    let hospital = tempfile::tempdir().unwrap();
    let certificate = hospital_certificate(hospital.path());
    let proxy = Proxy::builder().tls(&certificate).basic_auth(USER, PASSWORD).start().await;
    assert!(proxy.address.starts_with("https://"));
    let file = credentials_file(hospital.path(), "proxy.credentials", USER, PASSWORD);
    let link: verbund_security::settings::Uri = network.link.parse().unwrap();

    // The network's CA does not vouch for the hospital's proxy.
    let (ca, credentials) = (network.pki.ca_path.clone(), file.clone());
    let untrusted = through(&proxy, |s| (s.ca, s.credentials) = (Some(ca), Some(credentials)));
    let e = untrusted.connect(&link).await.unwrap_err();
    assert!(matches!(e, EgressError::ProxyTls { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("TLS with the proxy {} failed", proxy.address)), "{e}");

    let mut options = network.link_options("tls-proxy");
    options.egress = through(&proxy, |s| (s.ca, s.credentials) = (Some(certificate.ca.clone()), Some(file)));
    assert!(options.egress.connect(&link).await.unwrap().is_tls_to_proxy());
    network.add_node_with(fast_node(&network, "tls-proxy", 7), options).await;
    let (table, response) = network.query(COUNT).await.unwrap();
    assert_eq!(status(&response, "tls-proxy").outcome(), pb::SiteOutcome::Answered);
    assert_eq!(ints(&table, 0), vec![Some(7)]);
    assert!(proxy.saw_target(&link_target(&network)));
}

/// A node configured without `proxy` takes it from the environment (here a fake one: the
/// real environment is the whole test process's), and `NO_PROXY` sends a destination
/// directly; a configured `proxy = "direct"` wins over the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_chooses_the_proxy_unless_no_proxy_or_the_config_says_otherwise() {
    let mut network = Network::start(&["env-proxied", "env-exempt", "configured-direct"]).await;
    let proxy = Proxy::start(false).await;
    let (coordinator, ca, auth) = (network.link.clone(), network.pki.ca_path.clone(), network.pki.auth.clone());
    let config = |site: &str| {
        let tls = verbund_node::config::NodeTls {
            ca: ca.clone(),
            cert: "unused.pem".into(),
            key: "unused.key".into(),
            coordinator_name: None,
        };
        NodeConfig::new(site, coordinator.parse().unwrap(), tls, auth.clone())
    };
    let address = proxy.address.clone();
    let env = move |no_proxy: Option<&'static str>| {
        let address = address.clone();
        move |name: &str| match name {
            "HTTPS_PROXY" => Some(address.clone()),
            "NO_PROXY" => no_proxy.map(str::to_string),
            _ => None,
        }
    };

    let proxied = config("env-proxied").egress_with_env(env(None)).unwrap();
    assert_eq!(proxied.proxy_for(&network.link.parse().unwrap()), Some(proxy.address.as_str()));
    let mut options = network.link_options("env-proxied");
    options.egress = Arc::new(proxied);
    network.add_node_with(fast_node(&network, "env-proxied", 5), options).await;
    assert_eq!(proxy.tunnel_count(), 1);
    assert!(proxy.saw_target(&link_target(&network)));

    let exempt = config("env-exempt").egress_with_env(env(Some("localhost, 127.0.0.1"))).unwrap();
    let mut options = network.link_options("env-exempt");
    options.egress = Arc::new(exempt);
    network.add_node_with(fast_node(&network, "env-exempt", 6), options).await;

    let mut direct = config("configured-direct");
    direct.proxy = Some(ProxySetting::Direct);
    let mut options = network.link_options("configured-direct");
    options.egress = Arc::new(direct.egress_with_env(env(None)).unwrap());
    network.add_node_with(fast_node(&network, "configured-direct", 7), options).await;

    assert_eq!((proxy.tunnel_count(), proxy.connection_count()), (1, 1), "only the first node went through the proxy");
    let (table, response) = network.query(COUNT).await.unwrap();
    assert!(response.sites.iter().all(|s| s.outcome() == pb::SiteOutcome::Answered), "{:?}", response.sites);
    assert_eq!(ints(&table, 0), vec![Some(18)]);
}

/// The identity provider's keys come through the same proxy as the link: the proxy sees a
/// CONNECT to each, and a researcher's token verified with those keys is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_providers_keys_come_through_the_same_proxy_as_the_link() {
    let mut network = Network::start(&["keys-via-proxy"]).await;
    let jwks_url = verbund_tests::serve_jwks(&network.pki.coordinator, network.pki.issuer.jwks.clone()).await;
    let jwks_target = jwks_url.trim_start_matches("https://").split('/').next().unwrap().to_string();
    let proxy = Proxy::builder().basic_auth(USER, PASSWORD).start().await;
    let mut auth = network.pki.auth.clone();
    auth.jwks_file = None;
    auth.jwks_url = Some(jwks_url.parse().unwrap());
    auth.jwks_ca = Some(network.pki.ca_path.clone());

    // Without the credentials, the fetch says what the proxy wants.
    let e = Verifier::from_config_with(&auth, through(&proxy, |_| {})).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot fetch {jwks_url}: the proxy {} asks for credentials", proxy.address)),
        "{e}"
    );

    let file = credentials_file(network.pki.dir.path(), "proxy.credentials", USER, PASSWORD);
    let egress = through(&proxy, |s| s.credentials = Some(file));
    let verifier = Verifier::from_config_with(&auth, egress.clone()).await.unwrap();
    assert!(proxy.saw_target(&jwks_target), "{:?}", proxy.targets.lock().unwrap());

    let node = Node::new("keys-via-proxy", vitals("keys-via-proxy", 4), open_policy(1), verifier);
    let mut options = network.link_options("keys-via-proxy");
    options.egress = egress;
    network.add_node_with(node, options).await;
    let (table, response) = network.query(COUNT).await.unwrap();
    assert_eq!(status(&response, "keys-via-proxy").outcome(), pb::SiteOutcome::Answered);
    assert_eq!(ints(&table, 0), vec![Some(4)]);
    assert!(proxy.saw_target(&link_target(&network)));
}

/// A proxy that takes the CONNECT and never answers costs one connect timeout per attempt,
/// is named in the node's report, and the node keeps redialling; one that answers garbage
/// is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_proxy_costs_at_most_the_connect_timeout_and_the_node_keeps_redialling() {
    let network = Network::start(&["stalled"]).await;
    let link: verbund_security::settings::Uri = network.link.parse().unwrap();
    let timeout = Duration::from_secs(1);
    let stalling = Proxy::builder().behaviour(Behaviour::Stall).start().await;
    let egress = through(&stalling, |s| s.connect_timeout = timeout);

    let started = Instant::now();
    let e = egress.connect(&link).await.unwrap_err();
    let cost = started.elapsed();
    eprintln!("a stalling proxy cost {cost:?} with a connect timeout of {timeout:?}");
    assert!(matches!(e, EgressError::ProxyTimeout { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("the proxy {} did not open a tunnel", stalling.address)), "{e}");
    assert!(cost >= timeout && cost < Duration::from_secs(5), "{cost:?}");

    let mut options = network.link_options("stalled");
    options.egress = egress;
    let node: Arc<Node> = fast_node(&network, "stalled", 3).into();
    let _process = NodeProcess::start(node.clone(), options);
    let before = stalling.connection_count();
    wait_until("the node dialled three times", Duration::from_secs(10), || stalling.connection_count() >= before + 3)
        .await;
    let why = node.readiness().unwrap_err();
    assert!(why.contains(&format!("the proxy {} did not open a tunnel", stalling.address)), "{why}");

    let garbage = Proxy::builder().behaviour(Behaviour::Garbage).start().await;
    let started = Instant::now();
    let e = through(&garbage, |s| s.connect_timeout = Duration::from_secs(30)).connect(&link).await.unwrap_err();
    assert!(matches!(e, EgressError::ProxyGarbage { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "garbage is refused at once, not at the timeout");
}
