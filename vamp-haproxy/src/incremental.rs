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

impl Pieces {
    /// The pieces in the order of their sections in the text.
    fn sections(&self) -> [&str; 4] {
        [
            &self.virtual_hosts,
            &self.virtual_host_backends,
            &self.frontends,
            &self.backends,
        ]
    }

    fn lengths(&self) -> [usize; 4] {
        self.sections().map(str::len)
    }
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
    /// The text [`IncrementalRenderer::text`] keeps assembled.
    assembled: String,
    /// Whether `assembled` holds the current gateways' text, but for those in `stale`.
    assembled_valid: bool,
    /// The gateways changed since the text was assembled, with their pieces' lengths in it.
    stale: BTreeMap<SortKey, [usize; 4]>,
    /// The length of each section's pieces together.
    section_len: [usize; 4],
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
            assembled: String::new(),
            assembled_valid: false,
            stale: BTreeMap::new(),
            section_len: [0; 4],
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
        let key = sort_key(g);
        let headings = self.headings();
        if self.keys.get(&g.name) == Some(&key) {
            // The same place in the text: only this gateway's pieces change there.
            if let Some(old) = self.pieces.remove(&key) {
                self.count(&old, false);
                if self.assembled_valid {
                    self.stale
                        .entry(key.clone())
                        .or_insert_with(|| old.lengths());
                }
            }
        } else {
            self.remove(&g.name);
            self.assembled_valid = false;
            self.keys.insert(g.name.clone(), key.clone());
        }
        self.count(&p, true);
        self.pieces.insert(key, p);
        if self.headings() != headings {
            self.assembled_valid = false;
        }
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
        self.assembled_valid = false;
        true
    }

    /// Which section headings the text has (virtual hosts, port mapping).
    fn headings(&self) -> (bool, bool) {
        (self.with_virtual_hosts > 0, self.with_frontends > 0)
    }

    fn count(&mut self, p: &Pieces, add: bool) {
        let lengths = p.lengths();
        let size: usize = lengths.iter().sum();
        let vh = usize::from(!p.virtual_hosts.is_empty());
        let fe = usize::from(!p.frontends.is_empty());
        if add {
            self.len += size;
            self.with_virtual_hosts += vh;
            self.with_frontends += fe;
            for (total, l) in self.section_len.iter_mut().zip(lengths) {
                *total += l;
            }
        } else {
            self.len -= size;
            self.with_virtual_hosts -= vh;
            self.with_frontends -= fe;
            for (total, l) in self.section_len.iter_mut().zip(lengths) {
                *total -= l;
            }
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

    /// The configuration, kept assembled between calls: what [`IncrementalRenderer::render`]
    /// gives, without assembling it again. When only gateways already held changed since the
    /// last call (weights, routes, conditions: anything but their name, port or whether they
    /// have virtual hosts or frontends), their pieces are written over their old ones in place:
    /// a change of the same length costs the gateway's own text, another one also moves the
    /// text after it. Anything else assembles the whole text again.
    ///
    /// ```
    /// # use vamp_core::dsl::{read_str, AnyArtifact};
    /// # use vamp_core::model::ArtifactKind;
    /// use vamp_haproxy::incremental::IncrementalRenderer;
    /// use vamp_haproxy::{render, RenderOptions};
    /// # let gateway = |yaml: &str| match read_str(yaml, Some(ArtifactKind::Gateway)).unwrap().remove(0) {
    /// #     AnyArtifact::Gateway(g) => g,
    /// #     _ => unreachable!(),
    /// # };
    ///
    /// let mut r = IncrementalRenderer::new(RenderOptions::default()).unwrap();
    /// r.upsert(&gateway("name: a\nport: 8080\nroutes: {x: {weight: 70%}, y: {weight: 30%}}")).unwrap();
    /// let _ = r.text();
    /// let a = gateway("name: a\nport: 8080\nroutes: {x: {weight: 60%}, y: {weight: 40%}}");
    /// r.upsert(&a).unwrap();
    /// assert_eq!(r.text(), render(&[a], &RenderOptions::default()).unwrap().render());
    /// ```
    pub fn text(&mut self) -> &str {
        // Every gateway written in place is still held (a removal assembles the text again).
        if self.stale.keys().any(|k| !self.pieces.contains_key(k)) {
            self.assembled_valid = false;
        }
        if !self.assembled_valid {
            let mut text = std::mem::take(&mut self.assembled);
            self.render_into(&mut text);
            self.assembled = text;
            self.assembled_valid = true;
            self.stale.clear();
            return &self.assembled;
        }
        if self.stale.is_empty() {
            return &self.assembled;
        }
        // Where each section starts: the text's head, the headings, the sections before it
        // (already written, so at their new lengths).
        let mut head = String::new();
        let _ = write_header(&mut head);
        let mut start = head.len();
        for section in 0..4 {
            head.clear();
            if !self.write_section_head(section, &mut head) {
                continue;
            }
            start += head.len();
            // Walk to each changed gateway, summing the lengths of the pieces before it.
            let mut at = start;
            let mut from = std::ops::Bound::Unbounded;
            for (key, old) in &self.stale {
                at += self
                    .pieces
                    .range((from, std::ops::Bound::Excluded(key)))
                    .map(|(_, p)| p.sections()[section].len())
                    .sum::<usize>();
                let new = self.pieces.get(key).map_or("", |p| p.sections()[section]);
                self.assembled.replace_range(at..at + old[section], new);
                at += new.len();
                from = std::ops::Bound::Excluded(key);
            }
            start += self.section_len[section];
        }
        self.stale.clear();
        debug_assert_eq!(start, self.assembled.len());
        &self.assembled
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
        // Writing to a String cannot fail.
        let _ = write_header(out);
        for section in 0..4 {
            if self.write_section_head(section, out) {
                for p in self.pieces.values() {
                    out.push_str(p.sections()[section]);
                }
            }
        }
    }

    /// Writes what comes before the pieces of `section` (see [`Pieces::sections`]): the
    /// virtual hosts' heading before theirs, the port mapping's before the frontends. Whether
    /// the section is in the text at all (the virtual hosts' two only when a gateway has one).
    fn write_section_head(&self, section: usize, out: &mut String) -> bool {
        let (virtual_hosts, frontends) = self.headings();
        if section == 0 && virtual_hosts {
            let _ = write_virtual_hosts_head(
                out,
                &self.opts.virtual_hosts_bind,
                &self.opts.log_formats,
            );
        }
        if section == 2 && frontends {
            let _ = write_port_mapping_head(out);
        }
        section >= 2 || virtual_hosts
    }
}
