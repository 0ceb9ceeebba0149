//! Renders Vamp gateways to HAProxy configuration.
//!
//! The generator is pure (sans-IO): artifact model in, configuration text out. It is being built
//! on top of `vamp-core`'s gateway model.
