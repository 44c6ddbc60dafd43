//! [`Kv`] on etcd's v3 API (the `etcd-client` crate, gRPC). Every call is bounded by
//! [`CALL_TIMEOUT`], so an unreachable store is an error within seconds, not a hang.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use super::{
    Change, Credentials, Entry, Expect, Kv, Listing, LocalFuture, Read, StoreError, StoreUrl,
    WatchMessage,
};

/// The longest one request may take (connecting included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings on the watch's connection: a store that vanished without closing it (a host
/// gone) ends the watch within interval + timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct EtcdKv {
    url: StoreUrl,
    client: Client,
}

impl EtcdKv {
    /// A client for `url`'s endpoints, with TLS, a client certificate and a user as
    /// `credentials` say; it connects on first use (and again after an outage), except with a
    /// user, whose password is checked at once.
    pub async fn new(url: &StoreUrl, credentials: &Credentials) -> Result<EtcdKv, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if let Some(cacert) = &credentials.cacert {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(cacert));
            if let Some((cert, key)) = &credentials.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        if let Some((name, password)) = &credentials.user {
            // etcd's tokens expire (simple tokens after 5 minutes unused): a new one is asked
            // for when a request finds its token refused.
            options = options
                .with_user(name, password)
                .with_auto_token_refresh(true);
        }
        let scheme = credentials.scheme();
        let endpoints: Vec<String> = url
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|e| error(url, e))?;
        Ok(EtcdKv {
            url: url.clone(),
            client,
        })
    }
}

fn error(url: &StoreUrl, e: etcd_client::Error) -> StoreError {
    // etcd's codes for a failed authentication (InvalidArgument), an expired or unknown token
    // (Unauthenticated) and a missing permission.
    let refused = matches!(&e, etcd_client::Error::GRpcStatus(status) if matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    ));
    StoreError {
        store: url.to_string(),
        reason: one_line(&reason(&e)),
        refused,
    }
}

/// The error and its sources: a failed TLS handshake is "transport error" alone, its cause
/// (an unknown issuer, a certificate the store does not accept) is in the sources. A gRPC
/// status is shown by its message (etcd's sentence), not by the client's debug form.
fn reason(e: &etcd_client::Error) -> String {
    let (mut text, mut source) = match e {
        etcd_client::Error::GRpcStatus(status) => (
            status.message().to_string(),
            std::error::Error::source(status),
        ),
        other => (other.to_string(), std::error::Error::source(other)),
    };
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn timed_out(url: &StoreUrl) -> StoreError {
    StoreError {
        store: url.to_string(),
        reason: format!("no answer within {CALL_TIMEOUT:?}"),
        refused: false,
    }
}

/// gRPC errors span lines; a log line and a CLI answer take one.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn entry(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    }
}

/// Bounds a call that the client's own timeout may not cover (streams).
async fn bounded<T>(
    url: &StoreUrl,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| error(url, e)),
        Err(_) => Err(timed_out(url)),
    }
}

impl Kv for EtcdKv {
    fn name(&self) -> String {
        self.url.to_string()
    }

    fn get(&self, key: String) -> LocalFuture<'_, Result<Read, StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let response = bounded(&self.url, client.get(key, None)).await?;
            Ok(Read {
                entry: response.kvs().first().map(entry),
                revision: response.header().map_or(0, |h| h.revision()),
            })
        })
    }

    fn list(&self, prefix: String) -> LocalFuture<'_, Result<Listing, StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let options = GetOptions::new().with_prefix();
            let response = bounded(&self.url, client.get(prefix, Some(options))).await?;
            Ok(Listing {
                entries: response.kvs().iter().map(entry).collect(),
                revision: response.header().map_or(0, |h| h.revision()),
            })
        })
    }

    fn put_if(
        &self,
        key: String,
        value: Vec<u8>,
        expect: Expect,
    ) -> LocalFuture<'_, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let compare = match expect {
                // Version 0: the key does not exist.
                Expect::Absent => Compare::version(key.clone(), CompareOp::Equal, 0),
                Expect::ModRevision(r) => Compare::mod_revision(key.clone(), CompareOp::Equal, r),
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, value, None)]);
            let response = bounded(&self.url, client.txn(txn)).await?;
            Ok(response
                .succeeded()
                .then(|| response.header().map_or(0, |h| h.revision())))
        })
    }

    fn watch(
        &self,
        prefix: String,
        from: i64,
    ) -> LocalFuture<'_, Result<mpsc::UnboundedReceiver<WatchMessage>, StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let options = WatchOptions::new().with_prefix().with_start_revision(from);
            let mut stream = bounded(&self.url, client.watch(prefix, Some(options))).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            let url = self.url.clone();
            // Ends when the stream does, or when the receiver is dropped.
            tokio::spawn(async move {
                loop {
                    let message = tokio::select! {
                        message = stream.message() => message,
                        () = tx.closed() => return,
                    };
                    let message = match message {
                        Ok(Some(response))
                            if response.canceled() && response.compact_revision() > 0 =>
                        {
                            WatchMessage::Compacted {
                                oldest: response.compact_revision(),
                            }
                        }
                        Ok(Some(response)) if response.canceled() => WatchMessage::Ended(format!(
                            "the store cancelled the watch: {}",
                            response.cancel_reason()
                        )),
                        Ok(Some(response)) => {
                            let changes: Vec<Change> = response
                                .events()
                                .iter()
                                .filter_map(|event| {
                                    let kv = event.kv()?;
                                    Some(match event.event_type() {
                                        EventType::Put => Change::Put(entry(kv)),
                                        EventType::Delete => Change::Delete {
                                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                                            revision: kv.mod_revision(),
                                        },
                                    })
                                })
                                .collect();
                            if changes.is_empty() {
                                continue;
                            }
                            WatchMessage::Changes(changes)
                        }
                        Ok(None) => WatchMessage::Ended("the store closed the watch".into()),
                        Err(e) => WatchMessage::Ended(error(&url, e).reason),
                    };
                    let last = !matches!(message, WatchMessage::Changes(_));
                    if tx.send(message).is_err() || last {
                        return;
                    }
                }
            });
            Ok(rx)
        })
    }

    fn grant(&self, ttl_s: i64) -> LocalFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let response = bounded(&self.url, client.lease_grant(ttl_s, None)).await?;
            Ok(response.id())
        })
    }

    fn keep_alive(&self, lease: i64) -> LocalFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let renewed = async {
                let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                let response = stream.message().await?;
                Ok::<_, etcd_client::Error>(response.is_some_and(|r| r.ttl() > 0))
            };
            bounded(&self.url, renewed).await
        })
    }

    fn put_leased(
        &self,
        key: String,
        value: Vec<u8>,
        lease: i64,
    ) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let options = PutOptions::new().with_lease(lease);
            bounded(&self.url, client.put(key, value, Some(options))).await?;
            Ok(())
        })
    }
}

impl EtcdKv {
    /// For messages about this store.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }
}
