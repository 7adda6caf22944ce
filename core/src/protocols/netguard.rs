//! The one guard for every outgoing connection to a tenant-supplied host or URL (SSRF protection).
//!
//! Every A/AAAA record is checked; callers then connect to the checked addresses, never re-resolving
//! the name, so there is no DNS-rebinding window. HTTP clients get the guard as their resolver and
//! never follow redirects.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::error::AppError;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    /// The message names the kind of address, never the address: a tenant must not learn what internal names
    /// resolve to.
    #[error("{host} resolves to a {kind} address, which is not allowed")]
    Forbidden { host: String, addr: IpAddr, kind: &'static str },
    #[error("{host} could not be resolved: {reason}")]
    Unresolvable { host: String, reason: String },
}

#[derive(Clone, Debug)]
pub struct NetGuard {
    allow_private: bool,
}

/// Why an address is not a public unicast address, if it is not.
pub fn non_public_kind(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_kind(v4).map(|_| "IPv4-mapped non-public");
            }
            let seg0 = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg0 & 0xfe00 == 0xfc00 {
                Some("unique-local")
            } else if seg0 & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if seg0 & 0xffc0 == 0xfec0 {
                Some("site-local")
            } else if v6.segments()[..6] == [0, 0, 0, 0, 0, 0] {
                // IPv4-compatible (deprecated) addresses embed an IPv4 address too.
                Some("IPv4-compatible")
            } else if seg0 == 0x64 && v6.segments()[1] == 0xff9b {
                Some("NAT64")
            } else if seg0 == 0x2001 && v6.segments()[1] == 0x0db8 {
                Some("documentation")
            } else if seg0 == 0x2002 {
                // 6to4 embeds an IPv4 address (2002:AABB:CCDD::), which a relay would reach.
                Some("6to4")
            } else if seg0 == 0x2001 && v6.segments()[1] == 0 {
                // Teredo (2001:0::/32) embeds the server's and the client's IPv4 addresses.
                Some("Teredo")
            } else {
                None
            }
        }
    }
}

fn v4_kind(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = v4.octets();
    if v4.is_loopback() {
        Some("loopback")
    } else if v4 == Ipv4Addr::new(169, 254, 169, 254) {
        Some("cloud metadata")
    } else if v4.is_link_local() {
        Some("link-local")
    } else if v4.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("CGNAT")
    } else if v4.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if v4.is_broadcast()
        || v4.is_multicast()
        || a >= 240
        || v4.is_documentation()
        || (a == 198 && (18..20).contains(&b))
        || (a == 192 && b == 0)
    {
        // Broadcast, multicast, class E, documentation, benchmarking (198.18/15), IETF protocol assignments (192.0.0/24).
        Some("reserved")
    } else {
        None
    }
}

