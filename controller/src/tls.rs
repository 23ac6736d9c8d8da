//! HTTPS with rustls: the certificate chain and key of controller.yaml's `tls`, loaded at start
//! and again on SIGHUP. A reload that fails (a half-copied file, a key that does not match the
//! certificate) keeps the certificate being served and says why; it never takes HTTPS down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::config::TlsFiles;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read the TLS {what} {path}: {reason}")]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error("the TLS certificate file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// The key is of a kind rustls cannot sign with, or does not match the certificate.
    #[error("the TLS key {path} cannot be used with {cert}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("cannot set up TLS: {0}")]
    Config(#[from] rustls::Error),
}

fn read_err(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsError {
    let path = path.to_owned();
    move |e| TlsError::Read {
        what,
        path,
        reason: e.to_string(),
    }
}

/// Loads and checks a certificate chain and its key.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(read_err("certificate", &files.cert_file))?
        .collect::<Result<_, _>>()
        .map_err(read_err("certificate", &files.cert_file))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(files.cert_file.clone()));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key_file).map_err(read_err("key", &files.key_file))?;
    let key_err = |reason: String| TlsError::Key {
        path: files.key_file.clone(),
        cert: files.cert_file.clone(),
        reason,
    };
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signer);
    certified
        .keys_match()
        .map_err(|e| key_err(format!("{e} (the key does not belong to the certificate)")))?;
    Ok(certified)
}

/// The certificate being served; [`CertStore::reload`] swaps it.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads `files` (an error here stops the controller from starting).
    pub fn open(files: &TlsFiles) -> Result<CertStore, TlsError> {
        Ok(CertStore {
            files: files.clone(),
            current: RwLock::new(Arc::new(load(files)?)),
        })
    }

    /// Reads the files again; on success new connections get the new certificate, on failure
    /// the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(load(&self.files)?);
        match self.current.write() {
            Ok(mut g) => *g = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

/// The server configuration over `store`: TLS 1.2 and 1.3 with rustls' safe defaults,
/// HTTP/1.1, and session tickets so a device resuming its session pays a short handshake.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(cfg))
}
