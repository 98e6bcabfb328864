//! Upload sessions through the registry: chunked appends, every refusal the contract names,
//! completion, cancellation, expiry, restarts, and a model-checked random lifecycle.

mod common;

use std::time::Duration;

use artifactstore_core::registry::{Chunk, CompleteUpload};
use artifactstore_core::*;
use common::*;
use proptest::prelude::*;

fn at(start: u64, len: u64) -> Chunk {
    Chunk {
        start: Some(start),
        len: Some(len),
        total: None,
    }
}

fn complete(pkg: PackageId, path: &str, sha256: Option<&Sha256Digest>) -> CompleteUpload {
    CompleteUpload {
        package_id: pkg.to_string(),
        file: NewFile {
            path: path.into(),
            media_type: None,
            sha256: sha256.map(|d| d.hex()),
        },
    }
}

#[tokio::test]
async fn chunked_upload_completes_into_a_file() {
    let env = Env::new().await;
    let r = &env.registry;
    let pkg = r.create_package(TENANT, new_package()).await.unwrap();
    let data = bytes(1_000_003, 11);
    let up = r
        .create_upload(TENANT, Some(data.len() as u64))
        .await
        .unwrap();
    assert_eq!(
        (up.offset, up.size, up.state),
        (0, Some(1_000_003), UploadState::Open)
    );
    let mut offset = 0;
    for piece in data.chunks(300_000) {
        let got = r
            .append_upload(
                TENANT,
                up.id,
                at(offset, piece.len() as u64),
                body(piece, 8192),
            )
            .await
            .unwrap();
        offset += piece.len() as u64;
        assert_eq!(got.offset, offset);
    }
    let digest = Sha256Digest::of(&data);
    let f = r
        .complete_upload(TENANT, up.id, complete(pkg.id, "big.bin", Some(&digest)))
        .await
        .unwrap();
    assert_eq!((f.size, f.sha256()), (data.len() as u64, digest));
    assert_eq!(
        r.upload(TENANT, up.id).await.unwrap().state,
        UploadState::Completed
    );
    let (_, stream) = r.open_file(TENANT, f.id, None).await.unwrap();
    assert_eq!(collect(stream).await, data);
    assert!(env.staged_files().await.is_empty(), "staging cleaned up");

    // A completed upload takes nothing more.
    let err = r
        .append_upload(TENANT, up.id, Chunk::default(), body(b"x", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::UploadCompleted), "{err:?}");
    let err = r
        .complete_upload(TENANT, up.id, complete(pkg.id, "again", None))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::UploadCompleted), "{err:?}");
    let err = r.cancel_upload(TENANT, up.id).await.unwrap_err();
    assert!(matches!(err, RegistryError::UploadCompleted), "{err:?}");
    // The file stays.
    r.file(TENANT, f.id).await.unwrap();
}

#[tokio::test]
async fn refusals_write_nothing() {
    let env = Env::new().await;
    let r = &env.registry;
    let up = r.create_upload(TENANT, Some(10)).await.unwrap();
    r.append_upload(TENANT, up.id, at(0, 4), body(b"abcd", 2))
        .await
        .unwrap();

    let err = r
        .append_upload(TENANT, up.id, at(3, 2), body(b"xy", 2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::OffsetMismatch {
                offset: 4,
                start: 3
            }
        ),
        "{err:?}"
    );
    let err = r
        .append_upload(TENANT, up.id, at(4, 7), body(b"xxxxxxx", 2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::BeyondDeclaredSize { size: 10, .. }),
        "{err:?}"
    );
    // No declared length: the overflow is found while streaming.
    let err = r
        .append_upload(TENANT, up.id, Chunk::default(), body(b"0123456789", 3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::BeyondDeclaredSize { .. }),
        "{err:?}"
    );
    // Declared length and body disagree, both ways.
    let err = r
        .append_upload(TENANT, up.id, at(4, 3), body(b"xy", 2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::LengthMismatch { declared: 3 }),
        "{err:?}"
    );
    let err = r
        .append_upload(TENANT, up.id, at(4, 1), body(b"xy", 2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::LengthMismatch { declared: 1 }),
        "{err:?}"
    );
    let err = r
        .append_upload(
            TENANT,
            up.id,
            Chunk {
                start: Some(4),
                len: Some(2),
                total: Some(11),
            },
            body(b"xy", 2),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::SizeMismatch {
                declared: 11,
                size: 10
            }
        ),
        "{err:?}"
    );
    let err = r
        .append_upload(TENANT, up.id, Chunk::default(), failing_body(b"zz"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Body(_)), "{err:?}");

    assert_eq!(r.upload(TENANT, up.id).await.unwrap().offset, 4);
    let pkg = r.create_package(TENANT, new_package()).await.unwrap();
    let err = r
        .complete_upload(TENANT, up.id, complete(pkg.id, "f", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::UploadIncomplete {
                offset: 4,
                size: 10
            }
        ),
        "{err:?}"
    );

    r.append_upload(TENANT, up.id, Chunk::default(), body(b"efghij", 4))
        .await
        .unwrap();
    let f = r
        .complete_upload(TENANT, up.id, complete(pkg.id, "f", None))
        .await
        .unwrap();
    assert_eq!(f.sha256(), Sha256Digest::of(b"abcdefghij"));
}

