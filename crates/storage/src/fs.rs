//! Content-addressed blobs in a local directory, and upload staging beside them.
//!
//! Layout under the root: `blobs/sha256/<first two hex digits>/<hex>` for blobs, `tmp/` for
//! blobs being written, `uploads/<upload id>` for staged upload bytes. All three are on one
//! filesystem, so a finished blob moves into place with an atomic rename (or link).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use artifactstore_core::storage::{BlobInfo, BlobStore, ByteStream, Staged, StoreError};
use artifactstore_core::{Sha256Digest, Staging, Timestamp, UploadId};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Read blocks of this size: large blocks serve files far faster than small ones here.
const READ_BLOCK: usize = 512 * 1024;
/// Ranges of at most this many bytes are read from a kept-open file on the runtime thread
/// when the page cache holds them (see [`OpenBlobs`]).
const CACHED_READ: usize = 64 * 1024;
/// Read-ahead memory that all downloads from one store share (see [`read_ahead`]).
const READ_BUDGET: usize = 32 * 1024 * 1024;
/// The block a download starts with, and reads when the budget has no room for a larger one.
const SMALL_READ_BLOCK: usize = 16 * 1024;
/// Bytes gathered before one `write` call.
const WRITE_BLOCK: usize = 128 * 1024;
/// Bytes written before their writeback is started (see [`WriteBehind`]). The final fsync
/// waits for about one window, and a chunked upload waits for it on every chunk (measured
/// here: 8 MiB ~4 ms, 2 MiB ~1 ms); smaller windows cost a little ingest throughput.
const WRITE_BEHIND_WINDOW: u64 = 4 * 1024 * 1024;
/// Chunks in flight between the receiving task and the hashing and writing threads.
const PIPELINE_DEPTH: usize = 16;

#[derive(Clone)]
pub struct FsBlobStore {
    inner: Arc<Dirs>,
    /// Open blob files for small range reads (see [`OpenBlobs`]).
    open: Arc<OpenBlobs>,
    /// Permits, one per KiB of [`READ_BUDGET`], held by read-ahead blocks until written.
    budget: Arc<Semaphore>,
}

/// Blob files kept open for small range reads, which then need no `open` and, when the page
/// cache holds the bytes, no trip to the blocking pool (`preadv2` with `RWF_NOWAIT` on the
/// runtime thread). Bounded. A blob's file never changes, except when a damaged one is
/// replaced: every store into the directory bumps `generation` and forgets the digest after
/// its rename, and a reader caches a file only if no store finished since it began opening
/// it, so a replaced blob is never read from the old descriptor.
#[derive(Default)]
struct OpenBlobs {
    files: std::sync::Mutex<OpenFiles>,
}

#[derive(Default)]
struct OpenFiles {
    by_digest: std::collections::HashMap<Sha256Digest, (Arc<File>, u64)>,
    generation: u64,
}

impl OpenBlobs {
    const CAPACITY: usize = 1024;

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenFiles> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, digest: &Sha256Digest) -> Option<(Arc<File>, u64)> {
        self.lock().by_digest.get(digest).cloned()
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps `file` unless a store finished after `seen` (the generation before opening).
    fn keep(&self, digest: Sha256Digest, file: Arc<File>, len: u64, seen: u64) {
        let mut files = self.lock();
        if files.generation != seen {
            return;
        }
        if files.by_digest.len() >= Self::CAPACITY {
            // Crude but bounded; hot blobs come straight back.
            files.by_digest.clear();
        }
        files.by_digest.insert(digest, (file, len));
    }

    /// After a store of `digest` renamed or linked its file into place.
    fn stored(&self, digest: &Sha256Digest) {
        let mut files = self.lock();
        files.generation += 1;
        files.by_digest.remove(digest);
    }
}

/// The bytes `range` of `file` if the page cache holds all of them, read on this thread
/// without blocking (`RWF_NOWAIT`); `None` means "ask the blocking pool".
#[cfg(target_os = "linux")]
fn read_cached(file: &File, range: &Range<u64>) -> Option<Bytes> {
    pread_fresh(file, range, libc::RWF_NOWAIT)
        .ok()
        .map(Bytes::from)
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &File, _range: &Range<u64>) -> Option<Bytes> {
    None
}

