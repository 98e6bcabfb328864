//! Prometheus metrics: request counts and latencies by method, route template and status.
//! Every label is drawn from a bounded set: the standard methods (anything else is `other`),
//! route templates (`/packages/{id}`, never ids or tenant names; `unmatched` for the rest)
//! and the status codes the server answers with.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Method;

/// The route templates, matched against each request's path to label it. This runs once per
/// request around the router rather than inside it (axum's `MatchedPath`): a layer inside the
/// router wraps every route separately, and cost ~1 µs of boxing and cloning per request and
/// layer (see `crate::app`).
pub struct Routes {
    matcher: matchit::Router<Arc<str>>,
    unmatched: Arc<str>,
}

impl Routes {
    /// `templates` in the router's syntax (`/packages/{id}`, `/docs/{*rest}`).
    pub fn new<'a>(templates: impl IntoIterator<Item = &'a str>) -> Self {
        let mut matcher = matchit::Router::new();
        for template in templates {
            // A template that overlaps one already there labels nothing the first misses.
            let _ = matcher.insert(template, Arc::<str>::from(template));
        }
        Self {
            matcher,
            unmatched: Arc::from("unmatched"),
        }
    }

    pub(crate) fn label(&self, path: &str) -> Arc<str> {
        self.matcher
            .at(path)
            .map_or_else(|_| self.unmatched.clone(), |m| m.value.clone())
    }
}

#[derive(Default)]
struct Series {
    count: u64,
    seconds: f64,
}

/// Method, route template, status.
type Labels = (&'static str, Arc<str>, u16);

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<Labels, Series>>,
    lifecycle: Mutex<Lifecycle>,
}

/// What this process's garbage collections and retention sweeps did.
#[derive(Default)]
struct Lifecycle {
    gc_runs: u64,
    /// Blobs, inline byte rows, staged uploads, leftovers.
    reclaimed: [u64; 4],
    /// Blobs the store held after the last complete collection.
    blobs: Option<u64>,
    retention_deleted: u64,
}

/// The method as a label: one of the standard methods, or `other`.
pub(crate) fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    STANDARD
        .iter()
        .find(|m| *m == method)
        .map_or("other", |m| m.as_str())
}

impl Metrics {
    pub fn record(&self, method: &Method, route: Arc<str>, status: u16, took: Duration) {
        self.record_labelled(method_label(method), route, status, took);
    }

    pub(crate) fn record_labelled(
        &self,
        method: &'static str,
        route: Arc<str>,
        status: u16,
        took: Duration,
    ) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let key = (method, route, status);
        let series = map.entry(key).or_default();
        series.count += 1;
        series.seconds += took.as_secs_f64();
    }

    pub fn record_gc(&self, report: &artifactstore_core::gc::GcReport) {
        let mut l = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        l.gc_runs += 1;
        let kinds = [report.blobs, report.inline, report.staged, report.orphans];
        for (total, n) in l.reclaimed.iter_mut().zip(kinds) {
            *total += n;
        }
        if !report.interrupted {
            l.blobs = Some(report.kept);
        }
    }

    pub fn record_retention(&self, deleted: u64) {
        let mut l = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        l.retention_deleted += deleted;
    }

    fn render_lifecycle(&self, out: &mut String) {
        let l = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP artifactstore_gc_runs_total Garbage collections this process ran.\n");
        out.push_str("# TYPE artifactstore_gc_runs_total counter\n");
        let _ = writeln!(out, "artifactstore_gc_runs_total {}", l.gc_runs);
        out.push_str("# HELP artifactstore_gc_reclaimed_total What garbage collection deleted.\n");
        out.push_str("# TYPE artifactstore_gc_reclaimed_total counter\n");
        for (kind, n) in ["blobs", "inline", "staged", "orphans"]
            .iter()
            .zip(l.reclaimed)
        {
            let _ = writeln!(
                out,
                "artifactstore_gc_reclaimed_total{{kind=\"{kind}\"}} {n}"
            );
        }
        if let Some(blobs) = l.blobs {
            out.push_str(
                "# HELP artifactstore_gc_blobs Blobs stored after the last complete collection.\n",
            );
            out.push_str("# TYPE artifactstore_gc_blobs gauge\n");
            let _ = writeln!(out, "artifactstore_gc_blobs {blobs}");
        }
        out.push_str("# HELP artifactstore_retention_deleted_total Packages retention deleted.\n");
        out.push_str("# TYPE artifactstore_retention_deleted_total counter\n");
        let _ = writeln!(
            out,
            "artifactstore_retention_deleted_total {}",
            l.retention_deleted
        );
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_lifecycle(&mut out);
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP artifactstore_http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE artifactstore_http_requests_total counter\n");
        for ((method, route, status), s) in map.iter() {
            let _ = writeln!(
                out,
                "artifactstore_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        out.push_str(
            "# HELP artifactstore_http_request_seconds_total Time to the response head, summed.\n",
        );
        out.push_str("# TYPE artifactstore_http_request_seconds_total counter\n");
        for ((method, route, status), s) in map.iter() {
            let _ = writeln!(
                out,
                "artifactstore_http_request_seconds_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {:.6}",
                s.seconds
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded_whatever_the_method() {
        let metrics = Metrics::default();
        for i in 0..500 {
            let junk = Method::from_bytes(format!("JUNK{i}").as_bytes()).unwrap();
            metrics.record(&junk, "unmatched".into(), 405, Duration::ZERO);
        }
        metrics.record(&Method::GET, "/packages".into(), 200, Duration::ZERO);
        let text = metrics.render();
        assert!(text.contains("method=\"other\",route=\"unmatched\",status=\"405\"} 500"));
        assert!(!text.contains("JUNK"));
        let http = |l: &&str| l.starts_with("artifactstore_http");
        assert_eq!(text.lines().filter(http).count(), 4);
    }

    #[test]
    fn paths_are_labelled_by_their_template() {
        let routes = Routes::new(["/packages", "/packages/{id}", "/docs/{*rest}"]);
        assert_eq!(&*routes.label("/packages/pkg_01"), "/packages/{id}");
        assert_eq!(&*routes.label("/packages"), "/packages");
        assert_eq!(&*routes.label("/docs/a/b.js"), "/docs/{*rest}");
        assert_eq!(&*routes.label("/packages/pkg_01/nothing"), "unmatched");
        assert_eq!(&*routes.label("/tenant-secret"), "unmatched");
    }
}