#[tokio::test]
async fn failed_complete_leaves_the_upload_open() {
    let env = Env::new().await;
    let r = &env.registry;
    let pkg = r.create_package(TENANT, new_package()).await.unwrap();
    r.add_file(
        TENANT,
        pkg.id,
        NewFile {
            path: "taken".into(),
            ..Default::default()
        },
        body(b"t", 1),
    )
    .await
    .unwrap();
    // Past the inline limit, so that the same bytes added below are read from the blob.
    let hello = bytes(INLINE_FILE_BYTES as usize + 1000, 3);
    let up = r.create_upload(TENANT, None).await.unwrap();
    r.append_upload(TENANT, up.id, Chunk::default(), body(&hello, 4096))
        .await
        .unwrap();

    let wrong = Sha256Digest::of(b"nope");
    let err = r
        .complete_upload(TENANT, up.id, complete(pkg.id, "x", Some(&wrong)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    let err = r
        .complete_upload(TENANT, up.id, complete(pkg.id, "taken", None))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::PathTaken(_)), "{err:?}");
    let err = r
        .complete_upload(TENANT, up.id, complete(pkg.id, "/abs", None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Invalid(ref f) if f[0].field == "path"),
        "{err:?}"
    );
    let mut bad = complete(pkg.id, "x", None);
    bad.package_id = "nope".into();
    let err = r.complete_upload(TENANT, up.id, bad).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Invalid(ref f) if f[0].field == "package_id"),
        "{err:?}"
    );
    let err = r
        .complete_upload(
            TENANT,
            up.id,
            complete(PackageId::generate(TENANT), "x", None),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound(_)), "{err:?}");

    // The path-taken attempt is refused before the staged bytes become a blob; appending more
    // must not change the bytes of the same content stored afterwards either.
    let len = hello.len() as u64;
    let up_state = r.upload(TENANT, up.id).await.unwrap();
    assert_eq!((up_state.state, up_state.offset), (UploadState::Open, len));
    r.append_upload(TENANT, up.id, at(len, 5), body(b"world", 5))
        .await
        .unwrap();
    let blobs = open_blobs(env.dir.path(), env.blob_url.as_deref()).await;
    let stored = blobs.size(&Sha256Digest::of(&hello)).await.unwrap();
    assert_eq!(stored, None, "a refused complete stores no blob");
    let other = r.create_package(TENANT, new_package()).await.unwrap();
    let g = r
        .add_file(
            TENANT,
            other.id,
            NewFile {
                path: "h".into(),
                ..Default::default()
            },
            body(&hello, 4096),
        )
        .await
        .unwrap();
    assert!(!g.inline, "read from the blob store");
    assert_eq!(g.sha256(), Sha256Digest::of(&hello));
    let (_, stream) = r.open_file(TENANT, g.id, None).await.unwrap();
    assert!(
        collect(stream).await == hello,
        "the blob changed after it was stored"
    );

    let f = r
        .complete_upload(TENANT, up.id, complete(pkg.id, "x", None))
        .await
        .unwrap();
    let (_, stream) = r.open_file(TENANT, f.id, None).await.unwrap();
    assert!(collect(stream).await == [&hello[..], b"world"].concat());
}