/// Reads `range` of `file` (`preadv2` with `flags`) into a new buffer that is not zeroed
/// first: the read fills it, and only what it filled is ever exposed. Zeroing cost a pass
/// over every byte a download sends. A read that stops short is an error (with
/// `RWF_NOWAIT`, also any byte the page cache lacks).
#[cfg(target_os = "linux")]
fn pread_fresh(file: &File, range: &Range<u64>, flags: libc::c_int) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let len = (range.end - range.start) as usize;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut done = 0;
    while done < len {
        let iov = libc::iovec {
            iov_base: buf.spare_capacity_mut()[done..].as_mut_ptr().cast(),
            iov_len: len - done,
        };
        // SAFETY: `iov` points into `buf`'s allocation, which outlives the call; the fd is
        // open.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                (range.start + done as u64) as libc::off_t,
                flags,
            )
        };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => done += n as usize,
        }
    }
    // SAFETY: the reads above initialised all `len` bytes.
    unsafe { buf.set_len(len) };
    Ok(buf)
}

#[cfg(not(target_os = "linux"))]
fn pread_fresh(file: &File, range: &Range<u64>, _flags: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, range.start)?;
    Ok(buf)
}

struct Dirs {
    blobs: PathBuf,
    tmp: PathBuf,
    uploads: PathBuf,
}

