//! The real `artifactstore` binary as a client of the real `artifactstore serve` on an
//! ephemeral loopback port: push, pull, manifest, resume across a server restart, and the
//! exit code and one-line message of each kind of failure.

use artifactstore_testkit::bytes;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Exit code and the one-line message.
fn failed(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    lines[0].to_string()
}

fn tree(root: &Path) {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("README.md", b"# hello\n".to_vec()),
        ("empty", Vec::new()),
        ("bin/app", bytes(200_000, 1)),
        ("bin/big/blob.bin", bytes(3 * 1024 * 1024 + 17, 2)),
        (
            "docs/ünïcödé/ファイル.txt",
            "unicode names".as_bytes().to_vec(),
        ),
        ("a/b/c/d/e/deep.json", b"{}".to_vec()),
    ];
    for (path, data) in files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, data).unwrap();
    }
}

fn same_tree(a: &Path, b: &Path) {
    let mut count = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(a.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                stack.push(rel);
            } else {
                assert_eq!(
                    std::fs::read(a.join(&rel)).unwrap(),
                    std::fs::read(b.join(&rel)).unwrap(),
                    "{}",
                    rel.display()
                );
                count += 1;
            }
        }
    }
    assert!(count > 0);
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn push_pull_and_manifest_formats() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let src = dir.path().join("src");
    tree(&src);
    let pushed = json(&ok(&server.run(&[
        "push",
        src.to_str().unwrap(),
        "--producer",
        "ci/test",
        "--subject",
        "app@1",
        "--meta",
        "git.sha=abc",
        "--chunk-threshold",
        "1048576",
        "--chunk-size",
        "524288",
        "--jobs",
        "3",
        "--json",
    ])));
    let id = pushed["package_id"].as_str().unwrap().to_string();
    assert_eq!(pushed["state"], "finalized");
    assert_eq!(pushed["file_count"], 6);
    let digest = pushed["manifest_digest"].as_str().unwrap().to_string();

    let out = dir.path().join("out");
    ok(&server.run(&["pull", &id, out.to_str().unwrap()]));
    same_tree(&src, &out);
    // Pulling again finds everything in place.
    let again = server
        .cli(&["pull", &id, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("already present"));
    // A partial download is resumed with a Range request and verified as a whole.
    let big = out.join("bin/big/blob.bin");
    let original = std::fs::read(&big).unwrap();
    std::fs::remove_file(&big).unwrap();
    let partial = out.join("bin/big/blob.bin.artifactstore-part");
    std::fs::write(&partial, &original[..1_000_000]).unwrap();
    ok(&server.run(&["pull", &id, out.to_str().unwrap()]));
    assert_eq!(std::fs::read(&big).unwrap(), original);
    assert!(!partial.exists());
    let metrics = String::from_utf8(server.http("/metrics")).unwrap();
    assert!(
        metrics.contains("route=\"/files/{id}/download\",status=\"206\"} 1"),
        "{metrics}"
    );

    // manifest: CBOR bytes as served, JSON as served, and a table.
    let cbor = server.run(&["manifest", &id, "--format", "cbor"]);
    let served = server.http(&format!("/packages/{id}/manifest"));
    assert_eq!(ok_bytes(&cbor), served);
    assert_eq!(
        format!(
            "sha256:{}",
            artifactstore_core::Sha256Digest::of(&served).hex()
        ),
        digest
    );
    let file = dir.path().join("m.cbor");
    ok(&server.run(&[
        "manifest",
        &id,
        "--format",
        "cbor",
        "-o",
        file.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read(&file).unwrap(), served);
    let text = ok(&server.run(&["manifest", &id, "--format", "json"]));
    assert_eq!(
        text.as_bytes(),
        server.http(&format!("/packages/{id}/manifest.json"))
    );
    let table = ok(&server.run(&["manifest", &id]));
    for path in [
        "README.md",
        "bin/big/blob.bin",
        "docs/ünïcödé/ファイル.txt",
        "empty",
    ] {
        assert!(table.contains(path), "{path} in\n{table}");
    }
    assert!(table.contains("sha256:"));

    // ls, show, events.
    let listed = ok(&server.run(&["ls", "--meta", "git.sha=abc", "--json"]));
    assert_eq!(json(listed.lines().next().unwrap())["id"], id.as_str());
    assert!(
        ok(&server.run(&["ls", "--producer", "nobody"]))
            .lines()
            .count()
            <= 1
    );
    assert_eq!(
        json(&ok(&server.run(&["show", &id])))["manifest_digest"],
        digest.as_str()
    );
    let events = ok(&server.run(&["events", "--since", "0"]));
    let kinds: Vec<String> = events
        .lines()
        .map(|l| json(l)["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("package.created"));
    assert_eq!(kinds.last().map(String::as_str), Some("package.finalized"));
    assert_eq!(kinds.len(), 8);
}

fn ok_bytes(out: &Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.clone()
}

/// What the server acknowledged is there after it is killed (SIGKILL, no shutdown) right
/// after the acknowledgement: small files committed in groups with their bytes in the
/// metadata store, larger ones in the blob directory, and the finalized manifest.
#[test]
fn acknowledged_files_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    let src = dir.path().join("src");
    for i in 0..300u64 {
        let len = if i % 50 == 0 { 100_000 } else { 4096 };
        let path = src.join(format!("d{}/f{i}.bin", i % 7));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes(len, 700 + i)).unwrap();
    }
    let pushed = json(&ok(&server.push(&src, &["--jobs", "8", "--json"])));
    server.kill();
    server.spawn();
    let id = pushed["package_id"].as_str().unwrap();
    let out = dir.path().join("out");
    ok(&server.run(&["pull", id, out.to_str().unwrap()]));
    same_tree(&src, &out);
}

#[test]
fn push_resumes_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Watches the staged bytes in the blob directory: blobs stay local whatever the backend.
    let local = format!("file://{}", data.join("blobs").display());
    let mut server = Server::start_with(&data, &["--blob-url", &local]);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = bytes(96 * 1024 * 1024, 5);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let push = server
        .push_cmd(
            &src,
            &[
                "--chunk-threshold",
                "1",
                "--chunk-size",
                "262144",
                "--retries",
                "40",
                "--json",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server once part of the file is staged, then bring it back.
    let staging = data.join("blobs").join("uploads");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let staged: u64 = std::fs::read_dir(&staging)
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if staged >= 8 * 1024 * 1024 {
            break;
        }
        assert!(Instant::now() < deadline, "upload never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    std::thread::sleep(Duration::from_millis(700));
    server.spawn();
    let out = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let pushed = json(&ok(&out));
    assert!(
        stderr.contains("resuming"),
        "the push went through a resume: {stderr}"
    );
    let id = pushed["package_id"].as_str().unwrap();
    let manifest =
        json(&String::from_utf8(server.http(&format!("/packages/{id}/manifest.json"))).unwrap());
    assert_eq!(
        manifest["files"][0]["digests"]["sha256"],
        artifactstore_core::Sha256Digest::of(&big).hex()
    );
    assert_eq!(manifest["files"][0]["size"], big.len());
}

#[test]
fn failures_have_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Damages a blob on disk below: blobs stay local whatever the backend.
    let local = format!("file://{}", data.join("blobs").display());
    let server = Server::start_with(&data, &["--blob-url", &local]);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("file.bin"), bytes(100_000, 8)).unwrap();

    // Auth: 3.
    let line = failed(
        &server
            .cli(&["ls"])
            .env("ARTIFACTSTORE_TOKEN", "wrong")
            .output()
            .unwrap(),
        3,
    );
    assert!(line.contains("Unauthorized"), "{line}");
    // Not found: 4.
    let line = failed(&server.run(&["show", "pkg_01ARZ3NDEKTSV4RRFFQ69G5FAV"]), 4);
    assert!(line.contains("not found"), "{line}");
    failed(
        &server.run(&[
            "pull",
            "pkg_01ARZ3NDEKTSV4RRFFQ69G5FAV",
            dir.path().join("x").to_str().unwrap(),
        ]),
        4,
    );
    // Conflict: 5 (no manifest before finalize).
    let open = json(&ok(&server.push(&src, &["--no-finalize", "--json"])));
    assert_eq!(open["state"], "open");
    let line = failed(
        &server.run(&["manifest", open["package_id"].as_str().unwrap()]),
        5,
    );
    assert!(line.contains("not finalized"), "{line}");
    // Usage: 2.
    failed(&server.push(&dir.path().join("missing"), &[]), 2);
    #[cfg(unix)]
    {
        let linked = dir.path().join("linked");
        std::fs::create_dir_all(&linked).unwrap();
        std::fs::write(linked.join("real"), b"r").unwrap();
        std::os::unix::fs::symlink(linked.join("real"), linked.join("link")).unwrap();
        let line = failed(&server.push(&linked, &[]), 2);
        assert!(line.contains("symbolic link"), "{line}");
        let skipped = server.push(&linked, &["--symlinks", "skip", "--json"]);
        assert_eq!(json(&ok(&skipped))["file_count"], 1);
    }
    // Network: 7.
    let line = failed(
        &server
            .cli(&["ls"])
            .env("ARTIFACTSTORE_URL", "http://127.0.0.1:9")
            .output()
            .unwrap(),
        7,
    );
    assert!(line.contains("cannot reach"), "{line}");

    // Integrity: 6 — a blob damaged on the server's disk is caught, and nothing corrupt is
    // left under the file's name.
    let pushed = json(&ok(&server.push(&src, &["--json"])));
    let id = pushed["package_id"].as_str().unwrap();
    let digest = artifactstore_core::Sha256Digest::of(&bytes(100_000, 8)).hex();
    let blob = data
        .join("blobs")
        .join("blobs")
        .join("sha256")
        .join(&digest[..2])
        .join(&digest);
    let mut damaged = std::fs::read(&blob).unwrap();
    damaged[500] ^= 0xff;
    std::fs::write(&blob, damaged).unwrap();
    let out_dir = dir.path().join("pulled");
    let line = failed(&server.run(&["pull", id, out_dir.to_str().unwrap()]), 6);
    assert!(line.contains("file.bin"), "{line}");
    assert!(
        !out_dir.join("file.bin").exists(),
        "no corrupt file under its final name"
    );
    assert!(
        std::fs::read_dir(&out_dir).unwrap().next().is_none(),
        "no partial file left behind"
    );
}

/// Traps planted in the target directory: a part file that is a link to a file outside, a
/// subdirectory that is a link to a directory outside, a final name that is a link. Each is
/// refused with a clear message and nothing outside is written; a wrong `--digest` is an
/// integrity failure before any byte is fetched.
#[cfg(unix)]
#[test]
fn pull_never_writes_through_planted_links() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("top.bin"), bytes(70_000, 3)).unwrap();
    std::fs::write(src.join("bin/app"), bytes(90_000, 4)).unwrap();
    let pushed = json(&ok(&server.push(&src, &["--json"])));
    let id = pushed["package_id"].as_str().unwrap();
    let digest = pushed["manifest_digest"].as_str().unwrap();

    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let pull = |out: &Path, extra: &[&str]| {
        let mut args = vec!["pull", id, out.to_str().unwrap()];
        args.extend_from_slice(extra);
        server.run(&args)
    };

    let out = dir.path().join("out1");
    std::fs::create_dir_all(&out).unwrap();
    symlink(&victim, out.join("top.bin.artifactstore-part")).unwrap();
    let line = failed(&pull(&out, &["--jobs", "1"]), 1);
    assert!(line.contains("symbolic link"), "{line}");

    let out = dir.path().join("out2");
    std::fs::create_dir_all(&out).unwrap();
    symlink(&outside, out.join("bin")).unwrap();
    let line = failed(&pull(&out, &[]), 1);
    assert!(line.contains("symbolic link"), "{line}");

    let out = dir.path().join("out3");
    std::fs::create_dir_all(&out).unwrap();
    symlink(&victim, out.join("top.bin")).unwrap();
    let line = failed(&pull(&out, &[]), 1);
    assert!(line.contains("symbolic link"), "{line}");

    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());

    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = dir.path().join("out4");
    let line = failed(&pull(&out, &["--digest", &wrong]), 6);
    assert!(line.contains(&wrong), "{line}");
    assert!(
        !out.exists(),
        "nothing fetched for a package with another digest"
    );
    ok(&pull(&out, &["--digest", digest]));
    same_tree(&src, &out);
}