#[tokio::test]
async fn cancel_and_expiry() {
    let env = Env::with_config(RegistryConfig {
        upload_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let r = &env.registry;
    let up = r.create_upload(TENANT, None).await.unwrap();
    r.append_upload(TENANT, up.id, Chunk::default(), body(b"abc", 1))
        .await
        .unwrap();
    r.cancel_upload(TENANT, up.id).await.unwrap();
    assert!(matches!(
        r.upload(TENANT, up.id).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        r.cancel_upload(TENANT, up.id).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(env.staged_files().await.is_empty());

    let old = r.create_upload(TENANT, None).await.unwrap();
    r.append_upload(TENANT, old.id, Chunk::default(), body(b"abc", 1))
        .await
        .unwrap();
    assert!(matches!(
        r.upload("beta", old.id).await,
        Err(RegistryError::NotFound(_))
    ));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(matches!(
        r.upload(TENANT, old.id).await,
        Err(RegistryError::NotFound(_))
    ));
    let err = r
        .append_upload(TENANT, old.id, Chunk::default(), body(b"d", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound(_)));
    assert_eq!(r.sweep_expired_uploads().await.unwrap(), 1);
    assert!(env.staged_files().await.is_empty());
}

#[tokio::test]
async fn empty_upload_and_oversized_declarations() {
    let env = Env::with_config(RegistryConfig {
        max_file_bytes: 100,
        ..Default::default()
    })
    .await;
    let r = &env.registry;
    let pkg = r.create_package(TENANT, new_package()).await.unwrap();
    let up = r.create_upload(TENANT, Some(0)).await.unwrap();
    let f = r
        .complete_upload(TENANT, up.id, complete(pkg.id, "empty", None))
        .await
        .unwrap();
    assert_eq!(f.sha256(), Sha256Digest::of(b""));
    assert!(matches!(
        r.create_upload(TENANT, Some(101)).await,
        Err(RegistryError::TooLarge { limit: 100 })
    ));
    let up = r.create_upload(TENANT, None).await.unwrap();
    let err = r
        .append_upload(TENANT, up.id, Chunk::default(), body(&[0; 101], 10))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::TooLarge { limit: 100 }),
        "{err:?}"
    );
    r.append_upload(TENANT, up.id, Chunk::default(), body(&[0; 100], 10))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_upload_survives_reopening_the_store() {
    let env = Env::new().await;
    let pkg = env.package().await;
    let data = bytes(700_000, 12);
    let up = env
        .registry
        .create_upload(TENANT, Some(700_000))
        .await
        .unwrap();
    env.registry
        .append_upload(
            TENANT,
            up.id,
            at(0, 250_001),
            body(&data[..250_001], 10_000),
        )
        .await
        .unwrap();
    // A restart in the middle of the next chunk: its bytes are lost, the offset is not.
    let partial = env.registry.append_upload(
        TENANT,
        up.id,
        at(250_001, 449_999),
        stalled_body(&data[250_001..400_000]),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), partial)
            .await
            .is_err()
    );

    let env = env.reopen().await;
    let resumed = env.registry.upload(TENANT, up.id).await.unwrap();
    assert_eq!(resumed.offset, 250_001);
    env.registry
        .append_upload(
            TENANT,
            up.id,
            at(250_001, 449_999),
            body(&data[250_001..], 65536),
        )
        .await
        .unwrap();
    let digest = Sha256Digest::of(&data);
    let f = env
        .registry
        .complete_upload(TENANT, up.id, complete(pkg.id, "f", Some(&digest)))
        .await
        .unwrap();
    let (_, stream) = env.registry.open_file(TENANT, f.id, None).await.unwrap();
    assert_eq!(collect(stream).await, data);
}

/// One step of the random lifecycle.
#[derive(Clone, Debug)]
enum Op {
    /// Append `len` bytes, claiming to start at the true offset plus `skew`.
    Append {
        len: usize,
        skew: i8,
        declare_len: bool,
    },
    Get,
    Complete {
        right_digest: Option<bool>,
    },
    Cancel,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..5000, prop_oneof![8 => Just(0i8), 1 => -3i8..3], any::<bool>())
            .prop_map(|(len, skew, declare_len)| Op::Append { len, skew, declare_len }),
        2 => Just(Op::Get),
        2 => prop::option::of(any::<bool>()).prop_map(|right_digest| Op::Complete { right_digest }),
        1 => Just(Op::Cancel),
    ]
}

