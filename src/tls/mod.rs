//! TLS listeners: certificates chosen by SNI, a version floor, renewed certificates picked up
//! without a restart, and optional client certificates (mTLS).
//!
//! Pingora's rustls listener builds the `ServerConfig` itself (TLS 1.2 and 1.3) and lets us
//! plug in a certificate resolver, a client-certificate verifier and a pre-TLS hook. The
//! resolver picks the certificate whose names cover the SNI name (the first pair is the
//! default) from an `ArcSwap` that [`CertWatcher`] replaces when the files change on disk
//! (certbot, cert-manager) or on SIGHUP; a renewal that does not load (half-written file, key
//! that does not match) is logged and the running certificates stay. The pre-TLS hook runs
//! the PROXY protocol reader ([`proxy_protocol`]) and then the version floor ([`floor`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

pub mod config;
pub use config::{Listener, TlsListener, TlsVersion};

mod floor;
mod proxy_protocol;
pub use floor::Tls13Floor;
pub use proxy_protocol::ProxyProtocol;

/// Pingora takes one pre-TLS hook per service: this runs each in turn.
pub struct PreTlsChain(pub Vec<Arc<dyn pingora::listeners::PreTlsProcess>>);

#[async_trait]
impl pingora::listeners::PreTlsProcess for PreTlsChain {
    async fn process(
        &self,
        stream: &mut pingora::protocols::l4::stream::Stream,
    ) -> pingora::Result<()> {
        for step in &self.0 {
            step.process(stream).await?;
        }
        Ok(())
    }
}

/// Whether a connection's local address belongs to one of `listeners` (an unspecified IP in
/// the listener matches any).
fn listener_matches(listeners: &[std::net::SocketAddr], local: std::net::SocketAddr) -> bool {
    listeners
        .iter()
        .any(|a| a.port() == local.port() && (a.ip().is_unspecified() || a.ip() == local.ip()))
}

/// How often certificate files are checked for a renewal.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Makes sure rustls has its process-wide crypto provider (ring, as Pingora uses).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// One certificate chain and its key, as loaded from a pair of PEM files.
struct LoadedPair {
    key: Arc<CertifiedKey>,
}

impl LoadedPair {
    fn load(cert: &Path, key: &Path) -> Result<LoadedPair, String> {
        let cert_pem = read_pem(cert)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no PEM certificate in it", cert.display()));
        }
        let private = PrivateKeyDer::from_pem_slice(&read_pem(key)?)
            .map_err(|e| format!("{}: no usable PEM private key: {e}", key.display()))?;
        let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
            format!(
                "{} with {}: {e} (does the key belong to the certificate?)",
                cert.display(),
                key.display()
            )
        })?;
        Ok(LoadedPair {
            key: Arc::new(certified),
        })
    }

    fn covers(&self, name: &ServerName<'_>) -> bool {
        let Some(leaf) = self.key.cert.first() else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
    }
}

/// A PEM file (certificate chain, key or CA bundle): a regular file of at most 1 MiB.
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    crate::config::diagnostics::read_capped(path, 1024 * 1024, "a PEM file")
}

/// When each file of a listener was last changed, to notice renewals.
type Stamps = Vec<Option<(SystemTime, u64)>>;

fn stamps(files: &[&Path]) -> Stamps {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// The certificates of one TLS listener and the rules for choosing among them.
pub struct CertResolver {
    addr: String,
    pairs: Vec<(PathBuf, PathBuf)>,
    loaded: ArcSwap<Vec<LoadedPair>>,
    stamps: std::sync::Mutex<Stamps>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("addr", &self.addr)
            .field("pairs", &self.pairs)
            .finish()
    }
}

impl CertResolver {
    pub fn new(addr: &str, tls: &TlsListener) -> Result<CertResolver, String> {
        let pairs = tls.pairs.clone();
        let resolver = CertResolver {
            addr: addr.to_owned(),
            loaded: ArcSwap::from_pointee(Vec::new()),
            stamps: std::sync::Mutex::new(Vec::new()),
            pairs,
        };
        let (loaded, stamps) = resolver.load_all()?;
        resolver.loaded.store(Arc::new(loaded));
        *resolver.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(resolver)
    }

    fn files(&self) -> Vec<&Path> {
        self.pairs
            .iter()
            .flat_map(|(c, k)| [c.as_path(), k.as_path()])
            .collect()
    }

    fn load_all(&self) -> Result<(Vec<LoadedPair>, Stamps), String> {
        // Stamps first: a file replaced while we read it is read again next time.
        let stamps = stamps(&self.files());
        let loaded = self
            .pairs
            .iter()
            .map(|(cert, key)| LoadedPair::load(cert, key))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((loaded, stamps))
    }

    /// Loads the files again if any changed (or `force`); keeps the running set on failure.
    pub fn reload(&self, force: bool) {
        let mut current = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if !force && *current == stamps(&self.files()) {
            return;
        }
        match self.load_all() {
            Ok((loaded, stamps)) => {
                self.loaded.store(Arc::new(loaded));
                *current = stamps;
                tracing::info!(addr = %self.addr, "TLS certificates reloaded");
            }
            Err(e) => {
                // Remember what failed, so one bad renewal is logged once, not every interval.
                *current = stamps(&self.files());
                tracing::error!(addr = %self.addr, "TLS certificates not reloaded, still serving the previous ones: {e}");
            }
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.load();
        let by_name = hello
            .server_name()
            .and_then(|sni| ServerName::try_from(sni).ok())
            .and_then(|name| loaded.iter().find(|pair| pair.covers(&name)));
        by_name.or_else(|| loaded.first()).map(|p| p.key.clone())
    }
}

/// Pingora's TLS settings for a listener: our resolver, ALPN h2 + http/1.1, optional mTLS.
pub fn settings(addr: &str, tls: &TlsListener) -> Result<(TlsSettings, Arc<CertResolver>), String> {
    let resolver = Arc::new(CertResolver::new(addr, tls)?);
    // With a resolver set, Pingora ignores the certificate paths.
    let mut settings =
        TlsSettings::intermediate("", "").map_err(|e| format!("TLS settings: {e}"))?;
    settings.set_cert_resolver(resolver.clone());
    settings.enable_h2();
    if let Some(ca) = &tls.client_ca {
        settings.set_client_cert_verifier(client_verifier(ca)?);
    }
    Ok((settings, resolver))
}

/// Requires a client certificate issued by one of the CAs in the bundle.
fn client_verifier(
    ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read_pem(ca)?) {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CA certificate in it", ca.display()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))
}

/// Checks that a listener's files load, for `portcullis check`.
pub fn validate(tls: &TlsListener) -> Result<(), String> {
    for (cert, key) in &tls.pairs {
        LoadedPair::load(cert, key)?;
    }
    if let Some(ca) = &tls.client_ca {
        client_verifier(ca)?;
    }
    Ok(())
}

/// Re-reads changed certificate files every [`WATCH_INTERVAL`], and at once on SIGHUP.
pub struct CertWatcher {
    pub resolvers: Vec<Arc<CertResolver>>,
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot watch SIGHUP: {e}");
                None
            }
        };
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
                _ = shutdown.changed() => return,
            };
            if forced {
                tracing::info!("SIGHUP: reloading TLS certificates");
            }
            for resolver in &self.resolvers {
                resolver.reload(forced);
            }
        }
    }
}
