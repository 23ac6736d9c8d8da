//! A lab certificate authority made on the fly (rcgen), and server certificates it signs for
//! loopback, written as PEM files: what HTTPS tests and `make demo` serve and trust.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

/// A CA: its certificate (PEM, at `cert_file`) and key, able to sign server certificates.
pub struct LabCa {
    /// The CA certificate, PEM: what clients trust (`ca_file`).
    pub cert_file: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server certificate and key, PEM files.
pub struct ServerCert {
    /// The chain (leaf, then the CA).
    pub cert_file: PathBuf,
    /// The key.
    pub key_file: PathBuf,
    /// SHA-256 of the key's SubjectPublicKeyInfo, base64: Chromium's
    /// `--ignore-certificate-errors-spki-list` value for exactly this key.
    pub spki_sha256_base64: String,
}

impl LabCa {
    /// A new CA named `name`; its certificate is written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> LabCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} lab CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        let cert_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write the CA certificate");
        LabCa {
            cert_file,
            cert,
            key,
        }
    }

    /// A server certificate for `127.0.0.1`, `::1` and `localhost`, signed by this CA, written
    /// to `dir/<name>.pem` and `dir/<name>.key`.
    pub fn server_cert(&self, dir: &Path, name: &str) -> ServerCert {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .expect("server params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} (lab)"));
        params.distinguished_name = dn;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the server certificate");
        let cert_file = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, format!("{}{}", cert.pem(), self.cert.pem()))
            .expect("write the server certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write the server key");
        ServerCert {
            cert_file,
            key_file,
            spki_sha256_base64: base64(&Sha256::digest(key.public_key_der())),
        }
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(super::base64(b"foob"), "Zm9vYg==");
    }
}