impl FsBlobStore {
    /// Opens (creating if needed) a blob directory at `root`, removing leftovers of writes
    /// that a crash interrupted.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let dirs = tokio::task::spawn_blocking(move || -> io::Result<Dirs> {
            let dirs = Dirs {
                blobs: root.join("blobs").join("sha256"),
                tmp: root.join("tmp"),
                uploads: root.join("uploads"),
            };
            for dir in [&dirs.blobs, &dirs.tmp, &dirs.uploads] {
                std::fs::create_dir_all(dir)?;
            }
            // Fan-out directories exist up front, so storing a blob never creates one and
            // only its own directory needs an fsync.
            for byte in 0..=255u8 {
                std::fs::create_dir_all(dirs.blobs.join(format!("{byte:02x}")))?;
            }
            for entry in std::fs::read_dir(&dirs.tmp)? {
                std::fs::remove_file(entry?.path())?;
            }
            sync_dir(&root)?;
            Ok(dirs)
        })
        .await
        .map_err(join_error)??;
        Ok(Self {
            inner: Arc::new(dirs),
            open: Arc::default(),
            budget: Arc::new(Semaphore::new(READ_BUDGET / 1024)),
        })
    }

    fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        let hex = digest.hex();
        self.inner.blobs.join(&hex[..2]).join(hex)
    }

    fn temp_path(&self) -> PathBuf {
        self.inner.tmp.join(ulid::Ulid::new().to_string())
    }

    fn staging_path(&self, upload: &UploadId) -> PathBuf {
        self.inner.uploads.join(upload.to_string())
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let meta = tokio::fs::metadata(&self.inner.tmp).await?;
        if meta.is_dir() {
            Ok(())
        } else {
            Err(StoreError::Corrupt("tmp is not a directory".into()))
        }
    }

    /// A temp file, written through the write-behind pipeline; removed when dropped
    /// unpublished.
    async fn stage(&self, body: ByteStream, max_len: u64) -> Result<Staged, StoreError> {
        let temp = TempFile::new(self.temp_path());
        let file = blocking({
            let path = temp.path.clone();
            move || OpenOptions::new().write(true).create_new(true).open(path)
        })
        .await?;
        write_stream(file, body, max_len).await?;
        Ok(Staged(Box::new(temp)))
    }

    /// Renamed to its name (kept as is if that blob is there: same digest, same bytes), the
    /// directory fsynced.
    async fn publish(&self, staged: Staged, blob: BlobInfo) -> Result<(), StoreError> {
        let temp = own_staged(staged)?;
        let target = self.blob_path(&blob.digest);
        blocking(move || place(&temp, &target, blob.size)).await?;
        self.open.stored(&blob.digest);
        Ok(())
    }

    async fn discard(&self, staged: Staged) {
        if let Ok(temp) = own_staged(staged) {
            // Its drop removes the file; on the blocking pool, as every file operation.
            let _ = blocking(move || {
                drop(temp);
                Ok(())
            })
            .await;
        }
    }

    /// Written, fsynced and linked under its name in one trip to the blocking pool (an
    /// unnamed file where `O_TMPFILE` works), and not at all when the blob is there: for
    /// small files the trips, not the bytes, are the cost.
    async fn store_small(&self, blob: BlobInfo, chunks: Vec<Bytes>) -> Result<(), StoreError> {
        let target = self.blob_path(&blob.digest);
        let temp_path = self.temp_path();
        blocking(move || {
            if present(&target, blob.size) {
                return sync_dir(parent(&target));
            }
            if let Some(linked) = store_unnamed(&target, blob.size, &chunks) {
                return linked;
            }
            let temp = TempFile::new(temp_path);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp.path)?;
            write_chunks(&mut file, &chunks)?;
            place(&temp, &target, blob.size)
        })
        .await?;
        self.open.stored(&blob.digest);
        Ok(())
    }

    async fn size(&self, digest: &Sha256Digest) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(
        &self,
        digest: &Sha256Digest,
        range: Range<u64>,
    ) -> Result<ByteStream, StoreError> {
        let wanted = range.end - range.start;
        if wanted <= CACHED_READ as u64
            && let Some((file, len)) = self.open.get(digest)
            && range.end <= len
            && let Some(bytes) = read_cached(&file, &range)
        {
            return Ok(futures::stream::once(async move { Ok(bytes) }).boxed());
        }
        let path = self.blob_path(digest);
        let digest = *digest;
        let seen = self.open.generation();
        /// A small range read at once (and its open file, to keep), or the open file to
        /// stream a larger one from.
        enum Opened {
            Read(Bytes, Arc<File>, u64),
            File(File),
        }
        // Open, check and (for a small range) read in one trip to the blocking pool: small
        // range reads are the hot path of random access. Larger ones are read ahead, within
        // the shared budget.
        let opened = blocking(move || {
            let file = File::open(&path)?;
            let len = file.metadata()?.len();
            if range.end > len {
                return Err(io::Error::other(format!("blob {digest:?} has {len} bytes")));
            }
            if wanted > CACHED_READ as u64 {
                return Ok(Opened::File(file));
            }
            let buf = pread_fresh(&file, &(range.start..range.end), 0)?;
            Ok(Opened::Read(Bytes::from(buf), Arc::new(file), len))
        })
        .await
        .map_err(|e| match e {
            StoreError::Io(e) if e.kind() == io::ErrorKind::NotFound => StoreError::NotFound,
            other => other,
        })?;
        Ok(match opened {
            Opened::Read(bytes, file, len) => {
                self.open.keep(digest, file, len, seen);
                futures::stream::once(async move { Ok(bytes) }).boxed()
            }
            Opened::File(file) => read_ahead(file, range, self.budget.clone()),
        })
    }

    /// One file per upload, `uploads/<id>`, truncated to `offset` first: the id and offset
    /// find the bytes, so the staging state stays empty. (One machine: the in-process upload
    /// lock keeps two appends of one upload apart.)
    async fn stage_append(
        &self,
        upload: &UploadId,
        _staging: &Staging,
        offset: u64,
        body: ByteStream,
        max_len: u64,
    ) -> Result<Staging, StoreError> {
        let path = self.staging_path(upload);
        let tmp = self.inner.tmp.clone();
        let file = blocking(move || open_staging(&path, &tmp, offset)).await?;
        write_stream(file, body, max_len).await?;
        Ok(Staging::default())
    }

    /// The upload's file cut back to `offset` (the registry's lock keeps other appends out).
    async fn stage_revert(
        &self,
        upload: &UploadId,
        _before: &Staging,
        _after: &Staging,
        offset: u64,
    ) -> Result<(), StoreError> {
        let path = self.staging_path(upload);
        Ok(
            blocking(move || match OpenOptions::new().write(true).open(&path) {
                Ok(file) if file.metadata()?.len() > offset => {
                    file.set_len(offset)?;
                    file.sync_all()
                }
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            })
            .await?,
        )
    }

    async fn stage_commit(
        &self,
        upload: &UploadId,
        _staging: &Staging,
        blob: BlobInfo,
    ) -> Result<(), StoreError> {
        let staged = self.staging_path(upload);
        let target = self.blob_path(&blob.digest);
        let replacement = self.temp_path();
        blocking(move || {
            if present(&target, blob.size) {
                return sync_dir(parent(&target));
            }
            let file = match OpenOptions::new().write(true).open(&staged) {
                Ok(file) => file,
                // A complete of an empty upload that never saw a PATCH.
                Err(e) if e.kind() == io::ErrorKind::NotFound && blob.size == 0 => {
                    let file = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&staged)?;
                    file.sync_all()?;
                    file
                }
                Err(e) => return Err(e),
            };
            let len = file.metadata()?.len();
            if len < blob.size {
                return Err(io::Error::other(format!(
                    "staged upload has {len} bytes, expected {}",
                    blob.size
                )));
            }
            if len > blob.size {
                // Bytes past the offset are what a failed append left; they are no one's.
                file.set_len(blob.size)?;
                file.sync_all()?;
            }
            // A link keeps the staged bytes in place until the file is recorded; the
            // next append to this upload, if any, first copies them (see open_staging).
            match std::fs::hard_link(&staged, &target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // A blob of the wrong size under this name is damaged: replace it (by a
                    // link in `tmp/`, which a crash leaves to be removed at the next start).
                    std::fs::hard_link(&staged, &replacement)?;
                    std::fs::rename(&replacement, &target)?;
                }
                Err(e) => return Err(e),
            }
            sync_dir(parent(&target))
        })
        .await?;
        self.open.stored(&blob.digest);
        Ok(())
    }

    async fn stage_discard(&self, upload: &UploadId) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.staging_path(upload)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Walks the fan-out directories from `after`'s, each read whole (its names sorted).
    async fn list_blobs(
        &self,
        after: Option<Sha256Digest>,
        limit: usize,
    ) -> Result<Vec<(Sha256Digest, Timestamp)>, StoreError> {
        let root = self.inner.blobs.clone();
        Ok(blocking(move || {
            let first = after.map_or(0, |d| d.as_bytes()[0] as usize);
            let mut found = Vec::new();
            for byte in first..=255 {
                let mut dir = Vec::new();
                for entry in std::fs::read_dir(root.join(format!("{byte:02x}")))? {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(digest) = name.to_str().and_then(Sha256Digest::from_hex) else {
                        continue;
                    };
                    if after.is_some_and(|a| digest <= a) {
                        continue;
                    }
                    dir.push((digest, modified(&entry.metadata()?)));
                }
                dir.sort_by_key(|(d, _)| *d);
                found.extend(dir);
                if found.len() >= limit {
                    found.truncate(limit);
                    break;
                }
            }
            Ok(found)
        })
        .await?)
    }

    /// In one trip to the blocking pool: every unlink, then one sync per directory touched.
    async fn delete_blobs(&self, digests: &[Sha256Digest]) -> Result<(), StoreError> {
        let paths: Vec<PathBuf> = digests.iter().map(|d| self.blob_path(d)).collect();
        let result = blocking(move || {
            let mut dirs = std::collections::BTreeSet::new();
            for path in &paths {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                dirs.insert(parent(path).to_path_buf());
            }
            dirs.iter().try_for_each(|dir| sync_dir(dir))
        })
        .await;
        // A kept-open descriptor would still read the deleted bytes.
        for digest in digests {
            self.open.stored(digest);
        }
        Ok(result?)
    }

    async fn list_staged(&self) -> Result<Vec<UploadId>, StoreError> {
        let dir = self.inner.uploads.clone();
        Ok(blocking(move || {
            let mut staged = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                if let Some(id) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
                    staged.push(id);
                }
            }
            Ok(staged)
        })
        .await?)
    }

    /// Nothing: the only leftovers of a crash here are temporary files (of writes and of
    /// repairs), removed when the store opens.
    async fn collect_orphans(&self, _grace: std::time::Duration) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// A file's modification time as a timestamp (the epoch if the system cannot tell).
