//! The write rules over the in-memory store.

use super::{memory::MemoryKv, *};

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn of_two_nodes_seeding_at_once_exactly_one_writes_and_both_see_its_value() {
    block_on(async {
        let kv = MemoryKv::default();
        let first = seed(&kv, "/s/model", b"one".to_vec()).await.unwrap();
        let second = seed(&kv, "/s/model", b"two".to_vec()).await.unwrap();
        let Seeded::Wrote(revision) = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            second,
            Seeded::Found(Entry {
                key: "/s/model".into(),
                value: b"one".to_vec(),
                mod_revision: revision
            })
        );
        assert_eq!(kv.value("/s/model").unwrap(), b"one");
    });
}

#[test]
fn a_lost_race_is_tried_again_on_the_winners_value() {
    block_on(async {
        let kv = MemoryKv::default();
        kv.put("/s/model", b"a");
        // Another node writes "ab" between this node's read and its write, twice.
        kv.race(vec![b"ax".to_vec(), b"ay".to_vec()]);
        let mut seen = Vec::new();
        let revision = compare_and_swap(&kv, "/s/model", |entry| {
            seen.push(entry.value.clone());
            Ok::<_, String>([entry.value.as_slice(), b"+"].concat())
        })
        .await
        .unwrap();
        assert_eq!(seen, [b"a".to_vec(), b"ay".to_vec(), b"ax".to_vec()]);
        assert_eq!(kv.value("/s/model").unwrap(), b"ax+", "no write was lost");
        assert_eq!(kv.get("/s/model".into()).await.unwrap().revision, revision);
    });
}

#[test]
fn losing_every_attempt_refuses_and_writes_nothing() {
    block_on(async {
        let kv = MemoryKv::default();
        kv.put("/s/model", b"a");
        kv.race((0..CAS_ATTEMPTS).map(|i| vec![b'0' + i as u8]).collect());
        let e = compare_and_swap(&kv, "/s/model", |_| Ok::<_, String>(b"mine".to_vec()))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                CasError::Lost {
                    attempts: CAS_ATTEMPTS,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("nothing was written, try again"),
            "{e}"
        );
        assert_ne!(kv.value("/s/model").unwrap(), b"mine");
    });
}

#[test]
fn an_edit_refused_or_a_store_down_or_a_missing_key_writes_nothing() {
    block_on(async {
        let kv = MemoryKv::default();
        let e = compare_and_swap(&kv, "/s/model", |_| Ok::<_, String>(vec![]))
            .await
            .unwrap_err();
        assert!(matches!(e, CasError::Absent(_)), "{e}");
        kv.put("/s/model", b"a");
        let e = compare_and_swap(&kv, "/s/model", |_| Err::<Vec<u8>, _>("bad edit"))
            .await
            .unwrap_err();
        assert!(matches!(e, CasError::Edit("bad edit")), "{e}");
        kv.set_down(true);
        let e = compare_and_swap(&kv, "/s/model", |_| Ok::<_, String>(vec![]))
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("the store etcd://memory/test cannot be reached"),
            "{e}"
        );
        kv.set_down(false);
        assert_eq!(kv.value("/s/model").unwrap(), b"a");
    });
}

#[test]
fn a_watch_resumed_from_a_listing_misses_nothing_and_a_compacted_one_says_so() {
    block_on(async {
        let kv = MemoryKv::default();
        let keys = Keys::new("/s/");
        kv.put(&keys.model(), b"1");
        let listing = kv.list(keys.all()).await.unwrap();
        // Written after the listing, before the watch starts.
        kv.put(&keys.model(), b"2");
        kv.put("/other/model", b"x");
        let mut watch = kv.watch(keys.all(), listing.revision + 1).await.unwrap();
        kv.put(&keys.node("n1"), b"{}");
        let mut values = Vec::new();
        while let Ok(WatchMessage::Changes(changes)) = watch.try_recv() {
            for change in changes {
                if let Change::Put(entry) = change {
                    values.push((entry.key, entry.value));
                }
            }
        }
        assert_eq!(
            values,
            [
                ("/s/model".to_string(), b"2".to_vec()),
                ("/s/nodes/n1".to_string(), b"{}".to_vec())
            ]
        );
        kv.compact();
        let mut watch = kv.watch(keys.all(), listing.revision + 1).await.unwrap();
        assert!(matches!(
            watch.try_recv(),
            Ok(WatchMessage::Compacted { .. })
        ));
        // An outage ends watches.
        let mut watch = kv
            .watch(keys.all(), kv.get(keys.model()).await.unwrap().revision + 1)
            .await
            .unwrap();
        kv.set_down(true);
        assert!(matches!(watch.try_recv(), Ok(WatchMessage::Ended(_))));
    });
}
