//! The programs' shared code: Vamp's REST API over the library ([`api`]) and the server that
//! composes it with the backends, the reconcile loop and a gateway agent ([`serve`]). The
//! `vamp` example's `serve` subcommand runs it; the tests start it in-process. [`cli`] is the
//! client side: vamp-cli's commands against a running server.

pub mod agent;
pub mod api;
pub mod auth;
pub mod cli;
pub mod health;
pub mod logs;
pub mod serve;
pub mod supervise;
pub mod tls;
