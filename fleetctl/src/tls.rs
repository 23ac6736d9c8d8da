//! How fleetctl and fleet-sim trust the controller over HTTPS: the system's roots, or only the
//! CA in `ca_file` (a fleet's own CA, or the lab CA of `make demo`); and a transport error
//! told as the whole chain of causes, so a certificate that does not verify says so.

use std::path::Path;

/// Errors setting up trust.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The CA file cannot be read.
    #[error("cannot read the CA file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file holds no usable PEM certificate.
    #[error("the CA file {path} holds no PEM certificate: {reason}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

/// `builder` trusting only the certificates in `ca_file` when one is given (the system's roots
/// are then not trusted: the fleet's controller is known by its own CA), else the system's.
pub fn trust(
    builder: reqwest::ClientBuilder,
    ca_file: Option<&Path>,
) -> Result<reqwest::ClientBuilder, TrustError> {
    let Some(path) = ca_file else {
        return Ok(builder);
    };
    let pem = std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TrustError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TrustError::Parse {
            path: path.to_owned(),
            reason: "no certificate found".into(),
        });
    }
    let mut b = builder.tls_built_in_root_certs(false);
    for c in certs {
        b = b.add_root_certificate(c);
    }
    Ok(b)
}

/// A transport error with its causes, and what to do when it is the certificate.
pub fn describe(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    let text = parts.join(": ");
    let lower = text.to_lowercase();
    if lower.contains("certificate") || lower.contains("handshake") {
        format!(
            "{text} (the controller's TLS certificate does not verify against the trusted CAs: \
             give its CA with --ca-file, or check the URL's host name)"
        )
    } else {
        text
    }
}