#[test]
fn rm_hold_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"a").unwrap();
    let push = |server: &Server| {
        let pushed = json(&ok(&server.push(&src, &["--json"])));
        pushed["package_id"].as_str().unwrap().to_string()
    };
    let (first, second) = (push(&server), push(&server));

    let held = json(&ok(&server.run(&["hold", &first, "--json"])));
    assert_eq!(held["held"], true);
    assert_eq!(
        ok(&server.run(&["hold", &first])).trim(),
        format!("held {first}")
    );
    let refused = failed(&server.run(&["rm", &first]), 5);
    assert!(refused.contains("held"), "{refused}");
    assert_eq!(
        ok(&server.run(&["release", &first])).trim(),
        format!("released {first}")
    );
    let deleted = json(&ok(&server.run(&["rm", &first, &second, "--json"])));
    assert_eq!(deleted["deleted"], serde_json::json!([first, second]));
    failed(&server.run(&["show", &first]), 4);
    failed(&server.run(&["rm", &first]), 4);
    failed(&server.run(&["hold", "pkg/../x"]), 2);

    let usage = json(&ok(&server.run(&["usage", "--json"])));
    assert_eq!(
        (usage["bytes"].as_u64(), usage["packages"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(usage["limits"]["max_bytes"], serde_json::Value::Null);
    let table = ok(&server.run(&["usage"]));
    assert!(table.contains("packages      0"), "{table}");
}

/// `tag`, `tags`, `untag`, and `REPO:TAG` wherever `pull`, `show` and `manifest` take a
/// package id; a moved tag reads the new package.
#[test]
fn tags_name_packages_for_pull_show_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"first").unwrap();
    std::fs::write(src.join("sub/b.bin"), bytes(70_000, 3)).unwrap();
    let push = |server: &Server| {
        let pushed = json(&ok(&server.push(&src, &["--json"])));
        pushed["package_id"].as_str().unwrap().to_string()
    };
    let first = push(&server);
    std::fs::write(src.join("a.txt"), b"second").unwrap();
    let second = push(&server);

    assert_eq!(
        ok(&server.run(&["tag", &first, "team/app:latest"])).trim(),
        format!("team/app:latest -> {first}")
    );
    let shown = json(&ok(&server.run(&["show", "team/app:latest"])));
    assert_eq!(shown["id"], first.as_str());
    let out = dir.path().join("out1");
    ok(&server.run(&["pull", "team/app:latest", out.to_str().unwrap()]));
    assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"first");

    // Moved by naming the package through another tag.
    ok(&server.run(&["tag", &second, "team/app:v2"]));
    let moved = json(&ok(&server.run(&[
        "tag",
        "team/app:v2",
        "team/app:latest",
        "--json",
    ])));
    assert_eq!(moved["package_id"], second.as_str());
    let table = ok(&server.run(&["manifest", "team/app:latest"]));
    assert!(table.contains(&format!("package   {second}")), "{table}");
    let out = dir.path().join("out2");
    ok(&server.run(&["pull", "team/app:latest", out.to_str().unwrap()]));
    assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"second");
    same_tree(&src, &out);

    let listed = ok(&server.run(&["tags"]));
    let names: Vec<&str> = listed
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(names, ["team/app:latest", "team/app:v2"]);
    let lines = ok(&server.run(&["tags", "team/app", "--json"]));
    assert_eq!(
        json(lines.lines().next().unwrap())["package_id"],
        second.as_str()
    );

    assert_eq!(
        ok(&server.run(&["untag", "team/app:v2"])).trim(),
        "untagged team/app:v2"
    );
    failed(&server.run(&["show", "team/app:v2"]), 4);
    failed(&server.run(&["untag", "team/app:v2"]), 4);
    // Names the server would refuse never leave the client.
    for bad in ["../packages:x", "Team/app:x", "app", "app:x/y"] {
        failed(&server.run(&["untag", bad]), 2);
    }
    failed(&server.run(&["show", "pkg/../x"]), 2);
}

