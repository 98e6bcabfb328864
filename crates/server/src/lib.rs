//! artifactstore's HTTP API v1: configuration, authentication, the router and its thin
//! handlers, problem documents, OpenAPI and metrics. Everything else is the registry's.

pub mod auth;
pub mod config;
pub mod edge;
pub mod error;
pub mod handlers;
pub mod http;
pub mod metrics;
pub mod multipart;
pub mod observe;
pub mod oci;
pub mod openapi;
pub mod shortcut;
pub mod throttle;

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use artifactstore_core::gc::Collector;
use artifactstore_core::lease;
use artifactstore_core::retention::Retention;
use artifactstore_core::storage::MetadataStore;
use artifactstore_core::{Registry, RegistryConfig};
use artifactstore_storage::OpenOptions;
use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

pub use config::{ServeArgs, Settings};
use error::ApiError;
use handlers::{events, files, lifecycle, packages, service, tags, uploads};

/// How often expired upload sessions are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub registry: Registry,
    /// Garbage collection and retention: services beside the registry, on the same stores.
    pub collector: Collector,
    pub retention: Retention,
    pub settings: Settings,
    pub auth: auth::Auth,
    pub metrics: metrics::Metrics,
    meta: Arc<dyn MetadataStore>,
    /// Turns true when shutdown begins, so long-polls answer at once instead of holding it up.
    stopping: watch::Sender<bool>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("opening the stores failed: {0}")]
    Store(#[from] artifactstore_storage::OpenError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

impl AppState {
    /// Opens the stores the settings name.
    pub async fn open(settings: Settings) -> Result<Self, ServeError> {
        let options = OpenOptions {
            gc_grace: settings.gc_grace,
            query_budget: settings.query_timeout,
            ..OpenOptions::default()
        };
        let stores =
            artifactstore_storage::open(&settings.database_url, &settings.blob_url, &options)
                .await?;
        let config = RegistryConfig {
            max_file_bytes: settings.max_file_bytes,
            upload_ttl: settings.upload_ttl,
            retention_classes: settings.retention_classes.clone(),
            max_waiting: settings.max_pollers,
            max_waiting_per_scope: settings.max_pollers_per_tenant,
            max_reads_per_tenant: settings.max_listings_per_tenant,
            max_files_per_package: settings.max_files_per_package,
            max_manifest_bytes: settings.max_manifest_bytes,
            inline_max_bytes: settings.inline_max_bytes,
            retention: settings.retention.clone(),
            quotas: settings.quotas.clone(),
        };
        let meta = stores.meta.clone();
        let collector = Collector::new(stores.clone());
        let retention = Retention::new(meta.clone(), settings.retention.clone());
        let registry = Registry::new(stores, config);
        let auth = settings.auth.clone();
        let stopping = watch::Sender::new(false);
        let metrics = Default::default();
        Ok(Self(Arc::new(Inner {
            registry,
            collector,
            retention,
            settings,
            auth,
            metrics,
            meta,
            stopping,
        })))
    }

    /// Resolves once the server has begun shutting down.
    pub async fn stopping(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|s| *s).await;
    }
}

/// Where the offline API docs and the OpenAPI document are served.
const DOCS: &str = "/docs";
const OPENAPI_JSON: &str = "/openapi.json";

/// The whole HTTP surface: the router, downloads answered ahead of it (`shortcut`), and
/// around both, once per request, panic catching, tracing and metrics (`observe`). Around,
/// not inside: `Router::layer` wraps every route on its own, and its boxing and cloning per
/// request and layer cost 3.5 of 16.5 µs of server CPU per 4 KiB range read (measured with
/// wrk; BENCHMARKS.md, "Read path").
pub fn app(state: AppState) -> impl edge::App {
    let (router, routes) = router(state.clone());
    let router = shortcut::Shortcut::new(state.clone(), router);
    observe::Observe::new(state, routes, router)
}