#[derive(Debug, PartialEq)]
enum ModelState {
    Open,
    Completed,
    Gone,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random chunkings, wrong offsets, repeats, gets, cancels and completes (with and without
    /// a declared size and expected digest) agree with a small model of the session.
    #[test]
    fn lifecycle_matches_model(
        declared in prop::option::of(0u64..20_000),
        ops in prop::collection::vec(op(), 1..25),
        seed in any::<u64>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let env = Env::new().await;
            let r = &env.registry;
            let pkg = r.create_package(TENANT, new_package()).await.unwrap();
            let up = r.create_upload(TENANT, declared).await.unwrap();
            let source = bytes(40_000, seed);
            let mut model_bytes: Vec<u8> = Vec::new();
            let mut state = ModelState::Open;
            let mut completions = 0;
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Append { len, skew, declare_len } => {
                        let offset = model_bytes.len() as u64;
                        let start = offset as i64 + skew as i64;
                        if start < 0 { continue; }
                        let start = start as u64;
                        let piece = &source[(step * 1000) % 30_000..][..len.min(10_000)];
                        let chunk = Chunk {
                            start: Some(start),
                            len: declare_len.then_some(piece.len() as u64),
                            total: None,
                        };
                        let got = r.append_upload(TENANT, up.id, chunk, body(piece, 777)).await;
                        match state {
                            ModelState::Gone => assert!(matches!(got, Err(RegistryError::NotFound(_)))),
                            ModelState::Completed => assert!(matches!(got, Err(RegistryError::UploadCompleted))),
                            ModelState::Open if start != offset => assert!(
                                matches!(got, Err(RegistryError::OffsetMismatch { offset: o, start: s }) if o == offset && s == start)),
                            ModelState::Open if declared.is_some_and(|d| offset + piece.len() as u64 > d) => assert!(
                                matches!(got, Err(RegistryError::BeyondDeclaredSize { .. })), "{:?}", got),
                            ModelState::Open => {
                                model_bytes.extend_from_slice(piece);
                                prop_assert_eq!(got.unwrap().offset, model_bytes.len() as u64);
                            }
                        }
                    }
                    Op::Get => {
                        let got = r.upload(TENANT, up.id).await;
                        match state {
                            ModelState::Gone => prop_assert!(got.is_err()),
                            ModelState::Open | ModelState::Completed => {
                                let got = got.unwrap();
                                prop_assert_eq!(got.offset, model_bytes.len() as u64);
                                prop_assert_eq!(got.size, declared);
                                prop_assert_eq!(got.state == UploadState::Completed, state == ModelState::Completed);
                            }
                        }
                    }
                    Op::Complete { right_digest } => {
                        let actual = Sha256Digest::of(&model_bytes);
                        let expected = right_digest.map(|right| if right { actual } else { Sha256Digest::of(b"wrong") });
                        let path = format!("f{completions}");
                        let got = r.complete_upload(TENANT, up.id, complete(pkg.id, &path, expected.as_ref())).await;
                        match state {
                            ModelState::Gone => assert!(matches!(got, Err(RegistryError::NotFound(_)))),
                            ModelState::Completed => assert!(matches!(got, Err(RegistryError::UploadCompleted))),
                            ModelState::Open if declared.is_some_and(|d| (model_bytes.len() as u64) < d) => assert!(
                                matches!(got, Err(RegistryError::UploadIncomplete { .. }))),
                            ModelState::Open if right_digest == Some(false) => assert!(
                                matches!(got, Err(RegistryError::DigestMismatch { .. }))),
                            ModelState::Open => {
                                let file = got.unwrap();
                                prop_assert_eq!(file.sha256(), actual);
                                let (_, stream) = r.open_file(TENANT, file.id, None).await.unwrap();
                                prop_assert_eq!(collect(stream).await, model_bytes.clone());
                                state = ModelState::Completed;
                                completions += 1;
                            }
                        }
                    }
                    Op::Cancel => {
                        let got = r.cancel_upload(TENANT, up.id).await;
                        match state {
                            ModelState::Gone => assert!(matches!(got, Err(RegistryError::NotFound(_)))),
                            ModelState::Completed => assert!(matches!(got, Err(RegistryError::UploadCompleted))),
                            ModelState::Open => { got.unwrap(); state = ModelState::Gone; }
                        }
                    }
                }
            }
            Ok(())
        })?;
    }
}

