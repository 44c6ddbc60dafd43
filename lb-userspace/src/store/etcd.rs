//! [`Kv`] on etcd's v3 API (the `etcd-client` crate, gRPC). Every call is bounded by
//! [`CALL_TIMEOUT`], so an unreachable store is an error within seconds, not a hang.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::mpsc;

use super::{
    Change, Entry, Expect, Kv, Listing, LocalFuture, Read, StoreError, StoreUrl, WatchMessage,
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
    /// A client for `url`'s endpoints; it connects on first use (and again after an outage).
    pub async fn new(url: &StoreUrl) -> Result<EtcdKv, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true);
        let endpoints: Vec<String> = url
            .endpoints
            .iter()
            .map(|e| format!("http://{e}"))
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

fn error(url: &StoreUrl, e: impl std::fmt::Display) -> StoreError {
    StoreError {
        store: url.to_string(),
        reason: one_line(&e.to_string()),
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
async fn bounded<T, E: std::fmt::Display>(
    url: &StoreUrl,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| error(url, e)),
        Err(_) => Err(error(url, format!("no answer within {CALL_TIMEOUT:?}"))),
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