/// The routes, and their templates as metric labels. The OpenAPI document is built from the
/// same `routes!` calls, so it lists exactly the routes served.
pub fn router(state: AppState) -> (Router, metrics::Routes) {
    let (router, api) = api_router().split_for_parts();
    // The templates SwaggerUi serves its pages under.
    let docs = [
        DOCS.to_string(),
        format!("{DOCS}/"),
        format!("{DOCS}/{{*rest}}"),
    ];
    let templates = api.paths.paths.keys().chain(&docs).map(String::as_str);
    let routes = metrics::Routes::new(templates.chain([OPENAPI_JSON]).chain(oci::ROUTES));
    let doc = openapi::document(api, &state.settings);
    let router = router
        .merge(oci::router())
        .merge(SwaggerUi::new(DOCS).external_url_unchecked(OPENAPI_JSON, doc))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    (router, routes)
}

/// The documented routes with their OpenAPI description.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(packages::create_package, packages::list_packages))
        .routes(routes!(packages::get_package, lifecycle::delete_package))
        .routes(routes!(lifecycle::hold, lifecycle::release))
        .routes(routes!(lifecycle::retention))
        .routes(routes!(lifecycle::usage))
        .routes(routes!(packages::add_file, packages::list_files))
        .routes(routes!(packages::finalize))
        .routes(routes!(packages::manifest))
        .routes(routes!(packages::manifest_json))
        .routes(routes!(files::get_file))
        .routes(routes!(files::download))
        .routes(routes!(uploads::create_upload))
        .routes(routes!(
            uploads::append,
            uploads::get_upload,
            uploads::cancel
        ))
        .routes(routes!(uploads::complete))
        .routes(routes!(tags::list_tags))
        .routes(routes!(tags::set_tag, tags::get_tag, tags::delete_tag))
        .routes(routes!(events::events))
        .routes(routes!(service::healthz))
        .routes(routes!(service::readyz))
        .routes(routes!(service::metrics))
}

// The router is never nested, so the request's URI is the one the client sent.
async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_string())
}

async fn method_not_allowed(method: Method, uri: Uri, _req: Request) -> Response {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
    .into_response()
}

/// A server listening on its address until told to stop.
pub struct Running {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, closes the stores.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| ServeError::Io(std::io::Error::other(e)))?
    }
}

/// Binds and serves in the background (tests, embedding).
pub async fn start(settings: Settings) -> Result<Running, ServeError> {
    let addr = settings.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let addr = listener.local_addr()?;
    let state = AppState::open(settings).await?;
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let wait = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        run(listener, state, wait).await
    });
    Ok(Running { addr, stop, task })
}

/// Serves until `shutdown` resolves, then drains in-flight requests (for at most the
/// shutdown grace) and closes the stores.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = match &state.settings.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let sweeper = tokio::spawn(sweep(state.clone()));
    let retention = tokio::spawn(retention(state.clone()));
    let collector = tokio::spawn(collect_garbage(state.clone()));
    let app = app(state.clone());
    let (stop, stopped) = watch::channel(false);
    let signal_state = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal_state.stopping.send_replace(true);
        stop.send_replace(true);
    });
    let workers = edge::Workers::start(state.settings.pin_threads)?;
    let limits = state.settings.edge.clone();
    let served = edge::serve(listener, app, tls, limits, &workers, stopped).await;
    sweeper.abort();
    retention.abort();
    collector.abort();
    state.meta.close().await;
    drop(workers);
    Ok(served?)
}

