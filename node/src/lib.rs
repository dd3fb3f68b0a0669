//! A verbund node: runs beside one institution's data, dials out to the coordinator, and
//! answers typed aggregate requests from local data under the site's own policy.

pub mod catalog;
pub mod config;
pub mod engine;
pub mod link;
pub mod proxy;

pub use catalog::Catalog;
pub use config::NodeConfig;
pub use engine::{Engine, Refusal};
pub use link::LinkOptions;

use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use verbund_policies::Policy;
use verbund_proto::v1 as pb;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("dataset '{dataset}': {message}")]
    Dataset { dataset: String, message: String },
    #[error("policy {path}: {source}")]
    Policy { path: String, source: verbund_policies::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub struct Node {
    site: String,
    engine: Engine,
}

impl Node {
    pub fn new(site: impl Into<String>, catalog: Catalog, policy: Policy) -> Self {
        Self { site: site.into(), engine: Engine::new(catalog, policy) }
    }

    /// Loads the policy file and opens every dataset of a configuration.
    pub async fn from_config(config: &NodeConfig) -> Result<Self> {
        let policy = match &config.policy {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("cannot read policy {shown}: {e}")))?;
                Policy::from_toml(&text).map_err(|source| Error::Policy { path: shown, source })?
            }
            None => Policy::default(),
        };
        let catalog = Catalog::open(&config.datasets).await?;
        Ok(Self::new(config.site.clone(), catalog, policy))
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn hello(&self) -> pb::Hello {
        pb::Hello {
            site: self.site.clone(),
            node_version: env!("CARGO_PKG_VERSION").to_string(),
            catalogue: Some(self.engine.catalogue().clone()),
            min_cell_size: self.engine.policy().min_cell_size,
        }
    }

    /// Keeps the link to the coordinator up until `shutdown` is cancelled.
    pub async fn run(self: Arc<Self>, options: LinkOptions, shutdown: CancellationToken) {
        link::run_link(self, options, shutdown).await
    }
}

/// Builds link options from a configuration.
pub fn link_options(config: &NodeConfig) -> Result<LinkOptions> {
    let mut options = LinkOptions::new(config.coordinator.clone());
    options.heartbeat = config.heartbeat();
    if let Some(proxy) = &config.proxy {
        let uri: http::Uri =
            proxy.parse().map_err(|e| Error::Config(format!("proxy '{proxy}' is not an address: {e}")))?;
        if uri.host().is_none() {
            return Err(Error::Config(format!("proxy '{proxy}' has no host")));
        }
        options.proxy = Some(uri);
    }
    Ok(options)
}