/// The expiry sweep takes its whole backlog (more than one batch of 1,000) and goes past an
/// upload whose staged bytes cannot be deleted (a directory in the way, on the blob
/// directory); the rest of the staged bytes are gone.
#[tokio::test]
async fn the_expiry_sweep_finishes_its_backlog_past_a_failure() {
    let env = Env::with_config(RegistryConfig {
        upload_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let r = &env.registry;
    let mut ids = Vec::new();
    for i in 0..1005u32 {
        let up = r.create_upload(TENANT, None).await.unwrap();
        if i % 100 == 0 {
            r.append_upload(TENANT, up.id, Chunk::default(), body(b"staged", 3))
                .await
                .unwrap();
        }
        ids.push(up.id);
    }
    let stuck = ids[500];
    if env.blob_url.is_none() {
        let path = env.blobs_dir().join("uploads").join(stuck.to_string());
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("in-the-way"), b"x").unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(r.sweep_expired_uploads().await.unwrap(), 1005);
    let left = env.staged_files().await;
    if env.blob_url.is_none() {
        assert_eq!(left.len(), 1, "only the one in the way: {left:?}");
        assert!(left[0].contains(&stuck.to_string()));
    } else {
        assert!(left.is_empty(), "{left:?}");
    }
    let usage = r.usage(TENANT).await.unwrap().0;
    assert_eq!(
        (usage.open_uploads, usage.bytes),
        (0, 0),
        "expired uploads use nothing"
    );
}

/// Another tenant's request naming an upload under way is answered `404` at once: the tenant
/// check comes before the upload's lock, so it neither waits for the owner's append (which
/// would tell it the id exists) nor holds the owner up. Shown by order: the owner's append
/// holds the lock, its body never ending, while the stranger's requests finish.
#[tokio::test]
async fn a_stranger_neither_waits_for_nor_holds_up_an_upload_under_way() {
    let env = Env::new().await;
    let r = env.registry.clone();
    let up = r.create_upload(TENANT, None).await.unwrap();
    let (feed, fed) = futures::channel::mpsc::unbounded::<std::io::Result<bytes::Bytes>>();
    feed.unbounded_send(Ok(bytes::Bytes::from_static(b"first")))
        .unwrap();
    let owner = {
        let r = r.clone();
        tokio::spawn(async move {
            r.append_upload(TENANT, up.id, Chunk::default(), Box::pin(fed))
                .await
        })
    };
    // The owner's append is under way once its first bytes are staged.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!owner.is_finished());
    let stranger = async {
        let append = r
            .append_upload("beta", up.id, Chunk::default(), body(b"x", 1))
            .await;
        let cancel = r.cancel_upload("beta", up.id).await;
        (append, cancel)
    };
    // A hang detector only: without the fix the stranger waits for as long as the owner's
    // body stays open, which here is forever.
    let (append, cancel) = tokio::time::timeout(std::time::Duration::from_secs(30), stranger)
        .await
        .expect("the stranger waited for the owner's lock");
    assert!(
        matches!(append, Err(RegistryError::NotFound(_))),
        "{append:?}"
    );
    assert!(
        matches!(cancel, Err(RegistryError::NotFound(_))),
        "{cancel:?}"
    );
    assert!(
        !owner.is_finished(),
        "the owner's append is still under way"
    );
    drop(feed);
    let done = owner.await.unwrap().unwrap();
    assert_eq!(done.offset, 5);
}

fn quota(max_bytes: Option<u64>, max_open_uploads: Option<u64>) -> RegistryConfig {
    let quota = artifactstore_core::quota::Quota {
        max_bytes,
        max_open_uploads,
    };
    RegistryConfig {
        quotas: [(TENANT.to_string(), quota)].into_iter().collect(),
        ..RegistryConfig::default()
    }
}

/// A body that sends `first`, then waits until the sender says more (or is dropped); the
/// receiver hears once `first` has been taken from the body (and so, in the same poll, charged
/// to the quota by the registry's meter).
fn held_body(
    first: &[u8],
) -> (
    futures::channel::mpsc::UnboundedSender<std::io::Result<bytes::Bytes>>,
    artifactstore_core::storage::ByteStream,
    tokio::sync::oneshot::Receiver<()>,
) {
    use futures::StreamExt;
    let (feed, fed) = futures::channel::mpsc::unbounded();
    feed.unbounded_send(Ok(bytes::Bytes::copy_from_slice(first)))
        .unwrap();
    let (taken, heard) = tokio::sync::oneshot::channel();
    let mut taken = Some(taken);
    let body = fed.inspect(move |_| {
        if let Some(taken) = taken.take() {
            let _ = taken.send(());
        }
    });
    (feed, Box::pin(body), heard)
}

/// Two appends under way at once share the room the tenant's byte quota leaves, charged as
/// their bytes arrive: the second is refused `507` while the first holds its share (each got
/// all of it before, and the quota held only the accounting, not the disk).
#[tokio::test]
async fn parallel_appends_share_the_byte_quota_as_bytes_arrive() {
    let env = Env::with_config(quota(Some(1000), None)).await;
    let r = env.registry.clone();
    let (one, two) = (
        r.create_upload(TENANT, None).await.unwrap(),
        r.create_upload(TENANT, None).await.unwrap(),
    );
    let (feed, body_one, taken) = held_body(&[1; 600]);
    let first = {
        let r = r.clone();
        tokio::spawn(async move {
            r.append_upload(TENANT, one.id, Chunk::default(), body_one)
                .await
        })
    };
    // Its 600 bytes are charged by the time they have left the body.
    taken.await.unwrap();
    let second = r
        .append_upload(TENANT, two.id, Chunk::default(), body(&[2; 600], 3))
        .await;
    assert!(
        matches!(
            second,
            Err(RegistryError::QuotaExceeded {
                quota: "max_bytes",
                ..
            })
        ),
        "{second:?}"
    );
    drop(feed);
    assert_eq!(first.await.unwrap().unwrap().offset, 600);
    // Its share given back once recorded: what is left is the quota's.
    let rest = r
        .append_upload(TENANT, two.id, Chunk::default(), body(&[2; 400], 3))
        .await
        .unwrap();
    assert_eq!(rest.offset, 400);
}

/// `max_open_uploads` holds under a burst: it is checked in the transaction that creates the
/// upload, not only before it.
#[tokio::test]
async fn a_burst_of_new_uploads_stops_at_the_quota() {
    let env = Env::with_config(quota(None, Some(3))).await;
    let creations = (0..20).map(|_| {
        let r = env.registry.clone();
        tokio::spawn(async move { r.create_upload(TENANT, None).await })
    });
    let mut created = 0;
    for creation in creations {
        match creation.await.unwrap() {
            Ok(_) => created += 1,
            Err(RegistryError::QuotaExceeded {
                quota: "max_open_uploads",
                ..
            }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(created, 3);
    assert_eq!(env.registry.usage(TENANT).await.unwrap().0.open_uploads, 3);
}

/// An append refused after its bytes were staged (here: shorter than it declared) takes them
/// back at once: nothing of it stays staged until the upload ends.
#[tokio::test]
async fn a_refused_append_leaves_no_bytes_behind() {
    let env = Env::new().await;
    let r = &env.registry;
    let up = r.create_upload(TENANT, None).await.unwrap();
    r.append_upload(TENANT, up.id, at(0, 4), body(b"abcd", 2))
        .await
        .unwrap();
    let before = staged_bytes(&env).await;
    let refused = r
        .append_upload(
            TENANT,
            up.id,
            at(4, 9_000_000),
            body(&[7; 9_000_000 - 1], 5),
        )
        .await;
    assert!(
        matches!(refused, Err(RegistryError::LengthMismatch { .. })),
        "{refused:?}"
    );
    assert_eq!(
        staged_bytes(&env).await,
        before,
        "the refused bytes are gone"
    );
    let status = r.upload(TENANT, up.id).await.unwrap();
    assert_eq!(status.offset, 4);
}

/// The bytes an upload has staged: the blob directory's file sizes, or S3 objects' count
/// (each append is an object of its own).
async fn staged_bytes(env: &Env) -> u64 {
    match &env.blob_url {
        Some(_) => env.staged_files().await.len() as u64,
        None => env
            .staged_files()
            .await
            .iter()
            .map(|path| std::fs::metadata(path).map_or(0, |m| m.len()))
            .sum(),
    }
}

/// A complete refused for its path (or a closed package) is refused before the upload's
/// staged bytes become a blob: no blob is left for garbage collection, and the upload stays
/// open at its offset.
#[tokio::test]
async fn a_complete_to_a_taken_path_makes_no_blob() {
    let env = Env::new().await;
    let r = &env.registry;
    let pkg = env.package().await;
    r.add_file(
        TENANT,
        pkg.id,
        NewFile {
            path: "taken".into(),
            ..Default::default()
        },
        body(b"x", 1),
    )
    .await
    .unwrap();
    let blobs = env.blob_files().await;
    let up = r.create_upload(TENANT, None).await.unwrap();
    let data = bytes(300 * 1024, 8);
    r.append_upload(TENANT, up.id, Chunk::default(), body(&data, 4))
        .await
        .unwrap();
    let refused = r
        .complete_upload(TENANT, up.id, complete(pkg.id, "taken", None))
        .await;
    assert!(
        matches!(refused, Err(RegistryError::PathTaken(_))),
        "{refused:?}"
    );
    assert_eq!(
        env.blob_files().await,
        blobs,
        "no blob of the refused complete"
    );
    assert_eq!(
        r.upload(TENANT, up.id).await.unwrap().offset,
        data.len() as u64
    );
}
