//! The TLS client configuration for mail servers: the public web PKI, plus the extra CA certificates of
//! `POSTBRIDGE_EXTRA_CA_FILE` (private CAs in real deployments, the throwaway CA in tests).

use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// Trusted roots: webpki's, plus every certificate in `extra_ca_pem`.
pub fn root_store(extra_ca_pem: Option<&[u8]>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.add(cert.context("extra CA file holds a malformed certificate")?).context("extra CA certificate refused")?;
            added += 1;
        }
        anyhow::ensure!(added > 0, "extra CA file holds no certificate");
    }
    Ok(roots)
}

/// Builds the client config once; named provider (ring) so another crypto provider in the tree cannot clash.
pub fn client_config(extra_ca_file: Option<&str>) -> anyhow::Result<Arc<ClientConfig>> {
    let extra = extra_ca_file
        .map(|path| std::fs::read(path).with_context(|| format!("cannot read POSTBRIDGE_EXTRA_CA_FILE {path}")))
        .transpose()?;
    let roots = root_store(extra.as_deref())?;
    let config = ClientConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
