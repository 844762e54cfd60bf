//! The rustls setup for an `https://` Consul address: trust the CA file or directory (or the
//! system's roots), present a client certificate when one is configured, and verify the agent's
//! certificate unless `CONSUL_HTTP_SSL_VERIFY=false` said not to.
//!
//! Only `Client::new` calls this. The ring provider is named explicitly rather than taken from
//! the process default, which is ambiguous when another crate enables a second provider.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::config::TlsConfig;
use super::error::ConsulError;

fn config_error(what: impl std::fmt::Display) -> ConsulError {
    ConsulError::Config(what.to_string())
}

/// The rustls client configuration for `tls`.
pub(crate) fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, ConsulError> {
    // ring, as the AWS SDKs' client here uses: it builds without a C toolchain. rustls
    // 0.23.48 deprecates it for want of post-quantum key exchange (aws-lc-rs has it); the
    // lock holds 0.23.46, and this keeps a `cargo update` from failing the lint on it.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("TLS setup: {e}")))?;

    let builder = if tls.verify {
        let roots = Arc::new(root_store(tls)?);
        match &tls.server_name {
            None => builder.with_root_certificates(roots),
            Some(name) => {
                let name = ServerName::try_from(name.clone())
                    .map_err(|e| config_error(format!("TLS server name {name:?}: {e}")))?;
                let inner =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| config_error(format!("TLS setup: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NamedServer { inner, name }))
            }
        }
    } else {
        tracing::warn!(
            "TLS verification of the Consul agent is off (CONSUL_HTTP_SSL_VERIFY=false)."
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
    };

    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                config_error(format!("cannot read client key {}: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| config_error(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    // HTTP/1.1 only: long-polling needs nothing more, and it keeps one blocking query per
    // connection, which is how Consul's own clients behave.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA file and directory if given, else the system's roots.
fn root_store(tls: &TlsConfig) -> Result<RootCertStore, ConsulError> {
    let mut roots = RootCertStore::empty();
    let mut cas = Vec::new();
    if let Some(file) = &tls.ca_file {
        cas.extend(read_certs(file)?);
    }
    if let Some(dir) = &tls.ca_path {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            config_error(format!("cannot read CA directory {}: {e}", dir.display()))
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                cas.extend(read_certs(&path)?);
            }
        }
    }
    if tls.ca_file.is_none() && tls.ca_path.is_none() {
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "Skipped part of the system's CA certificates.");
        }
        cas = native.certs;
    }
    let (added, ignored) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(config_error(format!(
            "no usable CA certificate found ({ignored} unparsable); set CONSUL_CACERT"
        )));
    }
    Ok(roots)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConsulError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| config_error(format!("cannot read certificates {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config_error(format!(
            "no PEM certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Verifies the agent's certificate fully, against `name` instead of the address's host: an
/// agent reached by IP or through a load balancer whose certificate names
/// `server.<dc>.consul` (`CONSUL_TLS_SERVER_NAME`).
#[derive(Debug)]
struct NamedServer {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any server certificate; used only when verification was explicitly turned off.
/// Handshake signatures are still checked, so the peer at least holds the key of the
/// certificate it shows.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn verification_off_builds_without_any_ca() {
        let tls = TlsConfig {
            verify: false,
            ..TlsConfig::default()
        };
        let config = client_config(&tls).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn missing_or_empty_ca_file_is_a_config_error() {
        let tls = TlsConfig {
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..TlsConfig::default()
        };
        let err = client_config(&tls).unwrap_err();
        assert_eq!(err.kind(), "config");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

        let file = std::env::temp_dir().join(format!("rehydrator-ca-{}.pem", std::process::id()));
        std::fs::write(&file, "not a certificate\n").unwrap();
        let tls = TlsConfig {
            ca_file: Some(file.clone()),
            ..TlsConfig::default()
        };
        assert_eq!(client_config(&tls).unwrap_err().kind(), "config");
        std::fs::remove_file(&file).unwrap();
    }
}
