//! Why a gateway cannot be rendered.

/// A gateway that cannot be turned into HAProxy configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The gateway has no port number yet (0).
    #[error("gateway '{gateway}' has no port assigned")]
    UnassignedPort {
        /// The gateway.
        gateway: String,
    },
    /// A route, condition or rewrite is a reference that was not resolved before rendering.
    #[error(
        "gateway '{gateway}': {what} '{name}' is a reference; resolve references before rendering"
    )]
    UnresolvedReference {
        /// The gateway.
        gateway: String,
        /// `route`, `condition` or `rewrite`.
        what: &'static str,
        /// The referenced name.
        name: String,
    },
    /// A balance algorithm HAProxy does not know.
    #[error(
        "gateway '{gateway}', route '{route}': unsupported balance '{balance}' (roundrobin, static-rr, leastconn, first, source, random, uri, url_param, hdr(name), rdp-cookie, hash)"
    )]
    InvalidBalance {
        /// The gateway.
        gateway: String,
        /// The route.
        route: String,
        /// The balance.
        balance: String,
    },
    /// Weights that do not total 0% or 100%.
    #[error("gateway '{gateway}': route weights total {total}%, not 0% or 100%")]
    InvalidWeights {
        /// The gateway.
        gateway: String,
        /// The total.
        total: u32,
    },
    /// A string that cannot be written into the configuration safely.
    #[error("unsafe {what} {value:?}: {reason}")]
    Unsafe {
        /// What it is (`host`, `virtual host`, `rewrite path`, ...).
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A condition with too many distinct tests to minimise.
    #[error("condition {condition:?} has {tests} distinct tests; at most {max} are supported")]
    ConditionTooComplex {
        /// The condition.
        condition: String,
        /// Its number of distinct tests.
        tests: usize,
        /// The limit.
        max: usize,
    },
    /// A condition too long to render, or whose minimised form would be too large.
    #[error("condition {condition:?} is too large: {reason}")]
    ConditionTooLarge {
        /// The condition (shortened).
        condition: String,
        /// Why.
        reason: String,
    },
    /// An error inside a gateway's route.
    #[error("gateway '{gateway}', route '{route}': {source}")]
    Route {
        /// The gateway.
        gateway: String,
        /// The route.
        route: String,
        /// What is wrong.
        #[source]
        source: Box<RenderError>,
    },
    /// An error in a gateway's own settings.
    #[error("gateway '{gateway}': {source}")]
    Gateway {
        /// The gateway.
        gateway: String,
        /// What is wrong.
        #[source]
        source: Box<RenderError>,
    },
    /// An invalid render option.
    #[error("invalid render option {option}: {reason}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// Why.
        reason: String,
    },
}

/// Why the gateway agent could not do something (feature `agent`).
#[cfg(feature = "agent")]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// HAProxy could not be run or did not come up.
    #[error("HAProxy: {message}")]
    Start {
        /// What happened.
        message: String,
    },
    /// A reload failed or was not confirmed.
    #[error("HAProxy reload: {message}")]
    Reload {
        /// What happened.
        message: String,
    },
    /// A command on HAProxy's master CLI or runtime API failed.
    #[error("HAProxy CLI {socket:?}, '{command}': {message}")]
    Cli {
        /// The socket.
        socket: std::path::PathBuf,
        /// The command.
        command: String,
        /// HAProxy's answer or the I/O error.
        message: String,
    },
    /// A file, directory or socket could not be set up.
    #[error("{path:?}: {message}")]
    Io {
        /// The path or address.
        path: std::path::PathBuf,
        /// The I/O error.
        message: String,
    },
}
