//! The SBC's public TLS certificate (TLS and WSS listeners): read from PEM
//! files, or on a first start without them a self-signed one generated with
//! rcgen into the data directory, its fingerprint logged. [`Certificates`]
//! is the listeners' certificate resolver: `reload` swaps the certificate
//! for new handshakes while established connections keep theirs, so a
//! SIGHUP renews it without dropping a connection or a call.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub struct CertificateSource {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificateSource {
    /// The configured files, or the generated pair in `data_dir`, created
    /// now if missing, for `host`.
    pub fn resolve(
        configured: Option<(PathBuf, PathBuf)>,
        data_dir: &Path,
        host: &str,
    ) -> Result<CertificateSource, TlsError> {
        if let Some((cert, key)) = configured {
            return Ok(CertificateSource { cert, key });
        }
        let source = CertificateSource {
            cert: data_dir.join("tls-self-signed.pem"),
            key: data_dir.join("tls-self-signed.key"),
        };
        if !source.cert.exists() || !source.key.exists() {
            let generated = rcgen::generate_simple_self_signed(vec![
                host.trim_matches(['[', ']']).to_string(),
                "localhost".to_string(),
            ])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
            let write = |path: &Path, text: String| {
                std::fs::write(path, text).map_err(|e| TlsError::File {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })
            };
            std::fs::create_dir_all(data_dir).map_err(|e| TlsError::File {
                path: data_dir.to_path_buf(),
                detail: e.to_string(),
            })?;
            write(&source.key, generated.signing_key.serialize_pem())?;
            write(&source.cert, generated.cert.pem())?;
            tracing::warn!(
                cert = %source.cert.display(),
                "no TLS certificate configured: generated a self-signed one"
            );
        }
        Ok(source)
    }

    /// Reads and checks the pair: the chain parses and the key signs.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let file_error = |path: &Path, detail: String| TlsError::File {
            path: path.to_path_buf(),
            detail,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| file_error(&self.cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(&self.cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(file_error(&self.cert, "no certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| file_error(&self.key, e.to_string()))?;
        let signer = any_supported_type(&key)
            .map_err(|e| file_error(&self.key, format!("unusable key: {e}")))?;
        Ok(Arc::new(CertifiedKey::new(chain, signer)))
    }
}

/// SHA-256 fingerprint of a certificate, as browsers show it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The current certificate, swappable while listeners run.
#[derive(Debug)]
pub struct Certificates {
    source: CertificateSource,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    pub fn load(source: CertificateSource) -> Result<Arc<Certificates>, TlsError> {
        let current = source.load()?;
        if let Some(leaf) = current.cert.first() {
            tracing::info!(
                cert = %source.cert.display(),
                fingerprint = %fingerprint(leaf),
                "TLS certificate loaded"
            );
        }
        Ok(Arc::new(Certificates {
            source,
            current: RwLock::new(current),
        }))
    }

    /// Re-reads the files; on any error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = self.source.load()?;
        if let Some(leaf) = fresh.cert.first() {
            tracing::info!(fingerprint = %fingerprint(leaf), "TLS certificate reloaded");
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A rustls server configuration resolving to the current certificate.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth().with_cert_resolver(self.clone()));
        match config {
            Ok(config) => Arc::new(config),
            // ring's provider supports the default versions.
            Err(_) => unreachable!(),
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_reloads_and_keeps_the_old_one_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = CertificateSource::resolve(None, dir.path(), "127.0.0.1").unwrap();
        let first = std::fs::read(&source.cert).unwrap();
        let again = CertificateSource::resolve(None, dir.path(), "127.0.0.1").unwrap();
        assert_eq!(std::fs::read(&again.cert).unwrap(), first, "generated once");
        let certificates = Certificates::load(source.clone()).unwrap();
        let before = fingerprint(&certificates.current().cert[0]);

        // A new pair on disk is picked up by reload.
        let other = tempfile::tempdir().unwrap();
        let fresh = CertificateSource::resolve(None, other.path(), "127.0.0.1").unwrap();
        std::fs::copy(&fresh.cert, &source.cert).unwrap();
        std::fs::copy(&fresh.key, &source.key).unwrap();
        certificates.reload().unwrap();
        let after = fingerprint(&certificates.current().cert[0]);
        assert_ne!(before, after);

        std::fs::write(&source.cert, "not a certificate").unwrap();
        let err = certificates.reload().unwrap_err();
        assert!(err.to_string().contains("tls-self-signed.pem"), "{err}");
        assert_eq!(
            fingerprint(&certificates.current().cert[0]),
            after,
            "old one kept"
        );
        let _ = certificates.server_config();
    }
}
