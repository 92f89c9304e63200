//! TLS for PostgreSQL data connections: one rustls stack (ring provider),
//! honouring libpq's sslmode. sqlx (migrations) uses the same rustls stack
//! through its own options (`db::sqlx_options`).
//!
//! `prefer`/`require` encrypt without checking the certificate (as libpq);
//! `verify-ca` checks the chain to `ca_file`; `verify-full` also checks that
//! the certificate names the host connected to.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

use crate::config::{SslMode, Tls};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    match certs.is_empty() {
        true => Err(format!(
            "the {what} {} holds no PEM certificate",
            path.display()
        )),
        false => Ok(certs),
    }
}

fn roots(tls: &Tls) -> Result<Arc<RootCertStore>, String> {
    let path = tls.ca_file.as_deref().ok_or("no ca_file")?;
    let mut store = RootCertStore::empty();
    for c in read_certs(path, "CA file (ca_file)")? {
        store
            .add(c)
            .map_err(|e| format!("the CA file {} is not a usable CA: {e}", path.display()))?;
    }
    Ok(Arc::new(store))
}

/// The rustls client configuration for a server's `Tls` settings.
pub fn client_config(tls: &Tls) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match tls.effective_mode() {
        SslMode::VerifyFull => builder.with_root_certificates(roots(tls)?),
        SslMode::VerifyCa => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots(tls)?, provider())
                .build()
                .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
        }
        SslMode::Prefer | SslMode::Require | SslMode::Disable => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider()))),
    };
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert, "client certificate (client_cert)")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read the client key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A TLS failure in words an operator can act on, if `e`'s causes hold one.
pub fn explain(e: &(dyn std::error::Error + 'static), tls: &Tls, host: &str) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        // An io::Error hides its inner error from source(): look inside.
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<Error>());
        if let Some(r) = c.downcast_ref::<Error>().or(inner) {
            let ca = tls
                .ca_file
                .as_deref()
                .map_or("(none)".into(), |p| p.display().to_string());
            return Some(match r {
                Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                    format!("TLS: the server's certificate is not signed by the CA in ca_file {ca}")
                }
                Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => format!(
                    "TLS: the server's certificate does not name host `{host}` (sslmode verify-full checks the host name; connect by a name the certificate lists)"
                ),
                Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => "TLS: the server's certificate has expired".into(),
                other => format!("TLS handshake failed: {other}"),
            });
        }
        cause = c.source();
    }
    None
}

/// verify-ca: the chain must lead to a configured CA; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer/require: encrypted, certificate unchecked (libpq's meaning). The
/// handshake signatures are still verified, so the session key is the peer's.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
