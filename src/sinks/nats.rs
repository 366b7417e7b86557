//! The nats sink: a JetStream publish per event, acknowledged by the stream's `PubAck`.
//!
//! `Nats-Msg-Id` is `provider:event_id`, so JetStream's own duplicate window backs up the
//! gateway's dedup: a publish that timed out here but still reached the stream is not stored
//! twice when the sender retries. The envelope travels as `Portcullis-*` headers (plus the
//! forwarded request headers) and the raw body as the payload. Once connected the client
//! reconnects forever; while it is away publishes time out into 503s. Until the first
//! connection each publish tries to connect, so a refusal (a certificate, a credential) is
//! the 503's logged reason rather than a silent timeout.
//!
//! A secured server: `tls:` (its CA, a client certificate) makes the client require TLS, and
//! one of `creds` (a `.creds` file: JWT and seed), `nkey` (a seed) or `username`/`password`
//! signs it in; seeds and passwords come from `env:`/`file:` and are never logged. The
//! JetStream source of outbound messages signs in the same way ([`Access`]).

use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{render, Envelope, Sink, SinkError};

pub struct NatsSink {
    name: String,
    config: Config,
    /// Created on first use, inside the server's runtime, with the stream ensured once.
    context: OnceCell<(async_nats::Client, jetstream::Context)>,
}

impl NatsSink {
    pub fn new(name: &str, config: Config) -> NatsSink {
        NatsSink {
            name: name.to_owned(),
            config,
            context: OnceCell::new(),
        }
    }

    async fn context(&self) -> Result<&(async_nats::Client, jetstream::Context), SinkError> {
        self.context
            .get_or_try_init(|| async {
                let client = self
                    .config
                    .access
                    .options()
                    .map_err(|e| SinkError::Unavailable(format!("nats credentials: {e}")))?
                    .connection_timeout(self.config.timeout.min(Duration::from_secs(2)))
                    .max_reconnects(None)
                    .connect(self.config.url.as_str())
                    .await
                    .map_err(|e| SinkError::Unavailable(format!("nats connect: {e}")))?;
                let mut js = jetstream::new(client.clone());
                js.set_timeout(self.config.timeout);
                self.ensure_stream(&js).await?;
                Ok((client, js))
            })
            .await
    }

    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), SinkError> {
        let (true, Some(name)) = (self.config.create_stream, &self.config.stream) else {
            return Ok(());
        };
        let subjects = vec![stream_subjects(&self.config.subject)];
        js.get_or_create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects,
            duplicate_window: self.config.duplicate_window,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| SinkError::Unavailable(format!("nats stream {name}: {e}")))
    }

    fn headers(envelope: &Envelope) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:{}", envelope.provider, envelope.event_id).as_str(),
        );
        headers.insert("Portcullis-Provider", envelope.provider.as_str());
        headers.insert("Portcullis-Event-Id", envelope.event_id.as_str());
        headers.insert("Portcullis-Event-Type", envelope.event_type.as_str());
        headers.insert("Portcullis-Received-At", envelope.received_at.as_str());
        headers.insert("Portcullis-Source-Ip", envelope.source_ip.as_str());
        headers.insert(
            "Portcullis-Verified",
            if envelope.verified { "true" } else { "false" },
        );
        if let Some(reason) = envelope.reason {
            headers.insert("Portcullis-Reason", reason);
        }
        if let Some(map) = &envelope.map {
            headers.insert("Portcullis-Map", map.as_str());
        }
        for (name, value) in &envelope.headers {
            headers.append(name.as_str(), value.as_str());
        }
        headers
    }
}

/// The subjects a created stream listens on: the template's literal prefix and `>` (an event
/// type may span several subject tokens, like Stripe's `charge.succeeded`).
pub fn stream_subjects(template: &str) -> String {
    match template.find('{') {
        None => template.to_owned(),
        Some(i) => format!("{}>", &template[..i]),
    }
}

