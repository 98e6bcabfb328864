//! Progress for transfers: a bar (bytes, files, rate, ETA) on a terminal, one plain line per
//! file otherwise. Always on stderr, so stdout stays for results.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    verb: &'static str,
    files_total: u64,
    files_done: AtomicU64,
    quiet: bool,
}

impl Progress {
    pub fn new(verb: &'static str, total_bytes: u64, files_total: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total_bytes);
            let style = ProgressStyle::with_template(
                "{spinner} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(format!("0/{files_total} files"));
            bar
        });
        Self {
            bar,
            verb,
            files_total,
            files_done: AtomicU64::new(0),
            quiet,
        }
    }

    pub fn bytes(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub fn file_done(&self, path: &str, size: u64, note: &str) {
        let done = self.files_done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.set_message(format!("{done}/{} files", self.files_total)),
            None if !self.quiet => {
                eprintln!(
                    "{} {path} ({size} bytes){note} [{done}/{}]",
                    self.verb, self.files_total
                )
            }
            None => {}
        }
    }

    /// A line that must not be lost under the bar (a retry, a skipped file); printed also
    /// when quiet, since it is a warning, not progress.
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
