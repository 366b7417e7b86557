//! Test certificates: a CA of the test's own and leaves it signs (rcgen).

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// A CA that signs the test's server and client certificates.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A leaf for `names` (server, or client with `client`): (cert PEM, key PEM, cert DER).
    pub fn leaf(&self, names: &[&str], client: bool) -> (String, String, Vec<u8>) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// A server certificate for 127.0.0.1 as `server.pem` / `server.key` in `dir`, with this
    /// CA as `ca.pem`: what a TLS broker of a test's own is started with.
    pub fn write_server(&self, dir: &std::path::Path) {
        let (cert, key, _) = self.leaf(&["127.0.0.1"], false);
        for (name, text) in [
            ("server.pem", &cert),
            ("server.key", &key),
            ("ca.pem", &self.pem),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
}