/// Whether `create_stream` can derive its subjects from the template.
pub fn check_stream_subject(template: &str) -> Result<(), String> {
    match template.find('{') {
        Some(i) if i == 0 || !template[..i].ends_with('.') => Err(format!(
            "subject `{template}`: with create_stream, placeholders must follow a literal prefix ending in `.` (like webhooks.{{provider}})"
        )),
        _ => Ok(()),
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), SinkError> {
        let attempt = async {
            let (_, js) = self.context().await?;
            let ack = js
                .publish_with_headers(
                    render(&self.config.subject, envelope),
                    Self::headers(envelope),
                    envelope.body.clone(),
                )
                .await
                .map_err(|e| SinkError::Unavailable(format!("nats publish: {e}")))?;
            ack.await
                .map(|_| ())
                .map_err(|e| SinkError::Unavailable(format!("nats ack: {e}")))
        };
        match tokio::time::timeout(self.config.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::Unavailable(format!(
                "no JetStream ack within {:?}",
                self.config.timeout
            ))),
        }
    }

    /// Bounded like the other sinks' checks: a first call may still be ensuring the stream.
    async fn ready(&self) -> bool {
        match tokio::time::timeout(Duration::from_secs(1), self.context()).await {
            Ok(Ok((client, _))) => {
                client.connection_state() == async_nats::connection::State::Connected
            }
            _ => false,
        }
    }
}

/// `type: nats`.
pub const KIND: super::Kind = super::Kind::of::<Spec>("nats");

#[derive(Debug, serde::Deserialize)]
pub struct Spec {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    create_stream: Option<bool>,
    #[serde(default)]
    duplicate_window: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    tls: Option<super::config::TlsSpec>,
    #[serde(default)]
    creds: Option<String>,
    #[serde(default)]
    nkey: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub url: String,
    /// The JetStream stream; required with `create_stream`.
    pub stream: Option<String>,
    pub subject: String,
    pub create_stream: bool,
    pub duplicate_window: Duration,
    pub timeout: Duration,
    pub access: Access,
}

/// How a client reaches a secured server: its TLS and its credentials.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub tls: Option<super::config::ClientTls>,
    pub auth: Option<Auth>,
}

/// The keys of a sink or source that make its [`Access`], as written.
pub struct AccessSpec<'a> {
    pub tls: Option<&'a super::config::TlsSpec>,
    pub creds: Option<&'a str>,
    pub nkey: Option<&'a str>,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

/// How the client signs in.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A `.creds` file's text (a user JWT and its seed).
    Creds(crate::config::secrets::Secret),
    /// A user nkey's seed.
    Nkey(crate::config::secrets::Secret),
    Password {
        username: String,
        password: crate::config::secrets::Secret,
    },
}

impl Access {
    /// `tls:` and at most one way to sign in, checked at their keys.
    pub fn load(
        spec: AccessSpec<'_>,
        base: &std::path::Path,
        at: &mut crate::config::Section<'_, '_>,
    ) -> Access {
        Access {
            tls: super::config::client_tls(spec.tls, base, at),
            auth: spec.auth(base, at),
        }
    }

