//! What a wrapper around a pingora `Stream` (in a field `inner`) answers from the stream it
//! wraps: its id, TLS details, timing, PROXY and socket digests. The wrappers
//! (`edge::replay`, `edge::coalesce`) change how bytes move, never who the peer is.

/// Implements `UniqueID`, `Ssl`, `GetTimingDigest`, `GetProxyDigest`, `GetSocketDigest` and
/// `Peek` for `$ty` by asking `self.inner`.
macro_rules! forward_stream_info {
    ($ty:ty) => {
        impl pingora_core::protocols::UniqueID for $ty {
            fn id(&self) -> pingora_core::protocols::UniqueIDType {
                pingora_core::protocols::UniqueID::id(&*self.inner)
            }
        }

        impl pingora_core::protocols::Ssl for $ty {
            fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
                pingora_core::protocols::Ssl::get_ssl(&*self.inner)
            }

            fn get_ssl_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::tls::SslDigest>> {
                pingora_core::protocols::Ssl::get_ssl_digest(&*self.inner)
            }

            fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
                pingora_core::protocols::Ssl::selected_alpn_proto(&*self.inner)
            }
        }

        impl pingora_core::protocols::GetTimingDigest for $ty {
            fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
                pingora_core::protocols::GetTimingDigest::get_timing_digest(&*self.inner)
            }
        }

        impl pingora_core::protocols::GetProxyDigest for $ty {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
                pingora_core::protocols::GetProxyDigest::get_proxy_digest(&*self.inner)
            }
        }

        impl pingora_core::protocols::GetSocketDigest for $ty {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::SocketDigest>> {
                pingora_core::protocols::GetSocketDigest::get_socket_digest(&*self.inner)
            }
        }

        #[async_trait::async_trait]
        impl pingora_core::protocols::Peek for $ty {}
    };
}

pub(crate) use forward_stream_info;
