//! The gateway's connection to one cluster's API server: `kube` reads the credential and TLS
//! settings (kubeconfig context or in-cluster service account) and provides the layers that
//! add them; requests go through a hyper-util client so that bodies stream both ways.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt as _;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt as _};

use crate::config::KubeCluster;

/// Errors from bodies and services on either side.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body, to the client or to the API server.
pub type Body = BoxBody<Bytes, BoxError>;

/// The answer of the API server (its head; the body streams).
pub type ResponseFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Incoming>, BoxError>> + Send + 'static>>;

/// One cluster's API server, with the gateway's credential added to every request.
#[derive(Clone)]
pub struct Upstream {
    service: BoxCloneSyncService<Request<Body>, Response<Incoming>, BoxError>,
    /// Where the API server is, for logs (never a credential).
    pub url: String,
}

impl Upstream {
    /// Reads the cluster's kubeconfig context (or the in-cluster service account).
    pub async fn load(cluster: &KubeCluster) -> Result<Self, String> {
        let key = format!("kube.clusters ({})", cluster.name);
        let config = match &cluster.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("{key}.kubeconfig: {}: {e}", path.display()))?;
                let options = kube::config::KubeConfigOptions {
                    context: cluster.context.clone(),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| format!("{key}.kubeconfig: {}: {e}", path.display()))?
            }
            None => kube::Config::incluster().map_err(|e| format!("{key}.in_cluster: {e}"))?,
        };
        Self::from_config(&config).map_err(|e| format!("{key}: {e}"))
    }

    fn from_config(config: &kube::Config) -> Result<Self, kube::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = config.rustls_https_connector_with_connector(http)?;
        let client: Client<_, Body> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(config.auth_layer()?)
            .map_err(BoxError::from)
            .service(client);
        Ok(Self {
            service: BoxCloneSyncService::new(service),
            url: config.cluster_url.to_string(),
        })
    }

    /// Sends one request (path and query only; the base URI and credential are added).
    pub fn send(&self, request: Request<Body>) -> ResponseFuture {
        // Boxed with its `Send` spelled out: rustc cannot prove it through the tower
        // layers' higher-ranked bounds when the future is awaited inside a hyper service.
        Box::pin(self.service.clone().oneshot(request))
    }
}
