//! TLS: the certificate store and the rustls server configuration of each listener.
