//! The real `artifactstore serve` on an ephemeral loopback port, for the test suites that
//! drive the real binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_artifactstore");
pub const TOKEN: &str = "cli-test-token";

pub struct Server {
    pub port: u16,
    pub data: PathBuf,
    child: Option<Child>,
    /// Extra `serve` arguments.
    args: Vec<String>,
    /// `https` when serving TLS.
    scheme: &'static str,
}

impl Server {
    pub fn start(data: &Path) -> Self {
        Self::start_with(data, &[])
    }

    /// With extra `serve` arguments (`--tls-cert` among them makes it https).
    pub fn start_with(data: &Path, args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        // A test that names its stores (replicas sharing them, or blobs in the directory it
        // reaches into) keeps them.
        if !args.iter().any(|a| a == "--database-url")
            && let Some(url) = artifactstore_testkit::fresh_postgres_blocking()
        {
            args.extend(["--database-url".to_string(), url]);
        }
        if !args.iter().any(|a| a == "--blob-url")
            && let Some(url) = artifactstore_testkit::fresh_s3()
        {
            args.extend(["--blob-url".to_string(), url]);
        }
        let mut server = Server {
            port,
            data: data.to_path_buf(),
            child: None,
            args: args.clone(),
            scheme: if args.iter().any(|a| a == "--tls-cert") {
                "https"
            } else {
                "http"
            },
        };
        server.spawn();
        server
    }

    pub fn spawn(&mut self) {
        let child = Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.args)
            .env("ARTIFACTSTORE_TOKENS", format!("acme:{TOKEN}"))
            .env("ARTIFACTSTORE_DATA_DIR", &self.data)
            .env_remove("ARTIFACTSTORE_CONFIG")
            .env_remove("ARTIFACTSTORE_ANON_READ")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The server's resident memory and its peak so far, in KiB (from /proc).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Sends SIGTERM and waits for the process to end; returns how long that took.
    pub fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        started.elapsed()
    }

    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("ARTIFACTSTORE_URL", self.url())
            .env("ARTIFACTSTORE_TOKEN", TOKEN)
            // No user config file can leak in.
            .env("HOME", &self.data)
            .env_remove("XDG_CONFIG_HOME");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cli(args).output().unwrap()
    }

    /// `push <dir> --producer p --subject s` and `extra`.
    pub fn push_cmd(&self, dir: &Path, extra: &[&str]) -> Command {
        let dir = dir.to_str().unwrap();
        let mut cmd = self.cli(&["push", dir, "--producer", "p", "--subject", "s"]);
        cmd.args(extra);
        cmd
    }

    pub fn push(&self, dir: &Path, extra: &[&str]) -> Output {
        self.push_cmd(dir, extra).output().unwrap()
    }

    pub fn http(&self, path: &str) -> Vec<u8> {
        let out = Command::new("curl")
            .args([
                "-sSf",
                "-H",
                &format!("Authorization: Bearer {TOKEN}"),
                &format!("{}{path}", self.url()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// One header of a `HEAD` of `path`, with the token.
    pub fn http_head(&self, path: &str, name: &str) -> String {
        let out = Command::new("curl")
            .args([
                "-sSf",
                "-I",
                "-H",
                &format!("Authorization: Bearer {TOKEN}"),
            ])
            .arg(format!("{}{path}", self.url()))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).into_owned();
        head.lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
