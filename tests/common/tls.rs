//! TLS for the tests: a test CA with a `localhost` leaf on disk, and a blocking HTTPS client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A test CA and the `localhost` leaf it issued, as PEM files in `dir`.
pub struct Pki {
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    /// A test CA, and a leaf for `localhost` written to `cert.pem` / `key.pem` in `dir`.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "nxgate callbacks test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let pki = Pki { ca_pem: ca.pem(), dir: tempfile::tempdir().unwrap(), ca, ca_key };
        pki.issue_leaf();
        pki
    }

    /// Writes a fresh leaf (new key); returns its DER.
    pub fn issue_leaf(&self) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        std::fs::write(self.dir.path().join("cert.pem"), format!("{}{}", leaf.pem(), self.ca.pem())).unwrap();
        std::fs::write(self.dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        leaf.der().to_vec()
    }

    pub fn yaml(&self) -> String {
        format!(
            "{{ cert_file: \"{}\", key_file: \"{}\" }}",
            self.dir.path().join("cert.pem").display(),
            self.dir.path().join("key.pem").display()
        )
    }
}

/// One request over TLS trusting `ca_pem`; returns the status, the body and the leaf
/// certificate the server presented.
pub fn tls_request(addr: SocketAddr, ca_pem: &str, request: &[u8]) -> (u16, Vec<u8>, Vec<u8>) {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(request).unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&raw) {
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| std::str::from_utf8(h.value).unwrap().parse().unwrap());
            if raw.len() >= head + len {
                let leaf = tls.conn.peer_certificates().unwrap()[0].to_vec();
                return (resp.code.unwrap(), raw[head..head + len].to_vec(), leaf);
            }
        }
    }
    panic!("no complete response over TLS: {}", String::from_utf8_lossy(&raw));
}
