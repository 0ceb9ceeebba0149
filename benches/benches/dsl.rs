//! DSL benchmarks: loading YAML, reading and validating blueprints, writing canonical YAML.
//!
//! `cargo bench -p vamp-benches --bench dsl`

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vamp_core::dsl::{load_documents, read_str, to_yaml};
use vamp_core::model::ArtifactKind;

/// A blueprint with `clusters` clusters of two inline breeds each, cluster gateways with a
/// weighted and a conditional route, and one external gateway per cluster.
fn blueprint(clusters: usize) -> String {
    let mut s = String::from("name: bench\nkind: blueprints\ngateways:\n");
    for c in 0..clusters {
        let _ = writeln!(s, "  {}: c{c}/web", 10_000 + c);
    }
    s.push_str("clusters:\n");
    for c in 0..clusters {
        let _ = write!(
            s,
            "  c{c}:\n    gateways:\n      web:\n        sticky: route\n        routes:\n          s{c}a:1.0.0: {{weight: 90%}}\n          s{c}b:1.1.0: {{weight: 10%, condition: \"user-agent = Chrome and has cookie beta\", condition_strength: 50%}}\n    services:\n"
        );
        for v in ["a:1.0.0", "b:1.1.0"] {
            let _ = write!(
                s,
                "      - breed:\n          name: s{c}{v}\n          deployable: magneticio/sava:1.0.0\n          ports: {{web: 8080/http}}\n          environment_variables: {{HEAP: 512MB, URL: \"http://$$host\"}}\n        scale: {{cpu: 0.2, memory: 256MB, instances: 2}}\n"
            );
        }
    }
    s
}

fn bench_dsl(c: &mut Criterion) {
    let mut g = c.benchmark_group("dsl");
    for n in [1usize, 10, 100] {
        let text = blueprint(n);
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("load_yaml", n), &text, |b, t| {
            b.iter(|| load_documents(black_box(t)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("read_blueprint", n), &text, |b, t| {
            b.iter(|| read_str(black_box(t), Some(ArtifactKind::Blueprint)).unwrap())
        });
        let artifact = read_str(&text, None).unwrap().remove(0);
        g.bench_with_input(BenchmarkId::new("write_yaml", n), &artifact, |b, a| {
            b.iter(|| to_yaml(black_box(a)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_dsl);
criterion_main!(benches);
