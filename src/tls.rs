//! TLS for PostgreSQL data connections: one rustls stack (ring provider),
//! honouring libpq's sslmode. sqlx (migrations) uses the same rustls stack
//! through its own options (`db::sqlx_options`).
//!
//! `prefer`/`require` encrypt without checking the certificate (as libpq);
//! `verify-ca` checks the chain to `ca_file`; `verify-full` also checks that
//! the certificate names the host connected to.

use std::path::{Path, PathBuf};
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

/// Why a server's TLS settings cannot be used; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {reason}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the {what} {} holds no PEM certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the CA file {} is not a usable CA: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("sslmode {0} needs ca_file")]
    NoCaFile(&'static str),
    #[error("{0}")]
    Rustls(#[from] Error),
    #[error("{0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            what,
            path: path.into(),
            reason: e.to_string(),
        })?;
    match certs.is_empty() {
        true => Err(TlsError::NoCertificate {
            what,
            path: path.into(),
        }),
        false => Ok(certs),
    }
}

fn roots(tls: &Tls, mode: &'static str) -> Result<Arc<RootCertStore>, TlsError> {
    let path = tls.ca_file.as_deref().ok_or(TlsError::NoCaFile(mode))?;
    let mut store = RootCertStore::empty();
    for c in read_certs(path, "CA file (ca_file)")? {
        store.add(c).map_err(|e| TlsError::BadCa {
            path: path.into(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

/// The rustls client configuration for a server's `Tls` settings.
pub fn client_config(tls: &Tls) -> Result<ClientConfig, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match tls.effective_mode() {
        SslMode::VerifyFull => builder.with_root_certificates(roots(tls, "verify-full")?),
        SslMode::VerifyCa => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(roots(tls, "verify-ca")?, provider())
                    .build()?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    chain: Some(inner),
                    provider: provider(),
                }))
        }
        SslMode::Prefer | SslMode::Require | SslMode::Disable => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient {
                chain: None,
                provider: provider(),
            })),
    };
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert, "client certificate (client_cert)")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
                what: "client key (client_key)",
                path: key.clone(),
                reason: e.to_string(),
            })?;
            Ok(builder.with_client_auth_cert(certs, key)?)
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A TLS failure in words an operator can act on, if `e`'s causes hold one.
/// It names the configured sslmode, since the mode decides what is checked.
pub fn explain(e: &(dyn std::error::Error + 'static), tls: &Tls, host: &str) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        // An io::Error hides its inner error from source(): look inside.
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<Error>());
        if let Some(r) = c.downcast_ref::<Error>().or(inner) {
            return Some(format!(
                "TLS (sslmode {}): {}",
                tls.mode.name(),
                reason(r, tls, host)
            ));
        }
        cause = c.source();
    }
    None
}

fn reason(e: &Error, tls: &Tls, host: &str) -> String {
    let ca = tls
        .ca_file
        .as_deref()
        .map_or("(none)".into(), |p| p.display().to_string());
    match e {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("the server's certificate is not signed by the CA in ca_file {ca}")
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the server's certificate does not name host `{host}` (verify-full checks the host name; connect by a name the certificate lists)"
        ),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired (renew it on the server; the chain is checked because of this mode and ca_file)".into(),
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the server's certificate is not valid yet (check the clocks of both hosts)".into(),
        other => format!("handshake failed: {other}"),
    }
}

/// The certificate check of the modes rustls does not have built in.
/// verify-ca (`chain` set): the chain must lead to a configured CA; the name
/// is not checked. prefer/require (`chain` unset): encrypted, certificate
/// unchecked (libpq's meaning). Either way the handshake signatures are
/// verified, so the session key is the peer's.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
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
        verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
