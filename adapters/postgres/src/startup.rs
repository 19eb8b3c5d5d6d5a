//! The client side of connection start-up: TLS negotiation (SSLRequest, or
//! PostgreSQL 17's direct TLS), GSSAPI refusal, cancel requests, and the
//! startup message.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::startup::{NegotiateProtocolVersion, Startup};
use pgwire::messages::{DecodeContext, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::ALPN_POSTGRESQL;
use super::messages::PgError;
use proctor_gateway_core::conn::Conn;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
/// The protocol Proctor speaks, as the version field of a StartupMessage
/// or NegotiateProtocolVersion carries it (major << 16 | minor).
const PROTOCOL_3_0: i32 = 3 << 16;
/// The longest startup-phase packet accepted (as PostgreSQL: 10000 bytes).
const MAX_STARTUP_PACKET: usize = 10_000;

/// What a new connection asked for.
pub enum Contact {
    Startup {
        conn: Conn,
        params: BTreeMap<String, String>,
    },
    /// A cancel request; the connection stays open until it has been dealt
    /// with, as PostgreSQL keeps it (clients wait for it to close).
    Cancel {
        conn: Conn,
        pid: i32,
        secret: i32,
    },
}

/// Why start-up failed; `conn` is there when the client can still be told.
pub struct Refusal {
    pub error: PgError,
    pub conn: Option<Conn>,
}

impl Refusal {
    fn new(error: PgError, conn: Option<Conn>) -> Refusal {
        Refusal { error, conn }
    }
}

fn protocol_violation(message: impl Into<String>) -> PgError {
    PgError::fatal("08P01", message)
}

/// Reads a length-prefixed start-up packet (length included in itself).
async fn read_packet(conn: &mut Conn) -> Result<Vec<u8>, PgError> {
    let mut length = [0u8; 4];
    conn.read_exact(&mut length).await.map_err(|_| {
        protocol_violation("incomplete startup packet: the connection closed before a whole packet arrived")
    })?;
    let length = i32::from_be_bytes(length);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&length) {
        return Err(protocol_violation(format!("invalid length of startup packet: {length}")));
    }
    let mut body = vec![0u8; length as usize - 4];
    conn.read_exact(&mut body).await.map_err(|_| {
        protocol_violation("incomplete startup packet: the connection closed before a whole packet arrived")
    })?;
    Ok(body)
}

/// Runs start-up until the client's startup message or cancel request.
pub async fn accept(tcp: TcpStream, tls: Option<&TlsAcceptor>, allow_plaintext: bool) -> Result<Contact, Refusal> {
    let mut first = [0u8; 1];
    let peeked = tcp.peek(&mut first).await.map_err(|_| Refusal::new(protocol_violation("connection lost"), None))?;
    if peeked == 0 {
        return Err(Refusal::new(protocol_violation("the client closed the connection before sending anything"), None));
    }
    let mut conn = if first[0] == 0x16 {
        // A TLS ClientHello: PostgreSQL 17's direct TLS (sslnegotiation=direct).
        let Some(acceptor) = tls else {
            return Err(Refusal::new(protocol_violation("direct TLS is not available on this resource"), None));
        };
        let stream = acceptor
            .accept(tcp)
            .await
            .map_err(|e| Refusal::new(protocol_violation(format!("TLS handshake failed: {e}")), None))?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            let conn = Conn::ServerTls(Box::new(stream));
            return Err(Refusal::new(
                protocol_violation("direct TLS requires the ALPN protocol \"postgresql\""),
                Some(conn),
            ));
        }
        Conn::ServerTls(Box::new(stream))
    } else {
        Conn::Plain(tcp)
    };

    loop {
        let body = match read_packet(&mut conn).await {
            Ok(body) => body,
            Err(error) => return Err(Refusal::new(error, Some(conn))),
        };
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        match code {
            SSL_REQUEST => match (conn, tls) {
                (Conn::Plain(mut tcp), Some(acceptor)) => {
                    if tcp.write_all(b"S").await.is_err() {
                        return Err(Refusal::new(protocol_violation("connection lost"), None));
                    }
                    let stream = acceptor
                        .accept(tcp)
                        .await
                        .map_err(|e| Refusal::new(protocol_violation(format!("TLS handshake failed: {e}")), None))?;
                    conn = Conn::ServerTls(Box::new(stream));
                }
                (mut plain @ Conn::Plain(_), None) => {
                    if plain.write_all(b"N").await.is_err() {
                        return Err(Refusal::new(protocol_violation("connection lost"), None));
                    }
                    conn = plain;
                }
                (other, _) => {
                    return Err(Refusal::new(
                        protocol_violation("SSLRequest received on an encrypted connection"),
                        Some(other),
                    ));
                }
            },
            GSSENC_REQUEST => {
                if conn.write_all(b"N").await.is_err() {
                    return Err(Refusal::new(protocol_violation("connection lost"), None));
                }
            }
            CANCEL_REQUEST if body.len() >= 12 => {
                let pid = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                let secret = i32::from_be_bytes([body[8], body[9], body[10], body[11]]);
                return Ok(Contact::Cancel { conn, pid, secret });
            }
            _ => {
                let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
                if major != 3 {
                    return Err(Refusal::new(
                        PgError::fatal(
                            "0A000",
                            format!("unsupported frontend protocol {major}.{minor}: Proctor speaks 3.0"),
                        ),
                        Some(conn),
                    ));
                }
                let mut packet = BytesMut::with_capacity(body.len() + 4);
                packet.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
                packet.extend_from_slice(&body);
                let startup = Startup::decode(&mut packet, &DecodeContext::new(ProtocolVersion::PROTOCOL3_0))
                    .ok()
                    .flatten()
                    .ok_or(())
                    .map_err(|_| ());
                let Ok(startup) = startup else {
                    return Err(Refusal::new(protocol_violation("invalid startup packet layout"), Some(conn)));
                };
                if !conn.is_tls() && !allow_plaintext {
                    return Err(Refusal::new(
                        PgError::fatal("28000", "this resource accepts only TLS connections")
                            .with_hint("connect with sslmode=require (or verify-full)"),
                        Some(conn),
                    ));
                }
                let mut params = startup.parameters;
                let unknown: Vec<String> = params.keys().filter(|k| k.starts_with("_pq_.")).cloned().collect();
                if minor > 0 || !unknown.is_empty() {
                    // Ask the client to speak 3.0, and list the protocol
                    // options (`_pq_.*`) we do not know. The version is
                    // sent whole, major and minor, as PostgreSQL sends it
                    // (libpq 18 refuses a bare minor 0 as a downgrade below
                    // 3.0).
                    params.retain(|k, _| !k.starts_with("_pq_."));
                    let mut out = BytesMut::new();
                    let _ = NegotiateProtocolVersion::new(PROTOCOL_3_0, unknown).encode(&mut out);
                    if conn.write_all(&out).await.is_err() {
                        return Err(Refusal::new(protocol_violation("connection lost"), None));
                    }
                }
                return Ok(Contact::Startup { conn, params });
            }
        }
    }
}

/// Builds the acceptor for a server configuration.
pub fn acceptor(config: Arc<rustls::ServerConfig>) -> TlsAcceptor {
    TlsAcceptor::from(config)
}
