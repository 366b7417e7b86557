//! Who is calling: every call needs `Authorization: Bearer <token>` (one of
//! `outbound.tokens`, compared in constant time, never logged). A token alone is an admin; an
//! `X-Account-Id: <tenant>` header narrows the call to that tenant, and is believed only from
//! `outbound.trusted_proxies` (a gateway such as Kong that authenticated the caller and set
//! the header). From any other peer the header is refused rather than ignored: a caller who
//! means to act as one tenant must never be quietly given every tenant.

use ipnet::IpNet;
use pingora::protocols::http::ServerSession;
use subtle::ConstantTimeEq;

/// The caller of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Every tenant.
    Admin,
    /// Only this tenant's endpoints and messages.
    Tenant(String),
}

impl Principal {
    /// Whether the caller may act for `tenant`.
    pub fn may(&self, tenant: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Tenant(t) => t == tenant,
        }
    }

    /// The tenant a scoped caller is limited to.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::Tenant(t) => Some(t),
        }
    }
}

/// The header a trusted proxy names the tenant in.
pub const ACCOUNT_HEADER: &str = "x-account-id";

/// Why a call was not authenticated: (status, reason).
pub type Denied = (u16, &'static str);

pub fn principal(
    session: &ServerSession,
    tokens: &[Vec<u8>],
    trusted: &[IpNet],
) -> Result<Principal, Denied> {
    let headers = &session.req_header().headers;
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return Err((401, "unauthorized"));
    };
    let mut ok = false;
    for known in tokens {
        ok |= bool::from(known.as_slice().ct_eq(token.as_bytes()));
    }
    if !ok {
        return Err((401, "unauthorized"));
    }
    let mut accounts = headers.get_all(ACCOUNT_HEADER).iter();
    let Some(account) = accounts.next() else {
        return Ok(Principal::Admin);
    };
    // Two values: a proxy appended its own to the caller's instead of replacing it.
    if accounts.next().is_some() {
        return Err((400, "invalid_account"));
    }
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    if !peer.is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip))) {
        return Err((403, "account_header_untrusted"));
    }
    match account.to_str() {
        Ok(t) if crate::config::is_name(t) => Ok(Principal::Tenant(t.to_owned())),
        _ => Err((400, "invalid_account")),
    }
}