fn modified(meta: &std::fs::Metadata) -> Timestamp {
    let ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp::from_millis(ms)
}

/// Opens the staging file of an upload for writing at `offset`.
fn open_staging(path: &Path, tmp: &Path, offset: u64) -> io::Result<File> {
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.len() < offset {
        return Err(io::Error::other(format!(
            "staged upload has {} bytes but its offset is {offset}",
            meta.len()
        )));
    }
    if meta.nlink() > 1 {
        // Linked into the blob store by a complete that then failed: writing in place would
        // change that blob. Continue on a private copy instead.
        let copy = tmp.join(ulid::Ulid::new().to_string());
        std::fs::copy(path, &copy)?;
        File::open(&copy)?.sync_all()?;
        std::fs::rename(&copy, path)?;
        sync_dir(parent(path))?;
        file = OpenOptions::new().read(true).write(true).open(path)?;
    }
    file.set_len(offset)?;
    file.seek(SeekFrom::Start(offset))?;
    if !existed {
        sync_dir(parent(path))?;
    }
    Ok(file)
}

/// Streams `body` into `file` at its current position and advances `hasher` over the same
/// bytes: one pass, with hashing and writing on two blocking threads so they overlap. Returns
/// once the bytes are durable. At most `max_len` bytes are taken.
async fn write_stream(file: File, mut body: ByteStream, max_len: u64) -> Result<(), StoreError> {
    // `None` says "that was all": a channel closed without it means the write was abandoned.
    let (to_writer, mut writer_rx) = mpsc::channel::<Option<Bytes>>(PIPELINE_DEPTH);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut out = WriteBehind::new(file)?;
        while let Some(message) = writer_rx.blocking_recv() {
            match message {
                Some(chunk) => out.write(&chunk)?,
                None => return out.finish(),
            }
        }
        Err(io::Error::other("write abandoned"))
    });

    let mut taken: u64 = 0;
    let received: Result<(), StoreError> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(StoreError::Body)?;
            taken += chunk.len() as u64;
            if taken > max_len {
                return Err(StoreError::TooLarge { limit: max_len });
            }
            if chunk.is_empty() {
                continue;
            }
            // A closed channel means the writer failed; its error is reported below.
            if to_writer.send(Some(chunk)).await.is_err() {
                break;
            }
        }
        Ok(())
    }
    .await;
    if received.is_ok() {
        let _ = to_writer.send(None).await;
    }
    drop(to_writer);
    // The body is done with: whoever hashes it alongside sees its end now, not after the
    // fsync.
    drop(body);
    let written = writer.await.map_err(join_error)?;
    received?;
    written?;
    Ok(())
}

