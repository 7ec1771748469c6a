//! Certificates: what `/v1/certs` lists, and renewals on demand. A renewal changes no release
//! state, backends or config, so it does not take the commit lock.

use std::sync::Arc;

use super::{ControlError, Controller};
use crate::api::{CertsResponse, RenewRequest, RenewResponse};
use crate::tls::CertManager;

impl Controller {
    /// Hands the controller the certificate manager, once, at start (`None`: no TLS).
    pub fn set_certs(&self, certs: Option<Arc<CertManager>>) {
        if let (Some(m), Some(site)) = (&certs, &self.site) {
            m.join_site(site.clone());
        }
        let _ = self.certs.set(certs);
    }

    pub(super) fn cert_manager(&self) -> Option<&Arc<CertManager>> {
        self.certs.get().and_then(Option::as_ref)
    }

    pub fn certs(&self) -> CertsResponse {
        CertsResponse {
            certs: self.cert_manager().map(|m| m.infos()).unwrap_or_default(),
        }
    }

    /// Schedules the renewal of the named hosts' certificates (every host when none is named).
    pub fn renew_certs(&self, req: RenewRequest) -> Result<RenewResponse, ControlError> {
        let Some(m) = self.cert_manager() else {
            return Err(ControlError::NoTls);
        };
        let hosts = m.force_renew(&req.hosts);
        if hosts.is_empty() {
            return Err(ControlError::NoCertificate { hosts: req.hosts });
        }
        Ok(RenewResponse { hosts })
    }
}
