//! The sandbox's own errors (the vendor APIs' error answers live with each vendor, e.g.
//! `hubspot::error`).

/// Why the sandbox could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or reading a listener failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. "binding the HTTP listener".
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