impl NetGuard {
    pub fn new(allow_private: bool) -> Self {
        NetGuard { allow_private }
    }

    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), GuardError> {
        if self.allow_private {
            return Ok(());
        }
        match non_public_kind(addr) {
            Some(kind) => Err(GuardError::Forbidden { host: host.to_owned(), addr, kind }),
            None => Ok(()),
        }
    }

    /// Checks a host before it is stored. IP literals and `localhost` are judged at once; names that
    /// resolve have every address checked; names that do not resolve yet are accepted here and
    /// checked again at every connection.
    pub async fn check_host_for_storage(&self, host: &str, field: &str) -> Result<(), AppError> {
        let as_error = |e: GuardError| AppError::validation(field, "forbidden_address", e.to_string());
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check_addr(host, ip).map_err(as_error);
        }
        if self.allow_private {
            return Ok(());
        }
        // `localhost.` is the same name written fully qualified (RFC 6761).
        let lower = host.trim_end_matches('.').to_ascii_lowercase();
        if lower == "localhost" || lower.ends_with(".localhost") {
            return Err(as_error(GuardError::Forbidden {
                host: host.to_owned(),
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                kind: "loopback",
            }));
        }
        match self.resolve(host, 0).await {
            Ok(_) | Err(GuardError::Unresolvable { .. }) => Ok(()),
            Err(e) => Err(as_error(e)),
        }
    }

    /// Resolves `host` and checks every address; the result is what the caller must connect to.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check_addr(host, ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let lookup = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((bare, port))).await;
        let addrs: Vec<SocketAddr> = match lookup {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(GuardError::Unresolvable { host: host.to_owned(), reason: e.to_string() }),
            Err(_) => return Err(GuardError::Unresolvable { host: host.to_owned(), reason: "lookup timed out".into() }),
        };
        if addrs.is_empty() {
            return Err(GuardError::Unresolvable { host: host.to_owned(), reason: "no addresses".into() });
        }
        for addr in &addrs {
            self.check_addr(host, addr.ip())?;
        }
        Ok(addrs)
    }

    /// Checks a URL's scheme and host: https always, http only where private hosts are allowed.
    pub async fn check_url_for_storage(&self, raw: &str, field: &str) -> Result<Url, AppError> {
        let url = Url::parse(raw)
            .map_err(|e| AppError::validation(field, "invalid_url", format!("{field} is not a valid URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private => {}
            _ => return Err(AppError::validation(field, "insecure_url", format!("{field} must be an https:// URL"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(AppError::validation(field, "invalid_url", format!("{field} must not carry credentials")));
        }
        let host = url.host_str().ok_or_else(|| AppError::validation(field, "invalid_url", format!("{field} has no host")))?;
        self.check_host_for_storage(host, field).await?;
        Ok(url)
    }

    /// An HTTP client for tenant-supplied URLs: resolves through this guard, follows no redirects.
    pub fn http_client(&self) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { guard: self.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from HTTP(S)_PROXY would resolve tenant hosts itself, past the guarded resolver.
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
    }
}

/// reqwest resolver that only yields checked addresses (IP-literal URLs are checked by `check_url_for_storage`
/// and again by callers before each request, since resolvers are not consulted for them).
struct GuardedResolver {
    guard: NetGuard,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let addrs =
                guard.resolve(name.as_str(), 0).await.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_classified() {
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "CGNAT"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("::1", "loopback"),
            ("fd00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "IPv4-mapped non-public"),
            ("::ffff:169.254.169.254", "IPv4-mapped non-public"),
            ("2002:7f00:1::1", "6to4"),
            ("2002:a9fe:a9fe::1", "6to4"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ] {
            let ip: IpAddr = addr.parse().expect("ip");
            assert_eq!(non_public_kind(ip), Some(kind), "{addr}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34", "100.128.0.1"] {
            let ip: IpAddr = public.parse().expect("ip");
            assert_eq!(non_public_kind(ip), None, "{public}");
        }
    }

    #[test]
    fn a_refusal_names_the_kind_of_address_but_never_the_address() {
        let strict = NetGuard::new(false);
        let refused = strict.check_addr("mail.example.com", "10.20.30.40".parse().expect("ip")).expect_err("refused");
        assert_eq!(refused.to_string(), "mail.example.com resolves to a private address, which is not allowed");
    }

    #[tokio::test]
    async fn resolve_refuses_private_literals_and_localhost_unless_allowed() {
        let strict = NetGuard::new(false);
        assert!(matches!(strict.resolve("127.0.0.1", 993).await, Err(GuardError::Forbidden { .. })));
        assert!(matches!(strict.resolve("[::1]", 993).await, Err(GuardError::Forbidden { .. })));
        assert!(matches!(strict.resolve("localhost", 993).await, Err(GuardError::Forbidden { .. })));
        let relaxed = NetGuard::new(true);
        let addrs = relaxed.resolve("127.0.0.1", 993).await.expect("allowed");
        assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 1], 993))]);
    }

    #[tokio::test]
    async fn urls_must_be_https_unless_private_hosts_are_allowed() {
        let strict = NetGuard::new(false);
        let err = strict.check_url_for_storage("http://example.com/token", "token_url").await.expect_err("http");
        assert_eq!(err.code(), "insecure_url");
        let err = strict.check_url_for_storage("https://10.0.0.5/token", "token_url").await.expect_err("private");
        assert_eq!(err.code(), "forbidden_address");
        let err = strict.check_url_for_storage("not a url", "token_url").await.expect_err("garbage");
        assert_eq!(err.code(), "invalid_url");
        let relaxed = NetGuard::new(true);
        relaxed.check_url_for_storage("http://127.0.0.1:9000/token", "token_url").await.expect("dev allows http to loopback");
    }

    #[tokio::test]
    async fn localhost_names_are_refused_for_storage_even_fully_qualified() {
        let strict = NetGuard::new(false);
        for host in ["localhost", "LOCALHOST", "localhost.", "mail.localhost", "Mail.LocalHost."] {
            let err = strict.check_host_for_storage(host, "host").await.expect_err(host);
            assert_eq!(err.code(), "forbidden_address", "{host}");
        }
        NetGuard::new(true).check_host_for_storage("localhost.", "host").await.expect("allowed in development");
    }

    /// A one-shot HTTP server on loopback answering every request with a redirect.
    async fn redirecting_server() -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let reply = "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn guarded_http_client_refuses_names_resolving_to_private_addresses_and_never_follows_redirects() {
        let port = redirecting_server().await;
        let strict = NetGuard::new(false).http_client().expect("client");
        let refused = strict.get(format!("http://localhost:{port}/token")).send().await;
        assert!(refused.is_err(), "a name resolving to loopback must not be reached");

        let relaxed = NetGuard::new(true).http_client().expect("client");
        let response = relaxed.get(format!("http://localhost:{port}/token")).send().await.expect("allowed in development");
        assert_eq!(response.status(), reqwest::StatusCode::FOUND, "the redirect is returned, not followed");
    }
}
