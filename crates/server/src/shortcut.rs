//! The one route answered ahead of the router: `GET`/`HEAD /files/{id}/download`, the read
//! that clients repeat most (ranges of a few KiB). Recognising it by its shape and calling
//! the download handler's own code directly skips axum's routing, the boxed route service
//! and the extractors, ~5 % of the server's CPU per 4 KiB range read (BENCHMARKS.md, "Read
//! path"). The layers around (panic catching, tracing, metrics) still see every request, and
//! the route stays in the router (and in the OpenAPI document) for everything else: an id
//! that needs percent-decoding, any other method.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use futures::future::{BoxFuture, Either};

use crate::AppState;
use crate::handlers::files;

#[derive(Clone)]
pub struct Shortcut<S> {
    state: AppState,
    router: S,
}

impl<S> Shortcut<S> {
    pub fn new(state: AppState, router: S) -> Self {
        Self { state, router }
    }
}

/// The `{id}` of a download path, if `path` is exactly one with an id that is plain text
/// (what the router would percent-decode goes to the router).
fn download_id(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/files/")?.strip_suffix("/download")?;
    let plain = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    plain.then_some(id)
}

impl<S> tower::Service<Request> for Shortcut<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.router.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let method = request.method();
        let shortcut = (method == Method::GET || method == Method::HEAD)
            && download_id(request.uri().path()).is_some();
        if !shortcut {
            return Either::Right(self.router.call(request));
        }
        let state = self.state.clone();
        let (parts, _) = request.into_parts();
        Either::Left(Box::pin(async move {
            let id = download_id(parts.uri.path()).unwrap_or_default();
            let answer = files::download_unrouted(&state, id, &parts.headers, &parts.method);
            Ok(answer.await)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::download_id;

    #[test]
    fn only_plain_download_paths_take_the_shortcut() {
        assert_eq!(
            download_id("/files/file_01ABC/download"),
            Some("file_01ABC")
        );
        assert_eq!(download_id("/files//download"), None);
        assert_eq!(download_id("/files/a%2Fb/download"), None);
        assert_eq!(download_id("/files/a/b/download"), None);
        assert_eq!(download_id("/files/a/download/"), None);
        assert_eq!(download_id("/files/a"), None);
        assert_eq!(download_id("/packages/a/download"), None);
    }
}
