//! The stable rejection reasons of the response contract.
//!
//! Tests, dashboards and senders match on these snake_case strings, so they live in one
//! enum: the status code, the body text and the Retry-After hint can never drift apart.

/// Why a request was not accepted. `as_str` is the wire name, `status` its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    UnknownProvider,
    MethodNotAllowed,
    IpNotAllowed,
    RateLimited,
    PayloadTooLarge,
    UnsupportedContentType,
    BodyTimeout,
    InvalidBody,
    InvalidRequest,
    UnsupportedTransferEncoding,
    MissingSignature,
    InvalidSignature,
    MissingTimestamp,
    StaleTimestamp,
    InvalidJson,
    MissingField,
    SchemaViolation,
    InProgress,
    UpstreamError,
    SinkUnavailable,
    DedupUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 21] = [
        Reason::UnknownProvider,
        Reason::MethodNotAllowed,
        Reason::IpNotAllowed,
        Reason::RateLimited,
        Reason::PayloadTooLarge,
        Reason::UnsupportedContentType,
        Reason::BodyTimeout,
        Reason::InvalidBody,
        Reason::InvalidRequest,
        Reason::UnsupportedTransferEncoding,
        Reason::MissingSignature,
        Reason::InvalidSignature,
        Reason::MissingTimestamp,
        Reason::StaleTimestamp,
        Reason::InvalidJson,
        Reason::MissingField,
        Reason::SchemaViolation,
        Reason::InProgress,
        Reason::UpstreamError,
        Reason::SinkUnavailable,
        Reason::DedupUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownProvider => "unknown_provider",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::IpNotAllowed => "ip_not_allowed",
            Reason::RateLimited => "rate_limited",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::UnsupportedContentType => "unsupported_content_type",
            Reason::BodyTimeout => "body_timeout",
            Reason::InvalidBody => "invalid_body",
            Reason::InvalidRequest => "invalid_request",
            Reason::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            Reason::MissingSignature => "missing_signature",
            Reason::InvalidSignature => "invalid_signature",
            Reason::MissingTimestamp => "missing_timestamp",
            Reason::StaleTimestamp => "stale_timestamp",
            Reason::InvalidJson => "invalid_json",
            Reason::MissingField => "missing_field",
            Reason::SchemaViolation => "schema_violation",
            Reason::InProgress => "in_progress",
            Reason::UpstreamError => "upstream_error",
            Reason::SinkUnavailable => "sink_unavailable",
            Reason::DedupUnavailable => "dedup_unavailable",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Reason::UnknownProvider => 404,
            Reason::MethodNotAllowed => 405,
            Reason::IpNotAllowed => 403,
            Reason::RateLimited => 429,
            Reason::PayloadTooLarge => 413,
            Reason::UnsupportedContentType => 415,
            Reason::BodyTimeout => 408,
            Reason::MissingSignature
            | Reason::InvalidSignature
            | Reason::MissingTimestamp
            | Reason::StaleTimestamp => 401,
            Reason::InvalidJson
            | Reason::MissingField
            | Reason::SchemaViolation
            | Reason::InvalidBody
            | Reason::InvalidRequest => 400,
            Reason::UnsupportedTransferEncoding => 501,
            Reason::InProgress => 409,
            Reason::UpstreamError => 502,
            Reason::SinkUnavailable | Reason::DedupUnavailable => 503,
        }
    }

    /// Seconds a sender should wait before retrying, for the statuses that invite a retry.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Reason::RateLimited | Reason::InProgress => Some(1),
            Reason::SinkUnavailable | Reason::DedupUnavailable => Some(5),
            _ => None,
        }
    }

    /// Signature, timestamp and payload verdicts: the ones `mode: shadow` records instead of
    /// enforcing. Transport limits (size, rate, source) protect the gateway and always apply.
    pub fn is_verification(self) -> bool {
        matches!(
            self,
            Reason::MissingSignature
                | Reason::InvalidSignature
                | Reason::MissingTimestamp
                | Reason::StaleTimestamp
                | Reason::InvalidJson
                | Reason::MissingField
                | Reason::SchemaViolation
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