/// The temp file behind a [`Staged`] of this store.
fn own_staged(staged: Staged) -> Result<TempFile, StoreError> {
    staged
        .0
        .downcast::<TempFile>()
        .map(|temp| *temp)
        .map_err(|_| StoreError::Corrupt("a staged blob of another store".into()))
}

/// Writes a file from its current position with write-behind: small chunks are gathered into
/// blocks, and each written window is handed to the kernel for writeback at once, so the fsync
/// at the end waits only for the last window instead of the whole file.
struct WriteBehind {
    file: File,
    pending: Vec<u8>,
    start: u64,
    written: u64,
    kicked: u64,
}

impl WriteBehind {
    fn new(mut file: File) -> io::Result<Self> {
        let start = file.stream_position()?;
        Ok(Self {
            file,
            pending: Vec::new(),
            start,
            written: 0,
            kicked: 0,
        })
    }

    fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if self.pending.is_empty() && chunk.len() >= WRITE_BLOCK {
            return self.write_through(chunk);
        }
        self.pending.extend_from_slice(chunk);
        if self.pending.len() >= WRITE_BLOCK {
            let block = std::mem::take(&mut self.pending);
            self.write_through(&block)?;
            self.pending = block;
            self.pending.clear();
        }
        Ok(())
    }

    fn write_through(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written - self.kicked >= WRITE_BEHIND_WINDOW {
            start_writeback(
                &self.file,
                self.start + self.kicked,
                self.written - self.kicked,
            );
            self.kicked = self.written;
        }
        Ok(())
    }

    /// Writes what is gathered and makes the whole file durable.
    fn finish(mut self) -> io::Result<()> {
        let rest = std::mem::take(&mut self.pending);
        self.file.write_all(&rest)?;
        self.file.sync_all()
    }
}

