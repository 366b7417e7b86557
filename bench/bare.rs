//! The floor Pingora sets, for `bench/compare.sh`: the same Pingora version, the same proxy
//! framework path (`ProxyHttp::request_filter`) and thread count as Portcullis, reading the
//! whole body and answering 202 with a small JSON body, with no checks and no sink.
//!
//!     portcullis-bare --listen 127.0.0.1:8081 --threads 2 [--cert cert.pem --key key.pem]

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Serve TLS (Pingora's rustls listener, its defaults) with this PEM certificate chain…
    #[arg(long, requires = "key")]
    cert: Option<String>,
    /// …and this PEM key.
    #[arg(long, requires = "cert")]
    key: Option<String>,
}

/// The same allocator as the gateway, so the floor differs from it only by the chain.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare;

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let mut length = 0;
        while let Some(chunk) = session.read_request_body().await? {
            length += chunk.len();
        }
        let body = Bytes::from(format!("{{\"status\":\"accepted\",\"bytes\":{length}}}"));
        let mut resp = ResponseHeader::build(202, Some(2))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len())?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Err(Error::new(ErrorType::InternalError))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    let mut proxy = http_proxy_service(&server.configuration, Bare);
    match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => proxy
            .add_tls(&args.listen, cert, key)
            .expect("load the TLS certificate and key"),
        _ => proxy.add_tcp(&args.listen),
    }
    server.add_service(proxy);
    server.bootstrap();
    server.run_forever();
}
