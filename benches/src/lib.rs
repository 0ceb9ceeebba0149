//! Criterion benchmarks for the vamp workspace (see `benches/`).