/// Asks the kernel to start writing a range back now, without waiting for it.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a file descriptor we own; it reads no memory of ours.
    // Failure only loses the head start: the final fsync still makes everything durable.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// A file in `tmp/` that is removed when dropped unless it was moved into place — also when
/// the request writing it is cancelled.
struct TempFile {
    path: PathBuf,
    armed: std::sync::atomic::AtomicBool,
}

impl TempFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            armed: true.into(),
        }
    }

    fn disarm(&self) {
        self.armed
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if *self.armed.get_mut() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn write_chunks(file: &mut File, chunks: &[Bytes]) -> io::Result<()> {
    for chunk in chunks {
        file.write_all(chunk)?;
    }
    file.sync_all()
}

/// Writes a blob as an unnamed file (`O_TMPFILE`) in its own directory, fsyncs it, links it
/// under its name and fsyncs the directory. Compared with a named temporary file this takes
/// no lock on a directory shared by all writers (concurrent small writes queued on `tmp/`'s
/// lock here), and a crash leaves nothing to clean up. `None` when the filesystem or
/// `/proc` does not offer it; the caller then takes the portable way.
#[cfg(target_os = "linux")]
fn store_unnamed(target: &Path, size: u64, chunks: &[Bytes]) -> Option<io::Result<()>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = parent(target);
    let mut file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(file) => file,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            return None;
        }
        Err(e) => return Some(Err(e)),
    };
    if let Err(e) = write_chunks(&mut file, chunks) {
        return Some(Err(e));
    }
    let from = format!("/proc/self/fd/{}\0", file.as_raw_fd());
    let mut to = target.as_os_str().as_bytes().to_vec();
    to.push(0);
    // SAFETY: both paths are NUL-terminated buffers that outlive the call.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr().cast(),
            libc::AT_FDCWD,
            to.as_ptr().cast(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked != 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Another writer stored the same bytes first.
            Some(libc::EEXIST) if present(target, size) => {}
            // A damaged blob is in the way: the portable way replaces it.
            Some(libc::EEXIST) => return None,
            // No /proc: the portable way still works.
            Some(libc::ENOENT) if !Path::new("/proc/self/fd").exists() => return None,
            _ => return Some(Err(e)),
        }
    }
    Some(sync_dir(dir))
}

#[cfg(not(target_os = "linux"))]
fn store_unnamed(_target: &Path, _size: u64, _chunks: &[Bytes]) -> Option<io::Result<()>> {
    None
}

/// Same digest, same bytes: a present blob of the right size is this one.
fn present(target: &Path, size: u64) -> bool {
    std::fs::metadata(target).is_ok_and(|m| m.len() == size)
}

