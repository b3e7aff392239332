//! Start-up and shutdown: the bind address checked (no token, no network), the data directory
//! locked and opened, interrupted jobs queued again, then the routes served until asked to
//! stop, when running jobs checkpoint and stay queued for the next start.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::datasets::Preparer;
use crate::error::{Result, ServiceError};
use crate::evaluations::Evaluations;
use crate::events::Hub;
use crate::jobs::Runner;
use crate::lock::DataDirLock;
use crate::roots::DataRoots;
use crate::store::Store;
use crate::{Service, api};

/// How the service runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// `HOST:PORT`; port 0 picks a free one.
    pub addr: String,
    /// The database, run folders and prepared datasets.
    pub data_dir: PathBuf,
    /// Required of every API request when set; required to bind anything but loopback.
    pub token: Option<String>,
    /// Folders specs may read data from, besides the data directory.
    pub data_roots: Vec<PathBuf>,
    /// Training runs at once.
    pub training_slots: usize,
    /// Preparation jobs at once, beside training.
    pub preparation_slots: usize,
    /// Data pipeline workers per run; 0: every core.
    pub threads: usize,
    /// The largest request body, in bytes.
    pub body_limit: usize,
}

impl ServeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServeConfig {
            addr: "127.0.0.1:8470".into(),
            data_dir: data_dir.into(),
            token: None,
            data_roots: Vec::new(),
            training_slots: 1,
            preparation_slots: 1,
            threads: 0,
            body_limit: 16 << 20,
        }
    }
}

/// A service bound to its address, ready to [`Server::run`].
pub struct Server {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    service: Arc<Service>,
    body_limit: usize,
    _lock: DataDirLock,
}

/// Resolves `addr` and refuses a non-loopback address without a token.
pub async fn check_bind(addr: &str, token: Option<&str>) -> Result<SocketAddr> {
    let bind_error = |source| ServiceError::Bind {
        addr: addr.to_string(),
        source,
    };
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(bind_error)?
        .next()
        .ok_or_else(|| bind_error(std::io::Error::other("the address resolves to nothing")))?;
    if !resolved.ip().is_loopback() && token.is_none_or(str::is_empty) {
        return Err(ServiceError::InsecureBind {
            addr: addr.to_string(),
        });
    }
    Ok(resolved)
}

impl Server {
    pub async fn bind(config: ServeConfig) -> Result<Server> {
        let resolved = check_bind(&config.addr, config.token.as_deref()).await?;
        let dir_error = |e| ServiceError::io(&config.data_dir, e);
        std::fs::create_dir_all(&config.data_dir).map_err(dir_error)?;
        let data_dir = config.data_dir.canonicalize().map_err(dir_error)?;
        let lock = DataDirLock::acquire(&data_dir)?;
        let mut roots = vec![data_dir.clone()];
        for root in &config.data_roots {
            roots.push(root.canonicalize().map_err(|e| ServiceError::io(root, e))?);
        }
        let store = Arc::new(Store::open(&data_dir.join("paliforge.db"))?);
        let hub = Hub::default();
        let evaluations = Evaluations::new(store.clone(), hub.clone(), config.threads);
        let runner = Runner::new(
            store.clone(),
            hub.clone(),
            evaluations.clone(),
            config.training_slots,
            config.threads,
        );
        let preparer = Preparer::new(store.clone(), config.preparation_slots, config.threads);
        let service = Arc::new(Service {
            store,
            hub,
            runner,
            preparer,
            evaluations,
            roots: Arc::new(DataRoots::new(roots)),
            data_dir,
            token: config.token.filter(|t| !t.is_empty()),
        });
        let listener = tokio::net::TcpListener::bind(resolved)
            .await
            .map_err(|source| ServiceError::Bind {
                addr: config.addr.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServiceError::Bind {
            addr: config.addr.clone(),
            source,
        })?;
        service.runner.recover()?;
        service.preparer.recover()?;
        service.evaluations.recover()?;
        Ok(Server {
            listener,
            addr,
            service,
            body_limit: config.body_limit,
            _lock: lock,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Serves until `shutdown` completes, then stops running jobs with a checkpoint.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let router = api::router(self.service.clone(), self.body_limit);
        let addr = self.addr.to_string();
        let hub = self.service.hub.clone();
        axum::serve(self.listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                hub.close();
            })
            .await
            .map_err(|source| ServiceError::Bind { addr, source })?;
        tracing::info!("stopping: running jobs checkpoint and stay queued");
        self.service.runner.shutdown().await;
        Ok(())
    }
}
