//! The provider's signature and timestamp, checked over the raw body by the filter's scheme.

use std::sync::Arc;

use super::Filter;
use crate::reason::Reason;
use crate::request::Inbound;
use crate::schemes::Scheme;

pub struct Signature {
    scheme: Arc<dyn Scheme>,
}

impl Signature {
    pub fn new(scheme: Arc<dyn Scheme>) -> Signature {
        Signature { scheme }
    }
}

impl Filter for Signature {
    fn check_body(&self, req: &Inbound<'_>, now: i64) -> Result<(), Reason> {
        self.scheme.verify(req, now)
    }
}