/// Moves a written and fsynced temporary file to its blob name, unless the blob is already
/// there, and makes the name durable. The directory is fsynced in both cases: a blob that
/// another writer just renamed into place may not be durable yet.
fn place(temp: &TempFile, target: &Path, size: u64) -> io::Result<()> {
    if !present(target, size) {
        std::fs::rename(&temp.path, target)?;
        temp.disarm();
    }
    sync_dir(parent(target))
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// The bytes `range` of `file` as a stream of blocks, each read straight into the buffer that
/// is handed on (`pread`, one copy), in one trip to the blocking pool, so a slow client never
/// holds a thread. Blocks start at [`SMALL_READ_BLOCK`] and double, up to [`READ_BLOCK`],
/// while the connection takes each one as soon as it is offered;
/// a block larger than the smallest, and the next block read ahead while this one is sent,
/// need room in the store's shared budget (never waited for: without room the next block is
/// a small one, read when asked for — from the page cache on this thread when it holds it).
/// So a fast download gets large blocks read ahead, and a reader that stopped reading holds
/// one small block, whatever the number of such readers.
fn read_ahead(file: File, range: Range<u64>, budget: Arc<Semaphore>) -> ByteStream {
    let file = Arc::new(file);
    let end = range.end;
    let kib = |n: usize| n.div_ceil(1024) as u32;
    struct State {
        at: u64,
        pending: Option<futures::future::BoxFuture<'static, io::Result<Bytes>>>,
        size: usize,
        offered: Option<std::time::Instant>,
    }
    let start = State {
        at: range.start,
        pending: None,
        size: SMALL_READ_BLOCK,
        offered: None,
    };
    futures::stream::unfold(start, move |mut state| {
        let (file, budget) = (file.clone(), budget.clone());
        async move {
            if state.at >= end {
                return None;
            }
            // Asked for the next block within a few milliseconds of the last: keeping up.
            let keeping_up = state
                .offered
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(5));
            let small = state.at..end.min(state.at + SMALL_READ_BLOCK as u64);
            let block = match state.pending.take() {
                Some(pending) => pending.await,
                None => match read_cached(&file, &small) {
                    Some(bytes) => Ok(bytes),
                    None => read_block(&file, small, None).await,
                },
            };
            let block = match block {
                Ok(block) => block,
                Err(e) => {
                    state.at = end;
                    return Some((Err(e), state));
                }
            };
            state.at += block.len() as u64;
            state.size = if keeping_up {
                (state.size * 2).min(READ_BLOCK)
            } else {
                SMALL_READ_BLOCK
            };
            if state.at < end && state.size > SMALL_READ_BLOCK {
                let next = state.at..end.min(state.at + state.size as u64);
                let size = (next.end - next.start) as usize;
                if let Ok(permit) = budget.try_acquire_many_owned(kib(size)) {
                    state.pending = Some(read_block(&file, next, Some(permit)));
                }
            }
            state.offered = Some(std::time::Instant::now());
            Some((Ok(block), state))
        }
    })
    .boxed()
}

/// Starts reading `range` of `file` on the blocking pool at once (the returned future only
/// collects it); the block holds `permit`, if any, until its bytes are dropped.
fn read_block(
    file: &Arc<File>,
    range: Range<u64>,
    permit: Option<OwnedSemaphorePermit>,
) -> futures::future::BoxFuture<'static, io::Result<Bytes>> {
    let file = file.clone();
    let task = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
        let buf = pread_fresh(&file, &range, 0)?;
        Ok(match permit {
            Some(permit) => Bytes::from_owner(Budgeted {
                bytes: buf,
                _permit: permit,
            }),
            None => Bytes::from(buf),
        })
    });
    Box::pin(async move { task.await.map_err(join_error)? })
}

/// A block read ahead, and its share of the read budget, given back when the connection is
/// done with the bytes (hyper drops them once written).
struct Budgeted {
    bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Makes a directory's entries (a rename, a new file) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    Ok(tokio::task::spawn_blocking(f).await.map_err(join_error)??)
}

