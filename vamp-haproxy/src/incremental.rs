//! Incremental rendering: the text of every gateway kept, so a change of one gateway renders
//! that gateway alone and the configuration is assembled from the kept pieces.
//!
//! The output is byte for byte what [`crate::render`] gives for the same set of gateways
//! (tested as a property over random sequences of changes): the gateways in the same order
//! (fewer name segments first, then name, then port), the same sections.
//!
//! ```
//! use vamp_core::dsl::{read_str, AnyArtifact};
//! use vamp_core::model::ArtifactKind;
//! use vamp_haproxy::incremental::IncrementalRenderer;
//! use vamp_haproxy::{render, RenderOptions};
//!
//! let gateway = |yaml: &str| match read_str(yaml, Some(ArtifactKind::Gateway)).unwrap().remove(0) {
//!     AnyArtifact::Gateway(g) => g,
//!     _ => unreachable!(),
//! };
//! let (a, b) = (gateway("name: a\nport: 8080\nroutes: {x: {weight: 100%}}"), gateway("name: b\nport: 8081\nroutes: {y: {weight: 100%}}"));
//! let mut r = IncrementalRenderer::new(RenderOptions::default()).unwrap();
//! r.upsert(&a).unwrap();
//! r.upsert(&b).unwrap();
//! assert_eq!(r.render(), render(&[a.clone(), b], &RenderOptions::default()).unwrap().render());
//! r.remove("b");
//! assert_eq!(r.render(), render(&[a], &RenderOptions::default()).unwrap().render());
//! ```

use std::collections::{BTreeMap, HashMap};

use vamp_core::model::Gateway;

use crate::config::{
    write_backend, write_frontend, write_header, write_port_mapping_head, write_virtual_host,
    write_virtual_host_backend, write_virtual_hosts_head,
};
use crate::convert::{RenderOptions, convert_gateway};
use crate::error::RenderError;

/// Where a gateway sorts: name segments, name, port (as [`crate::render`] sorts).
type SortKey = (usize, String, i64);

/// One gateway's pieces of text.
#[derive(Clone, Debug, Default)]
struct Pieces {
    virtual_hosts: String,
    virtual_host_backends: String,
    frontends: String,
    backends: String,
}

/// Renders a changing set of gateways, each gateway's text kept between changes. Gateways are
/// identified by name.
#[derive(Clone, Debug)]
pub struct IncrementalRenderer {
    opts: RenderOptions,
    dir: String,
    pieces: BTreeMap<SortKey, Pieces>,
    keys: HashMap<String, SortKey>,
    /// Gateways with virtual hosts, and with frontends (each section's heading depends on them).
    with_virtual_hosts: usize,
    with_frontends: usize,
    len: usize,
}

fn sort_key(g: &Gateway) -> SortKey {
    (
        g.name.split('/').filter(|s| !s.is_empty()).count(),
        g.name.clone(),
        g.port.number,
    )
}

impl IncrementalRenderer {
    /// An empty renderer.
    ///
    /// # Errors
    /// [`RenderError`] for invalid options.
    pub fn new(opts: RenderOptions) -> Result<Self, RenderError> {
        opts.validate()?;
        Ok(Self {
            dir: opts.socket_dir.trim_end_matches('/').to_owned(),
            opts,
            pieces: BTreeMap::new(),
            keys: HashMap::new(),
            with_virtual_hosts: 0,
            with_frontends: 0,
            len: 0,
        })
    }

    /// Adds gateway `g`, or replaces the gateway of the same name. On error nothing changes.
    ///
    /// # Errors
    /// The gateway's [`RenderError`].
    pub fn upsert(&mut self, g: &Gateway) -> Result<(), RenderError> {
        let part = convert_gateway(g, &self.opts)?;
        let mut p = Pieces::default();
        // Writing to a String cannot fail.
        for v in &part.virtual_hosts {
            let _ = write_virtual_host(&mut p.virtual_hosts, v);
        }
        for b in &part.virtual_host_backends {
            let _ = write_virtual_host_backend(&mut p.virtual_host_backends, b);
        }
        for f in &part.frontends {
            let _ = write_frontend(&mut p.frontends, f, &self.dir, &self.opts.log_formats);
        }
        for b in &part.backends {
            let _ = write_backend(&mut p.backends, b, &self.dir);
        }
        self.remove(&g.name);
        self.count(&p, true);
        let key = sort_key(g);
        self.keys.insert(g.name.clone(), key.clone());
        self.pieces.insert(key, p);
        Ok(())
    }

    /// Removes the gateway named `name`; whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(key) = self.keys.remove(name) else {
            return false;
        };
        if let Some(p) = self.pieces.remove(&key) {
            self.count(&p, false);
        }
        true
    }

    fn count(&mut self, p: &Pieces, add: bool) {
        let size = p.virtual_hosts.len()
            + p.virtual_host_backends.len()
            + p.frontends.len()
            + p.backends.len();
        let vh = usize::from(!p.virtual_hosts.is_empty());
        let fe = usize::from(!p.frontends.is_empty());
        if add {
            self.len += size;
            self.with_virtual_hosts += vh;
            self.with_frontends += fe;
        } else {
            self.len -= size;
            self.with_virtual_hosts -= vh;
            self.with_frontends -= fe;
        }
    }

    /// How many gateways it holds.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether it holds no gateway.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The configuration: what [`crate::render`] of the gateways held would give, as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    /// Writes the configuration into `out` (cleared first), reusing its memory: a caller
    /// rendering again and again keeps one buffer and skips the allocation (tens of MiB at
    /// 10,000 gateways).
    pub fn render_into(&self, out: &mut String) {
        out.clear();
        out.reserve(self.len + 1024);
        let out = &mut *out;
        // Writing to a String cannot fail.
        let _ = write_header(out);
        if self.with_virtual_hosts > 0 {
            let _ = write_virtual_hosts_head(
                out,
                &self.opts.virtual_hosts_bind,
                &self.opts.log_formats,
            );
            for p in self.pieces.values() {
                out.push_str(&p.virtual_hosts);
            }
            for p in self.pieces.values() {
                out.push_str(&p.virtual_host_backends);
            }
        }
        if self.with_frontends > 0 {
            let _ = write_port_mapping_head(out);
        }
        for p in self.pieces.values() {
            out.push_str(&p.frontends);
        }
        for p in self.pieces.values() {
            out.push_str(&p.backends);
        }
    }
}
