//! Connecting to a tenant-supplied mail server: through the SSRF guard (every resolved address checked,
//! the connection made to a checked address), with a connect timeout, then TLS where asked.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::protocols::netguard::{GuardError, NetGuard};

/// The step a connection failed at, with the underlying words (for test & confirm and account errors).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DNS: {0}")]
    Dns(String),
    #[error("refused by policy: {0}")]
    Forbidden(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl From<GuardError> for ConnectError {
    fn from(err: GuardError) -> Self {
        match err {
            GuardError::Unresolvable { .. } => ConnectError::Dns(err.to_string()),
            GuardError::Forbidden { .. } => ConnectError::Forbidden(err.to_string()),
        }
    }
}

/// Opens a TCP connection to the first reachable checked address of `host:port`.
pub async fn connect_tcp(guard: &NetGuard, host: &str, port: u16, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let addrs = guard.resolve(host, port).await?;
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some(format!("{addr}: {e}")),
            Err(_) => last = Some(format!("{addr}: timed out after {}s", timeout.as_secs())),
        }
    }
    Err(ConnectError::Connect(last.unwrap_or_else(|| "no address".to_owned())))
}

/// Wraps a connected stream in TLS, verifying the certificate for `host`.
pub async fn start_tls<S>(
    config: Arc<ClientConfig>,
    host: &str,
    stream: S,
    timeout: Duration,
) -> Result<TlsStream<S>, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
        .map_err(|e| ConnectError::Tls(format!("invalid server name {host}: {e}")))?;
    match tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(ConnectError::Tls(e.to_string())),
        Err(_) => Err(ConnectError::Tls(format!("handshake timed out after {}s", timeout.as_secs()))),
    }
}
