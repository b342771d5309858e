//! A Postgres wire proxy that counts round trips: for measuring how many times the writer
//! waits on Postgres per document (README, Performance).
//!
//! A client waits for the server at each `Query` (simple protocol) and each `Sync`
//! (extended protocol: Parse/Bind/Execute... then Sync); every other message is sent
//! without waiting. So round trips = `Query` + `Sync` messages from client to server.
//! Plain TCP only: the proxy refuses TLS itself (it answers an `SSLRequest` with `N`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct PgCountingProxy {
    /// `host:port` to connect to instead of the server.
    pub addr: String,
    round_trips: Arc<AtomicU64>,
}

impl PgCountingProxy {
    /// Starts a proxy on 127.0.0.1 to `target` (host:port).
    pub async fn start(target: &str) -> PgCountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let round_trips = Arc::new(AtomicU64::new(0));
        let counter = round_trips.clone();
        let target = target.to_string();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (target, counter) = (target.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut client_r, mut client_w) = inbound.into_split();
                    let (mut server_r, mut server_w) = outbound.into_split();
                    if startup(&mut client_r, &mut client_w, &mut server_w)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
                    });
                    let _ = forward_counting(&mut client_r, &mut server_w, &counter).await;
                    down.abort();
                });
            }
        });
        PgCountingProxy { addr, round_trips }
    }

    /// A proxy to the server of `url` (a `postgres://` URL with a TCP host).
    pub async fn start_for(url: &str) -> PgCountingProxy {
        let options: PgConnectOptions = url.parse().expect("a valid database URL");
        Self::start(&format!("{}:{}", options.get_host(), options.get_port())).await
    }

    /// Round trips so far, over every connection.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::SeqCst)
    }

    /// `url` (a `postgres://` URL) pointed at the proxy instead of its host and port.
    pub fn url_for(&self, url: &str) -> String {
        let options: PgConnectOptions = url.parse().expect("a valid database URL");
        let (host, port) = self.addr.rsplit_once(':').expect("host:port");
        options
            .host(host)
            .port(port.parse().expect("a port"))
            .to_url_lossy()
            .to_string()
    }
}

/// The startup phase: untyped, length-prefixed messages. An `SSLRequest` (or a
/// `GSSENCRequest`) is refused by the proxy itself (`N`: the client goes on in plain text);
/// the startup message is forwarded.
async fn startup(
    client_r: &mut (impl AsyncReadExt + Unpin),
    client_w: &mut (impl AsyncWriteExt + Unpin),
    server_w: &mut (impl AsyncWriteExt + Unpin),
) -> std::io::Result<()> {
    loop {
        let len = client_r.read_u32().await?;
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        client_r.read_exact(&mut body).await?;
        let code = body
            .get(..4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if matches!(code, Some(80877103) | Some(80877104)) {
            client_w.write_all(b"N").await?;
            continue;
        }
        let mut message = len.to_be_bytes().to_vec();
        message.extend_from_slice(&body);
        return server_w.write_all(&message).await;
    }
}

/// Copies client -> server message by message (after the startup), counting `Query` and
/// `Sync`.
async fn forward_counting(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    counter: &AtomicU64,
) -> std::io::Result<()> {
    loop {
        let tag = from.read_u8().await?;
        let len = from.read_u32().await?;
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        from.read_exact(&mut body).await?;
        if tag == b'Q' || tag == b'S' {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        let mut message = Vec::with_capacity(body.len() + 5);
        message.push(tag);
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(&body);
        to.write_all(&message).await?;
    }
}
