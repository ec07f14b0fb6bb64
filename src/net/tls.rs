//! TLS on nxgate's own listeners (`listen_tls`, `callbacks.tls`), with certificates that
//! are re-read on reload.
//!
//! Pingora's rustls `TlsSettings` normally reads the two PEM files once, when the listener
//! is built. It also takes a rustls certificate resolver instead (`set_cert_resolver`):
//! nxgate passes a [`CertStore`], which answers every handshake with the key pair it
//! holds now. A reload validates the new files (config load parses both), builds the new
//! key pair and swaps it in; handshakes after the swap present the new certificate,
//! established connections keep theirs.

use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use nxgate_core::config::TlsIdentity;

/// The key pair one listener presents; replaced whole on reload.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertStore")
    }
}

/// Why a listener's key pair cannot be built; names files, never a key byte.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The key file holds no key rustls can read.
    #[error("{}: unsupported private key", .0.display())]
    UnsupportedKey(PathBuf),
    /// The key is of a type rustls cannot sign with.
    #[error("{}: unsupported private key type", .0.display())]
    UnsupportedKeyType(PathBuf),
    /// The key is not the certificate's.
    #[error("{} does not match {}", .key.display(), .cert.display())]
    Mismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
}

/// A rustls key pair from a validated identity.
fn certified(id: &TlsIdentity) -> Result<CertifiedKey, TlsError> {
    let key = PrivateKeyDer::try_from(id.key_der.expose().to_vec())
        .map_err(|_| TlsError::UnsupportedKey(id.key_file.clone()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| TlsError::UnsupportedKeyType(id.key_file.clone()))?;
    let chain = id.cert_chain.iter().map(|der| CertificateDer::from(der.clone())).collect();
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|_| TlsError::Mismatch { key: id.key_file.clone(), cert: id.cert_file.clone() })?;
    Ok(pair)
}

impl CertStore {
    /// A store presenting `id`.
    pub fn new(id: &TlsIdentity) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(CertStore { current: ArcSwap::from_pointee(certified(id)?) }))
    }

    /// Builds the key pair for `id` without installing it (reload checks every store first).
    pub fn prepare(id: &TlsIdentity) -> Result<Arc<CertifiedKey>, TlsError> {
        certified(id).map(Arc::new)
    }

    /// Installs a prepared key pair.
    pub fn install(&self, pair: Arc<CertifiedKey>) {
        self.current.store(pair);
    }

    /// Pingora's TLS settings for one listener, answering handshakes from this store and
    /// offering h2 and HTTP/1.1 by ALPN; `net::edge` builds them into the acceptor it runs
    /// under the handshake deadline.
    pub fn settings(self: &Arc<Self>) -> pingora::listeners::tls::TlsSettings {
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")
            .expect("intermediate() without files cannot fail");
        settings.set_cert_resolver(self.clone());
        settings.enable_h2();
        settings
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
