//! Proctor's own connection to the target: TLS if configured, the startup
//! message with the target account, and authentication with the stored
//! credential (SCRAM-SHA-256, md5 or cleartext), until ReadyForQuery.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::frame::Body;
use super::messages::{Fields, PgError, fields};
use proctor_gateway_core::conn::Conn;

/// Where and as whom Proctor connects.
pub struct Target {
    pub address: String,
    pub user: String,
    pub password: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
}

/// A connected, authenticated target session.
pub struct Upstream {
    pub conn: Conn,
    /// ParameterStatus reports, in order.
    pub parameters: Vec<(String, String)>,
    pub backend_pid: i32,
    pub secret: i32,
    /// NoticeResponse frames sent during start-up, to pass on.
    pub notices: Vec<Vec<u8>>,
}

/// Why the target could not be reached or refused us.
#[derive(Debug)]
pub enum UpstreamError {
    Unreachable(String),
    /// The target's own ErrorResponse.
    Refused(Fields),
    Protocol(String),
}

impl UpstreamError {
    /// The error the client sees.
    pub fn to_client(&self, resource: &str) -> PgError {
        match self {
            UpstreamError::Unreachable(why) => {
                PgError::fatal("08001", format!("cannot reach the target of resource {resource}: {why}"))
                    .with_hint("the target may be down; try again later or ask the operator")
            }
            UpstreamError::Refused(f) if f.code.as_deref() == Some("28P01") || f.code.as_deref() == Some("28000") => {
                PgError::fatal(
                    "08004",
                    format!("the target of resource {resource} refused Proctor's stored credential"),
                )
                .with_detail(f.message.clone())
                .with_hint("ask the operator to check the resource's target password")
            }
            UpstreamError::Refused(f) => {
                let mut error = PgError::fatal(static_code(f.code.as_deref()), f.message.clone());
                error.detail = f.detail.clone();
                error
            }
            UpstreamError::Protocol(why) => {
                PgError::fatal("08P01", format!("the target of resource {resource} misbehaved: {why}"))
            }
        }
    }
}

/// SQLSTATEs the target may refuse a connection with, kept as they are.
fn static_code(code: Option<&str>) -> &'static str {
    const KNOWN: &[&str] = &[
        "3D000", "53300", "57P03", "55000", "28000", "28P01", "42501", "0A000", "08004", "57P01", "3F000", "42704",
        "22023",
    ];
    code.and_then(|c| KNOWN.iter().find(|k| **k == c).copied()).unwrap_or("08004")
}

fn unreachable(e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Unreachable(e.to_string())
}

async fn read_frame(conn: &mut Conn) -> Result<(u8, Vec<u8>), UpstreamError> {
    let mut header = [0u8; 5];
    conn.read_exact(&mut header).await.map_err(|e| unreachable(format!("connection lost during start-up ({e})")))?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=1 << 20).contains(&length) {
        return Err(UpstreamError::Protocol(format!("frame of length {length} during start-up")));
    }
    let mut body = vec![0u8; length - 4];
    conn.read_exact(&mut body).await.map_err(|e| unreachable(format!("connection lost during start-up ({e})")))?;
    Ok((header[0], body))
}

fn password_message(payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(payload.len() + 5);
    out.put_u8(b'p');
    out.put_i32(payload.len() as i32 + 4);
    out.put_slice(payload);
    out
}

fn cstring(s: &str) -> Vec<u8> {
    let mut out = s.as_bytes().to_vec();
    out.push(0);
    out
}

