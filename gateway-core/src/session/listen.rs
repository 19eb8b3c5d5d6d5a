//! The accept loop: one listener, one task per connection, dealt to the
//! session threads (each connection on one thread for its whole life), and
//! at shutdown every session ended (each records its end) before it returns.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::threads::SessionThreads;

/// Binds a resource's listener; returns it and the address bound (the
/// port chosen when `listen` asked for port 0).
pub async fn bind(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), crate::GatewayError> {
    let error = |source| crate::GatewayError::Listen { addr: listen, source };
    let listener = TcpListener::bind(listen).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

/// Serves `listener` until `shutdown` turns true: each connection goes to
/// `session` on a session thread (on this runtime without `threads`). Then
/// waits for every session to end. `name` names the resource in logs.
pub async fn serve<F, Fut>(
    name: &str,
    listener: TcpListener,
    threads: Option<Arc<SessionThreads>>,
    mut shutdown: watch::Receiver<bool>,
    session: F,
) where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    let (session, shutdown) = (session.clone(), shutdown.clone());
                    let Some(threads) = &threads else {
                        sessions.spawn(session(tcp, addr, shutdown));
                        continue;
                    };
                    // The socket moves to its thread's own reactor, so that
                    // its readiness wakes that thread alone.
                    let tcp = match tcp.into_std() {
                        Ok(tcp) => tcp,
                        Err(error) => {
                            tracing::warn!(resource = %name, %error, "cannot hand a connection to a session thread");
                            continue;
                        }
                    };
                    let name = name.to_string();
                    sessions.spawn_on(
                        async move {
                            match TcpStream::from_std(tcp) {
                                Ok(tcp) => session(tcp, addr, shutdown).await,
                                Err(error) => tracing::warn!(resource = %name, %error, "cannot register a connection"),
                            }
                        },
                        threads.next(),
                    );
                }
                Err(error) => {
                    tracing::warn!(resource = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    while sessions.join_next().await.is_some() {}
}
