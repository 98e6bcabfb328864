//! The one layer around every request: panic catching, tracing and metrics, as a plain tower
//! service with one future and nothing boxed. tower-http's `CatchPanic` and `Trace` did this
//! with a boxed response body, a body wrapper per layer and three clock reads per request:
//! ~0.8 of ~13 µs of server CPU per 4 KiB range read (BENCHMARKS.md, "Read path").

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;
use crate::metrics::{Routes, method_label};

#[derive(Clone)]
pub struct Observe<S> {
    state: AppState,
    routes: Arc<Routes>,
    inner: S,
}

impl<S> Observe<S> {
    pub fn new(state: AppState, routes: Routes, inner: S) -> Self {
        Self {
            state,
            routes: Arc::new(routes),
            inner,
        }
    }
}

impl<S> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (method, uri) = (request.method(), request.uri());
        let span = tracing::debug_span!("request", %method, %uri);
        let label = (method_label(method), self.routes.label(uri.path()));
        let inner = {
            let _entered = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))).ok()
        };
        Observed {
            inner,
            label: Some(label),
            started: Instant::now(),
            state: self.state.clone(),
            span,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response on its way; `inner` is `None` when calling the service panicked.
    pub struct Observed<F> {
        #[pin]
        inner: Option<F>,
        label: Option<(&'static str, Arc<str>)>,
        started: Instant,
        state: AppState,
        span: tracing::Span,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Observed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let polled =
            this.inner.as_mut().as_pin_mut().and_then(|inner| {
                std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))).ok()
            });
        let response = match polled {
            Some(Poll::Pending) => return Poll::Pending,
            Some(Poll::Ready(Ok(response))) => response,
            None => {
                // A future that panicked is never polled again.
                this.inner.set(None);
                ApiError::Internal("a handler panicked".into()).into_response()
            }
        };
        if let Some((method, route)) = this.label.take() {
            let took = this.started.elapsed();
            let status = response.status();
            if status.is_server_error() {
                tracing::error!(%method, %route, status = status.as_u16(), ?took, "request failed");
            } else {
                tracing::debug!(
                    status = status.as_u16(),
                    ?took,
                    "finished processing request"
                );
            }
            this.state
                .metrics
                .record_labelled(method, route, status.as_u16(), took);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::{Service, ServiceExt};

    async fn state(dir: &std::path::Path) -> AppState {
        let args = crate::ServeArgs {
            data_dir: Some(dir.to_path_buf()),
            tokens: Some("acme:tok".into()),
            ..Default::default()
        };
        AppState::open(args.resolve().unwrap()).await.unwrap()
    }

    fn routes() -> Routes {
        Routes::new(["/boom"])
    }

    /// A panic when the service is called and one while its future is polled both become a
    /// `500` problem, counted in the metrics under the route.
    #[tokio::test]
    async fn panics_are_answered_500_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path()).await;
        let in_call = tower::service_fn(
            |_: Request| -> std::future::Ready<Result<Response, Infallible>> { panic!("in call") },
        );
        let in_future = tower::service_fn(|_: Request| async {
            tokio::task::yield_now().await;
            if true {
                panic!("in the future");
            }
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let request = || Request::builder().uri("/boom").body(Body::empty()).unwrap();
        let mut first = Observe::new(state.clone(), routes(), in_call);
        let answer = first.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(answer.status(), 500);
        let mut second = Observe::new(state.clone(), routes(), in_future);
        let answer = second.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(answer.status(), 500);
        let content_type = answer.headers()["content-type"].to_str().unwrap();
        assert_eq!(content_type, "application/problem+json");
        let metrics = state.metrics.render();
        let series =
            "artifactstore_http_requests_total{method=\"GET\",route=\"/boom\",status=\"500\"} 2";
        assert!(metrics.contains(series), "{metrics}");
    }
}