/// A TLS acceptor for the PEM certificate chain and key (HTTP/2 and HTTP/1.1 by ALPN).
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_err = |path: &std::path::Path, e: &dyn std::fmt::Display| {
        ServeError::Tls(format!("{}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_err(cert, &e))?;
    if chain.is_empty() {
        return Err(tls_err(cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(cert, &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| tls_err(key, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn sweep(state: AppState) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        every.tick().await;
        match state.registry.sweep_expired_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired upload sessions removed"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired uploads failed"),
        }
    }
}

/// Runs `duty` every `interval` on the replica that holds the lease `name` (taken or renewed
/// at each tick; it lapses three intervals after its holder stopped renewing it).
async fn under_lease<F: Future<Output = ()>>(
    state: &AppState,
    name: &str,
    interval: Duration,
    mut duty: impl FnMut() -> F,
) {
    let holder = artifactstore_core::ids::instance_id();
    let mut every = tokio::time::interval(interval);
    loop {
        every.tick().await;
        match lease::take(&*state.meta, name, holder, interval * 3).await {
            Ok(Some(_)) => duty().await,
            Ok(None) => {}
            Err(e) => tracing::warn!(lease = name, error = %e, "could not take a lease"),
        }
    }
}

/// Applies the retention rules every `retention_interval`, on one replica at a time.
async fn retention(state: AppState) {
    if state.settings.retention.is_empty() {
        return;
    }
    let interval = state.settings.retention_interval;
    under_lease(&state, "retention", interval, || async {
        match state.retention.sweep().await {
            Ok(n) => {
                state.metrics.record_retention(n);
                if n > 0 {
                    tracing::info!(deleted = n, "packages deleted by retention rules");
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    })
    .await
}

/// The share of its time a collection works: the rest is left to traffic.
const GC_DUTY: f64 = 0.25;

/// Collects garbage every `gc_interval`, on one replica at a time (the `gc` lease, which the
/// collection also renews as it goes).
async fn collect_garbage(state: AppState) {
    let interval = state.settings.gc_interval;
    under_lease(&state, "gc", interval, || async {
        let started = std::time::Instant::now();
        let options = artifactstore_core::gc::GcOptions {
            grace: state.settings.gc_grace,
            holder: artifactstore_core::ids::instance_id(),
            lease_ttl: interval * 3,
            duty: GC_DUTY,
        };
        match state.collector.collect(options).await {
            Ok(r) => {
                state.metrics.record_gc(&r);
                if r.blobs + r.inline + r.staged + r.orphans > 0 {
                    tracing::info!(
                        scanned = r.scanned,
                        blobs = r.blobs,
                        inline = r.inline,
                        staged = r.staged,
                        orphans = r.orphans,
                        seconds = started.elapsed().as_secs_f64(),
                        "garbage collected"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    })
    .await
}

/// `artifactstore serve`: resolve the configuration, listen, serve until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let settings = args.resolve()?;
    let addr = settings.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr()?;
    let state = AppState::open(settings).await?;
    let limits = &state.settings.edge;
    if let Some(files) = edge::raise_fd_limit()
        && (limits.max_connections as u64).saturating_add(256) > files
    {
        tracing::warn!(
            max_connections = limits.max_connections,
            open_files = files,
            "the open-file limit is below the connection cap: raise it (ulimit -n) or lower \
             ARTIFACTSTORE_MAX_CONNECTIONS"
        );
    }
    tracing::info!(
        addr = %bound,
        scheme = if state.settings.tls.is_some() { "https" } else { "http" },
        database = %config::redact_url(&state.settings.database_url),
        blobs = %config::redact_url(&state.settings.blob_url),
        "artifactstore listening"
    );
    tracing::info!("anonymous reads: {}", state.auth.describe_anonymous());
    run(listener, state, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Tunes glibc's allocator for a server that streams large bodies; call before the runtime
/// starts. By default glibc maps buffers of 128 KiB and more one by one and hands freed memory
/// back to the kernel eagerly, so every read buffer of a large upload was a fresh mapping whose
/// pages faulted in during the socket read (8–9 % of the server's samples in a profile; the
/// thresholds below took about a fifth off its CPU per ingested GiB).
/// Below 4 MiB, buffers now come from the heap, and up to 32 MiB of freed heap is kept for
/// reuse. `GLIBC_TUNABLES` naming `malloc` settings takes precedence.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc"));
        if !tuned {
            // SAFETY: mallopt only changes the allocator's thresholds; it is called before any
            // other thread exists.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
            }
        }
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
