/// Errors setting up the gateway (configuration, TLS, listeners).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl From<proctor_identity::ConfigError> for GatewayError {
    fn from(error: proctor_identity::ConfigError) -> GatewayError {
        match error {
            proctor_identity::ConfigError::Config(message) => GatewayError::Config(message),
            proctor_identity::ConfigError::Tls(message) => GatewayError::Tls(message),
        }
    }
}

impl From<proctor_masking::MaskingError> for GatewayError {
    fn from(error: proctor_masking::MaskingError) -> GatewayError {
        GatewayError::Config(error.0)
    }
}