/// Connects and authenticates. `params` are the client's startup parameters
/// to pass on (the user is replaced by the target account).
pub async fn connect(target: &Target, params: &[(String, String)]) -> Result<Upstream, UpstreamError> {
    let tcp = tokio::time::timeout(target.connect_timeout, TcpStream::connect(&target.address))
        .await
        .map_err(|_| unreachable(format!("no answer from {} within {:?}", target.address, target.connect_timeout)))?
        .map_err(|e| unreachable(format!("{}: {e}", target.address)))?;
    let _ = tcp.set_nodelay(true);
    let mut conn = match &target.tls {
        None => Conn::Plain(tcp),
        Some(config) => {
            let mut tcp = tcp;
            let mut request = BytesMut::new();
            request.put_i32(8);
            request.put_i32(80_877_103);
            tcp.write_all(&request).await.map_err(unreachable)?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await.map_err(unreachable)?;
            if answer[0] != b'S' {
                return Err(unreachable(format!("{} does not offer TLS", target.address)));
            }
            let host = target.address.rsplit_once(':').map_or(target.address.as_str(), |(h, _)| h);
            let name = ServerName::try_from(host.trim_matches(|c| c == '[' || c == ']').to_string())
                .map_err(|e| unreachable(format!("bad target host name {host}: {e}")))?;
            let stream = TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS with {} failed: {e}", target.address)))?;
            Conn::ClientTls(Box::new(stream))
        }
    };

    let mut body = BytesMut::new();
    body.put_i32(196_608);
    body.put_slice(&cstring("user"));
    body.put_slice(&cstring(&target.user));
    for (key, value) in params {
        if key != "user" {
            body.put_slice(&cstring(key));
            body.put_slice(&cstring(value));
        }
    }
    body.put_u8(0);
    let mut startup = BytesMut::with_capacity(body.len() + 4);
    startup.put_i32(body.len() as i32 + 4);
    startup.put_slice(&body);
    conn.write_all(&startup).await.map_err(unreachable)?;

    let mut scram: Option<ScramSha256> = None;
    let mut parameters = Vec::new();
    let mut notices = Vec::new();
    let mut key = (0, 0);
    loop {
        let (tag, body) = read_frame(&mut conn).await?;
        match tag {
            b'R' => {
                let mut reader = Body::new(&body);
                let code = reader.i32().unwrap_or(-1);
                let reply = match code {
                    0 => None,
                    3 => Some(password_message(&cstring(&target.password))),
                    5 => {
                        let salt: [u8; 4] = reader
                            .take(4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| UpstreamError::Protocol("md5 request without salt".into()))?;
                        let hash = md5_hash(target.user.as_bytes(), target.password.as_bytes(), salt);
                        Some(password_message(&cstring(&hash)))
                    }
                    10 => {
                        let mut mechanisms = Vec::new();
                        while let Some(m) = reader.cstr().filter(|m| !m.is_empty()) {
                            mechanisms.push(String::from_utf8_lossy(m).into_owned());
                        }
                        if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                            return Err(UpstreamError::Protocol(format!(
                                "no supported SASL mechanism in {mechanisms:?}"
                            )));
                        }
                        let client = ScramSha256::new(target.password.as_bytes(), ChannelBinding::unsupported());
                        let mut payload = cstring("SCRAM-SHA-256");
                        payload.extend_from_slice(&(client.message().len() as i32).to_be_bytes());
                        payload.extend_from_slice(client.message());
                        scram = Some(client);
                        Some(password_message(&payload))
                    }
                    11 => {
                        let client = scram
                            .as_mut()
                            .ok_or_else(|| UpstreamError::Protocol("SASL continue without start".into()))?;
                        client
                            .update(reader.remaining())
                            .map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
                        Some(password_message(client.message()))
                    }
                    12 => {
                        let client =
                            scram.as_mut().ok_or_else(|| UpstreamError::Protocol("SASL final without start".into()))?;
                        client.finish(reader.remaining()).map_err(|e| {
                            UpstreamError::Protocol(format!("the target's SCRAM signature is wrong: {e}"))
                        })?;
                        None
                    }
                    other => {
                        return Err(UpstreamError::Protocol(format!("unsupported authentication request {other}")));
                    }
                };
                if let Some(reply) = reply {
                    conn.write_all(&reply).await.map_err(unreachable)?;
                }
            }
            b'S' => {
                let mut reader = Body::new(&body);
                let name = reader.cstr().map(|s| String::from_utf8_lossy(s).into_owned()).unwrap_or_default();
                let value = reader.cstr().map(|s| String::from_utf8_lossy(s).into_owned()).unwrap_or_default();
                parameters.push((name, value));
            }
            b'K' => {
                let mut reader = Body::new(&body);
                key = (reader.i32().unwrap_or(0), reader.i32().unwrap_or(0));
            }
            b'N' => {
                let mut frame = vec![b'N'];
                frame.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                frame.extend_from_slice(&body);
                notices.push(frame);
            }
            b'E' => return Err(UpstreamError::Refused(fields(&body))),
            b'v' => {}
            b'Z' => {
                return Ok(Upstream { conn, parameters, backend_pid: key.0, secret: key.1, notices });
            }
            other => {
                return Err(UpstreamError::Protocol(format!("unexpected message '{}' during start-up", other as char)));
            }
        }
    }
}

/// Sends a cancel request for a target backend.
pub async fn cancel(address: &str, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut tcp = TcpStream::connect(address).await?;
    let mut request = BytesMut::new();
    request.put_i32(16);
    request.put_i32(80_877_102);
    request.put_i32(pid);
    request.put_i32(secret);
    tcp.write_all(&request).await?;
    // The target answers by closing the connection.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut sink)).await;
    Ok(())
}