fn join_error(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(format!("blocking task failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use artifactstore_core::limits::SMALL_BLOB_BYTES;
    use artifactstore_core::storage::NoClaim;

    /// A blob written the way the registry writes one (`write_blob`), with no collector.
    async fn put(
        store: &FsBlobStore,
        body: ByteStream,
        expected: Option<Sha256Digest>,
        max_len: u64,
    ) -> Result<BlobInfo, StoreError> {
        artifactstore_core::blob_write::write_blob(store, body, expected, max_len, &NoClaim).await
    }

    fn body(data: &[u8]) -> ByteStream {
        let chunks: Vec<io::Result<Bytes>> = data
            .chunks(4096)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks).boxed()
    }

    async fn read_all(store: &FsBlobStore, info: &BlobInfo) -> Vec<u8> {
        let mut stream = store.read(&info.digest, 0..info.size).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    async fn read_range(store: &FsBlobStore, info: &BlobInfo, range: Range<u64>) -> Vec<u8> {
        let mut stream = store.read(&info.digest, range).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    /// Small ranges come from a kept-open file; once a damaged blob is replaced, none is read
    /// from the descriptor of the damaged file (also for a small blob, stored the other way).
    #[tokio::test]
    async fn a_repaired_blob_is_never_read_from_a_stale_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        for len in [300_000, 5_000] {
            let data = artifactstore_testkit::bytes(len, len as u64);
            let info = put(&store, body(&data), None, u64::MAX).await.unwrap();
            assert_eq!(read_range(&store, &info, 10..4106).await, data[10..4106]);
            assert_eq!(
                read_range(&store, &info, 10..4106).await,
                data[10..4106],
                "kept open"
            );
            // Damage it in place (the kept-open file is this inode): other bytes, short.
            let path = store.blob_path(&info.digest);
            let mut damaged = data.clone();
            damaged.truncate(len - 1);
            damaged[..4200].fill(0xAA);
            std::fs::write(&path, &damaged).unwrap();
            assert_eq!(read_range(&store, &info, 10..4106).await, damaged[10..4106]);
            // A store of the same bytes replaces the damaged file.
            put(&store, body(&data), None, u64::MAX).await.unwrap();
            assert_eq!(
                read_range(&store, &info, 10..4106).await,
                data[10..4106],
                "len {len}"
            );
            assert_eq!(read_all(&store, &info).await, data);
        }
    }

    /// Ranges that end inside, at and past block boundaries come back exactly, in blocks no
    /// larger than [`READ_BLOCK`]; a range past the end is refused.
    #[tokio::test]
    async fn ranges_across_read_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let block = READ_BLOCK as u64;
        let data = artifactstore_testkit::bytes(3 * READ_BLOCK + 17, 9);
        let info = put(&store, body(&data), None, u64::MAX).await.unwrap();
        let len = data.len() as u64;
        for range in [
            0..len,
            1..len,
            0..block,
            0..block + 1,
            block - 1..2 * block + 1,
            block..3 * block,
            len - 1..len,
            5..5,
            2 * block + 3..len,
        ] {
            let mut stream = store.read(&info.digest, range.clone()).await.unwrap();
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.unwrap();
                assert!(chunk.len() <= READ_BLOCK, "{range:?}");
                out.extend_from_slice(&chunk);
            }
            assert_eq!(
                out,
                data[range.start as usize..range.end as usize],
                "{range:?}"
            );
        }
        assert!(store.read(&info.digest, 0..len + 1).await.is_err());
    }

    /// Both ways of storing (a small body at once, a large one through the pipeline) store
    /// the bytes under their digest, leave nothing in `tmp/`, and replace a damaged blob.
    #[tokio::test]
    async fn small_and_large_bodies_store_and_repair() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        for len in [
            0,
            1,
            SMALL_BLOB_BYTES as usize,
            SMALL_BLOB_BYTES as usize + 1,
            3 << 20,
        ] {
            let data = artifactstore_testkit::bytes(len, len as u64);
            let info = put(&store, body(&data), None, u64::MAX).await.unwrap();
            assert_eq!(info.size, len as u64);
            assert_eq!(info.digest, Sha256Digest::of(&data));
            assert_eq!(read_all(&store, &info).await, data, "{len} bytes");
            // Stored again: same blob, nothing new.
            put(&store, body(&data), None, u64::MAX).await.unwrap();
            // A damaged copy (wrong size) is replaced by the next put of the content.
            std::fs::write(store.blob_path(&info.digest), b"damaged!!").unwrap();
            put(&store, body(&data), None, u64::MAX).await.unwrap();
            assert_eq!(read_all(&store, &info).await, data, "{len} bytes, repaired");
        }
        let leftovers = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
        assert_eq!(leftovers, 0);
    }

    #[tokio::test]
    async fn small_bodies_are_checked_like_large_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let data = b"four score".to_vec();
        let wrong = Sha256Digest::of(b"other");
        let err = put(&store, body(&data), Some(wrong), u64::MAX).await;
        assert!(matches!(err, Err(StoreError::DigestMismatch { .. })));
        let err = put(&store, body(&data), None, 3).await;
        assert!(matches!(err, Err(StoreError::TooLarge { limit: 3 })));
        assert_eq!(store.size(&Sha256Digest::of(&data)).await.unwrap(), None);
    }
}
