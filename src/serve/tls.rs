//! TLS for `serve`: a rustls server configuration from a PEM certificate chain and private
//! key given by path (the key never on the command line, never logged). TLS 1.2 and 1.3 with
//! ring's safe defaults; HTTP/1.1 over it, as without.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ServeError;

/// The server configuration for `cert` (PEM, the server's certificate first, then its chain)
/// and `key` (PEM, PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ServeError> {
    let tls = |file: &Path, problem: String| ServeError::Tls {
        file: file.display().to_string(),
        problem,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(tls(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| tls(key, format!("does not match the certificate: {e}")))?;
    Ok(Arc::new(config))
}