/// The blobs in a blob directory./// The blobs in a blob directory.
fn blob_count(blobs: &Path) -> usize {
    let mut n = 0;
    for fan in std::fs::read_dir(blobs.join("blobs/sha256")).unwrap() {
        n += std::fs::read_dir(fan.unwrap().path()).unwrap().count();
    }
    n
}

/// A metric's value on the server's `/metrics`, if present.
fn metric(server: &Server, name: &str) -> Option<u64> {
    let text = String::from_utf8(server.http("/metrics")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Garbage collection killed (SIGKILL) in the middle of deleting a package's blobs, twice,
/// restarted each time: in the end exactly the kept package's blobs are left, and it pulls
/// byte-identical. On the stores the environment names (PostgreSQL + S3 under `make test`);
/// on a blob directory the kills come the moment a collection is seen deleting, on S3 at
/// moments when one is running.
#[test]
fn garbage_collection_killed_mid_run_finishes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let local = artifactstore_testkit::fresh_s3().is_none();
    let blobs = dir.path().join("blobs");
    let blob_url = format!("file://{}", blobs.display());
    let mut args = vec!["--gc-interval-secs", "1", "--gc-grace-secs", "1"];
    if local {
        args.extend(["--blob-url", &blob_url]);
    }
    let mut server = Server::start_with(&dir.path().join("data"), &args);
    let (gone, kept) = (dir.path().join("gone"), dir.path().join("kept"));
    for (root, count, seed) in [(&gone, 300, 0), (&kept, 10, 1000)] {
        std::fs::create_dir_all(root).unwrap();
        for i in 0..count {
            std::fs::write(root.join(format!("f{i}")), bytes(70_000, seed + i)).unwrap();
        }
    }
    let push = |server: &Server, root: &Path| {
        let pushed = json(&ok(&server.push(root, &["--json", "--jobs", "4"])));
        pushed["package_id"].as_str().unwrap().to_string()
    };
    let gone_id = push(&server, &gone);
    let kept_id = push(&server, &kept);
    ok(&server.run(&["rm", &gone_id]));
    let mut seen = Vec::new();
    for round in 0..2u64 {
        if local {
            let last = seen.last().copied().unwrap_or(310);
            let deadline = Instant::now() + Duration::from_secs(30);
            while blob_count(&blobs) >= last && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        } else {
            // A collection starts each second once the lease is free (the first right away,
            // the next once the dead process's lease lapsed, 3 s).
            std::thread::sleep(Duration::from_millis(1200 + round * 3000));
        }
        server.kill();
        if local {
            seen.push(blob_count(&blobs));
        }
        server.spawn();
    }
    // A complete collection of the last process reports exactly the kept blobs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&server, "artifactstore_gc_blobs") != Some(10) {
        assert!(
            Instant::now() < deadline,
            "gc blobs: {:?} ({seen:?})",
            metric(&server, "artifactstore_gc_blobs")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    if local {
        assert_eq!(blob_count(&blobs), 10, "{seen:?}");
        assert!(
            std::fs::read_dir(blobs.join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }
    let out = dir.path().join("out");
    ok(&server.run(&["pull", &kept_id, out.to_str().unwrap()]));
    same_tree(&kept, &out);
    eprintln!("blobs left at each kill: {seen:?}");
}

/// `serve --help` shows where each setting comes from, never the secret a variable holds.
#[test]
fn serve_help_prints_no_secret_from_the_environment() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--help"])
        .env(
            "ARTIFACTSTORE_DATABASE_URL",
            "postgres://as:s3cret-pw@db/x?password=s3cret-pw",
        )
        .env("ARTIFACTSTORE_TOKENS", "acme:s3cret-token")
        .output()
        .unwrap();
    let help = ok(&out);
    assert!(help.contains("ARTIFACTSTORE_DATABASE_URL"), "{help}");
    assert!(!help.contains("s3cret"), "{help}");
}
