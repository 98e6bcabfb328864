//! Prometheus metrics: request counts and latencies by method, route template and status.
//! Every label is drawn from a bounded set: the standard methods (anything else is `other`),
//! route templates (`/packages/{id}`, never ids or tenant names; `unmatched` for the rest)
//! and the status codes the server answers with.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;

#[derive(Default)]
struct Series {
    count: u64,
    seconds: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), Series>>,
}

/// The method as a label: one of the standard methods, or `other`.
fn method_label(method: &Method) -> &'static str {
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
    pub fn record(&self, method: &Method, route: &str, status: u16, took: Duration) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let key = (method_label(method), route.to_string(), status);
        let series = map.entry(key).or_default();
        series.count += 1;
        series.seconds += took.as_secs_f64();
    }

    pub fn render(&self) -> String {
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
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

/// Middleware recording every request.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.record(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded_whatever_the_method() {
        let metrics = Metrics::default();
        for i in 0..500 {
            let junk = Method::from_bytes(format!("JUNK{i}").as_bytes()).unwrap();
            metrics.record(&junk, "unmatched", 405, Duration::ZERO);
        }
        metrics.record(&Method::GET, "/packages", 200, Duration::ZERO);
        let text = metrics.render();
        assert!(text.contains("method=\"other\",route=\"unmatched\",status=\"405\"} 500"));
        assert!(!text.contains("JUNK"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 4);
    }
}
