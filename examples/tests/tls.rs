//! The API over HTTPS with certificates made by `rcgen`: serving, rotation on a real SIGHUP
//! with a connection kept open across it, and mutual TLS accepted and refused. (Its own test
//! binary: the SIGHUP goes to this process, whose servers all handle it.)

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use reqwest::StatusCode;
use vamp_examples::serve::{ServeConfig, Server, start};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate and key (PEM) signed by `ca`: for the server (`localhost`, `127.0.0.1`) or a
/// client.
fn leaf(ca: &Ca, common_name: &str, client: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names = if client {
        Vec::new()
    } else {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    };
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

async fn https_server(dir: &Path, ca: &Ca, client_ca: Option<&Ca>, listen: &str) -> Server {
    let (cert, key) = leaf(ca, "vamp server", false);
    let mut config = ServeConfig::new(dir);
    config.stop_on_exit = true;
    config.listen = Some(listen.parse().unwrap());
    config.in_memory = true;
    config.kv = Some("memory://".into());
    config.scheduler = Some("memory://".into());
    config.no_agent = true;
    config.tls_cert = Some(write(dir, "cert.pem", &cert));
    config.tls_key = Some(write(dir, "key.pem", &key));
    config.tls_client_ca = client_ca.map(|c| write(dir, "client-ca.pem", &c.pem));
    start(config).await.expect("the server starts")
}

fn client(ca: &Ca, identity: Option<(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_and_reads_new_certificates_on_sighup_keeping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("test CA");
    let s = https_server(dir.path(), &ca, None, "127.0.0.1:0").await;
    let https = client(&ca, None);
    let info = https
        .get(format!("https://127.0.0.1:{}/api/v1/info", s.addr.port()))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), StatusCode::OK);
    let info: serde_json::Value = info.json().await.unwrap();
    assert_eq!(info["security"]["tls"], true);
    // Plain HTTP on the TLS port gets no answer from the API.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", s.addr.port()))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != StatusCode::NO_CONTENT);

    // A connection opened before the rotation, held open across it.
    let (mut sender, first_subject) = open(&ca, s.addr).await;
    assert!(first_subject.contains("vamp server"), "{first_subject}");
    assert_eq!(healthz(&mut sender).await, StatusCode::NO_CONTENT);
    // New files, then a real SIGHUP to this process.
    let (cert, key) = leaf(&ca, "rotated server", false);
    write(dir.path(), "cert.pem", &cert);
    write(dir.path(), "key.pem", &key);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rotated = support::eventually(
        "new connections see the new certificate",
        Duration::from_secs(20),
        async || {
            let (_, subject) = open(&ca, s.addr).await;
            subject.contains("rotated server").then_some(subject)
        },
    )
    .await;
    assert!(!rotated.contains("vamp server"), "{rotated}");
    // The old connection still answers, on its old session.
    assert_eq!(healthz(&mut sender).await, StatusCode::NO_CONTENT);
    // A broken file is refused and the current certificate stays.
    write(dir.path(), "key.pem", "not a key");
    std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    // The reload runs on the server's task: the next handshakes keep working meanwhile and
    // after it.
    for _ in 0..5 {
        let (_, subject) = open(&ca, s.addr).await;
        assert!(subject.contains("rotated server"), "{subject}");
    }
    s.stop().await;
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// A TLS connection (trusting `ca`) with an HTTP/1.1 client on it, and the subject of the
/// certificate the server showed.
async fn open(ca: &Ca, addr: std::net::SocketAddr) -> (Sender, String) {
    let mut roots = rustls::RootCertStore::empty();
    for c in
        <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            ca.pem.as_bytes(),
        )
    {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let subject = vamp_examples::tls::subject(&tls.get_ref().1.peer_certificates().unwrap()[0]);
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (sender, subject)
}

async fn healthz(sender: &mut Sender) -> StatusCode {
    let r = hyper::Request::get("/healthz")
        .header("Host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    let status = sender.send_request(r).await.unwrap().status();
    StatusCode::from_u16(status.as_u16()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_the_ca_s_clients_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("server CA");
    let client_ca = ca("client CA");
    let other_ca = ca("other CA");
    // Client certificates authenticate by themselves: a non-loopback address needs no token.
    let s = https_server(dir.path(), &server_ca, Some(&client_ca), "0.0.0.0:0").await;
    let url = format!("https://127.0.0.1:{}/api/v1/login", s.addr.port());
    let alice = client(&server_ca, Some(leaf(&client_ca, "alice", true)));
    let me = support::get_json(&alice, &url).await;
    assert_eq!(me["via"], "certificate", "{me}");
    assert_eq!(me["role"], "write", "{me}");
    assert!(
        me["certificate"].as_str().unwrap().contains("CN=alice"),
        "{me}"
    );
    // No certificate, or one from another CA: no TLS session at all.
    let nobody = client(&server_ca, None).get(&url).send().await;
    assert!(nobody.is_err(), "{nobody:?}");
    let mallory = client(&server_ca, Some(leaf(&other_ca, "mallory", true)))
        .get(&url)
        .send()
        .await;
    assert!(mallory.is_err(), "{mallory:?}");
    s.stop().await;
}