    /// The client's TLS and credentials.
    pub fn options(&self) -> std::io::Result<async_nats::ConnectOptions> {
        let text =
            |s: &crate::config::secrets::Secret| String::from_utf8_lossy(&s.0).trim().to_owned();
        let mut options = match &self.auth {
            None => async_nats::ConnectOptions::new(),
            Some(Auth::Creds(creds)) => async_nats::ConnectOptions::with_credentials(&text(creds))?,
            Some(Auth::Nkey(seed)) => async_nats::ConnectOptions::with_nkey(text(seed)),
            Some(Auth::Password { username, password }) => {
                async_nats::ConnectOptions::with_user_and_password(username.clone(), text(password))
            }
        };
        if let Some(tls) = &self.tls {
            options = options.require_tls(true);
            if let Some(ca) = &tls.ca {
                options = options.add_root_certificates(ca.clone());
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        Ok(options)
    }
}

impl super::SinkConfig for Config {
    fn build(&self, name: &str, _built: &super::Built) -> Result<std::sync::Arc<dyn Sink>, String> {
        Ok(std::sync::Arc::new(NatsSink::new(name, self.clone())))
    }
}

impl AccessSpec<'_> {
    /// At most one way to sign in, its secret resolved and (a `.creds` file) parsed.
    fn auth(
        &self,
        base: &std::path::Path,
        at: &mut crate::config::Section<'_, '_>,
    ) -> Option<Auth> {
        let given = [
            self.creds.is_some(),
            self.nkey.is_some(),
            self.username.is_some() || self.password.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            at.error(
                &["username"],
                "nats: sign in one way: creds, nkey, or username with password",
            );
            return None;
        }
        if let Some(path) = &self.creds {
            let text = match std::fs::read(base.join(path)) {
                Ok(t) => crate::config::secrets::Secret(t),
                Err(e) => {
                    at.error(&["creds"], format!("creds `{path}`: {e}"));
                    return None;
                }
            };
            if let Err(e) =
                async_nats::ConnectOptions::with_credentials(&String::from_utf8_lossy(&text.0))
            {
                at.error(&["creds"], format!("creds `{path}` is not a NATS credentials file (a user JWT and its seed): {e}"));
                return None;
            }
            return Some(Auth::Creds(text));
        }
        if let Some(seed) = &self.nkey {
            let seed = super::config::password(seed, base, &["nkey"], at)?;
            if !seed.0.starts_with(b"SU") {
                at.error(&["nkey"], "nkey: a user seed starts with SU (the public key, U…, is the server's to know)");
                return None;
            }
            return Some(Auth::Nkey(seed));
        }
        match (&self.username, &self.password) {
            (None, None) => None,
            (Some(username), Some(password)) => Some(Auth::Password {
                username: (*username).to_owned(),
                password: super::config::password(password, base, &["password"], at)?,
            }),
            _ => {
                at.error(&["username"], "nats: username and password go together");
                None
            }
        }
    }
}

/// JetStream's default duplicate window, which `Nats-Msg-Id` dedup relies on.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

impl super::config::Spec for Spec {
    fn load(
        &self,
        name: &str,
        base: &std::path::Path,
        at: &mut crate::config::Section<'_, '_>,
    ) -> Option<std::sync::Arc<dyn super::SinkConfig>> {
        let timeout = super::config::timeout(self.timeout.as_deref(), at);
        let access = Access::load(
            AccessSpec {
                tls: self.tls.as_ref(),
                creds: self.creds.as_deref(),
                nkey: self.nkey.as_deref(),
                username: self.username.as_deref(),
                password: self.password.as_deref(),
            },
            base,
            at,
        );
        let url = super::config::url(self.url.as_ref(), "nats", name, "nats://127.0.0.1:4222", at)?;
        let subject = self
            .subject
            .clone()
            .unwrap_or_else(|| "webhooks.{provider}".into());
        if let Err(e) = super::check_template(&subject) {
            at.error(&["subject"], e);
        }
        let create_stream = self.create_stream.unwrap_or(false);
        if create_stream {
            if let Err(e) = check_stream_subject(&subject) {
                at.error(&["subject"], e);
            }
        }
        if create_stream && self.stream.is_none() {
            at.error(
                &["create_stream"],
                "create_stream needs `stream:` (the JetStream stream name, like WEBHOOKS)",
            );
        }
        let duplicate_window = at.duration(
            "duplicate_window",
            self.duplicate_window.as_deref(),
            DEFAULT_DUPLICATE_WINDOW,
            |_| Ok(()),
        );
        Some(std::sync::Arc::new(Config {
            url,
            stream: self.stream.clone(),
            subject,
            create_stream,
            duplicate_window,
            timeout,
            access,
        }))
    }
}
