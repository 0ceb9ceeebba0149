//! Rendering gateways to HAProxy configuration, next to the time `haproxy -c` takes to check
//! the same output (same machine, same run).
//!
//! `cargo bench -p vamp-benches --bench haproxy`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use vamp_core::model::*;
use vamp_core::units::Percentage;
use vamp_haproxy::{BASE_CONFIG, RenderOptions, render};

/// `n` gateways with 4 routes each (weights 70/10/10/10), one conditional route and one
/// target per route.
fn gateways(n: usize) -> Vec<Gateway> {
    (0..n)
        .map(|i| {
            let mut g = Gateway::new(Port::new("", Some((10_000 + i).to_string())).expect("port"));
            g.name = format!("bench/{i}/web");
            g.routes = (0..4)
                .map(|r| {
                    let mut d = DefaultRoute::new(format!("bench/{i}/svc{r}:1.0.0/web"));
                    d.weight = Some(Percentage(if r == 0 { 70 } else { 10 }));
                    if r == 1 {
                        d.condition = Some(Ref::Inline(DefaultCondition {
                            name: String::new(),
                            metadata: Default::default(),
                            definition: "user-agent = Chrome and has cookie beta".into(),
                        }));
                        d.condition_strength = Some(Percentage(50));
                    }
                    d.targets = vec![RouteTarget::Internal {
                        name: format!("i{i}-{r}"),
                        host: Some("127.0.0.1".into()),
                        port: 30_000 + r,
                    }];
                    Route::Default(d)
                })
                .collect();
            g
        })
        .collect()
}

/// A weight change of one gateway: its first two routes to 60/20 or back to 70/10 (the text
/// keeps its length).
fn flip_weights(g: &mut Gateway, flip: bool) {
    set_weights(g, if flip { (60, 20) } else { (70, 10) });
}

/// The weights of a gateway's first two routes.
fn set_weights(g: &mut Gateway, (first, second): (u8, u8)) {
    for (r, weight) in [(0, first), (1, second)] {
        if let Route::Default(d) = &mut g.routes[r] {
            d.weight = Some(Percentage(weight));
        }
    }
}

fn haproxy_check_time(config: &str) -> Option<(Duration, bool, String)> {
    let path = std::env::temp_dir().join(format!("vamp-bench-{}.cfg", std::process::id()));
    std::fs::write(&path, format!("{BASE_CONFIG}\n{config}")).ok()?;
    let start = Instant::now();
    let out = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .ok()?;
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(&path);
    let message = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("ALERT"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" | ");
    Some((elapsed, out.status.success(), message))
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let sizes = [1_000usize, 10_000];
    let opts = RenderOptions::default();
    {
        let mut g = c.benchmark_group("haproxy_render");
        g.sample_size(10);
        for &n in &sizes {
            let input = gateways(n);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new("gateways", n), &input, |b, input| {
                b.iter(|| render(black_box(input), &opts).expect("render").render())
            });
            // The two halves: gateways to sections (names, conditions, weights), and the text.
            g.bench_with_input(BenchmarkId::new("sections", n), &input, |b, input| {
                b.iter(|| render(black_box(input), &opts).expect("render"))
            });
            let sections = render(&input, &opts).expect("render");
            g.bench_with_input(BenchmarkId::new("text", n), &sections, |b, sections| {
                b.iter(|| black_box(sections).render())
            });
        }
        g.finish();
    }
    {
        // One gateway's weights changed among n held: the incremental renderer re-renders that
        // gateway and assembles the text from the kept pieces (issue 13's target: under 1 ms
        // at 10,000 gateways), next to the full render above.
        let mut g = c.benchmark_group("haproxy_render_one_change");
        g.sample_size(20);
        for &n in &sizes {
            let input = gateways(n);
            let mut inc =
                vamp_haproxy::incremental::IncrementalRenderer::new(opts.clone()).expect("options");
            for gw in &input {
                inc.upsert(gw).expect("render");
            }
            let mut changed = input[n / 2].clone();
            let mut flip = false;
            g.bench_function(BenchmarkId::new("gateways", n), |b| {
                b.iter(|| {
                    flip = !flip;
                    flip_weights(&mut changed, flip);
                    inc.upsert(black_box(&changed)).expect("render");
                    black_box(inc.render())
                })
            });
            // Into a buffer kept between renders (no fresh 58 MiB allocation each time).
            let mut buffer = String::new();
            g.bench_function(BenchmarkId::new("into_kept_buffer", n), |b| {
                b.iter(|| {
                    flip = !flip;
                    flip_weights(&mut changed, flip);
                    inc.upsert(black_box(&changed)).expect("render");
                    inc.render_into(&mut buffer);
                    black_box(buffer.len())
                })
            });
            // The text kept assembled, the changed gateway's pieces written over their old
            // ones: a change of the same length, and one of another length (75/5 against
            // 70/10: the text after the gateway moves).
            let _ = inc.text();
            g.bench_function(BenchmarkId::new("kept_assembled", n), |b| {
                b.iter(|| {
                    flip = !flip;
                    flip_weights(&mut changed, flip);
                    inc.upsert(black_box(&changed)).expect("render");
                    black_box(inc.text().len())
                })
            });
            g.bench_function(BenchmarkId::new("kept_assembled_other_length", n), |b| {
                b.iter(|| {
                    flip = !flip;
                    set_weights(&mut changed, if flip { (75, 5) } else { (70, 10) });
                    inc.upsert(black_box(&changed)).expect("render");
                    black_box(inc.text().len())
                })
            });
            // The piece alone: re-rendering the changed gateway, without the assembly.
            g.bench_function(BenchmarkId::new("upsert_only", n), |b| {
                b.iter(|| inc.upsert(black_box(&changed)).expect("render"))
            });
        }
        g.finish();
    }
    {
        // The gateway driver's push with one gateway changed among n: it renders and
        // serialises only that gateway (IncrementalRenderer per marshaller), reads the
        // store's current values and writes the configuration (in-memory store); next to
        // `plan_push`, which renders and serialises all of them, as the driver did before.
        let mut g = c.benchmark_group("driver_push_one_change");
        g.sample_size(10);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let marshallers = vec![vamp_haproxy::driver::Marshaller::new("1.7")];
        for &n in &sizes {
            let mut input = gateways(n);
            let kv: std::sync::Arc<vamp_core::kv::DynKeyValueStore> =
                std::sync::Arc::new(vamp_core::memory::InMemoryKv::new());
            let driver = vamp_haproxy::driver::GatewayDriver::new(kv, "bench", marshallers.clone());
            rt.block_on(driver.push(&input)).expect("push");
            let mut flip = false;
            let mut change = |input: &mut Vec<Gateway>| {
                flip = !flip;
                flip_weights(&mut input[n / 2], flip);
            };
            g.bench_function(BenchmarkId::new("incremental", n), |b| {
                b.iter(|| {
                    change(&mut input);
                    rt.block_on(driver.push(black_box(&input))).expect("push")
                })
            });
            g.bench_function(BenchmarkId::new("full_plan", n), |b| {
                b.iter(|| {
                    change(&mut input);
                    vamp_haproxy::driver::plan_push(black_box(&input), &marshallers, None, &[None])
                        .expect("plan")
                })
            });
        }
        g.finish();
    }
    {
        // The agent checks every value against the allow-list before anything else.
        let mut g = c.benchmark_group("haproxy_allow_list");
        g.sample_size(10);
        let policy = vamp_haproxy::allow::AllowPolicy::new(opts.socket_dir.as_str());
        for &n in &sizes {
            let config = render(&gateways(n), &opts).expect("render").render();
            g.throughput(Throughput::Bytes(config.len() as u64));
            g.bench_with_input(BenchmarkId::new("gateways", n), &config, |b, config| {
                b.iter(|| vamp_haproxy::allow::check(black_box(config), &policy).expect("allowed"))
            });
        }
        g.finish();
    }
    {
        // Conditions at the documented maximum of 12 distinct tests: the minimiser's worst
        // cases (exact minimisation past its budget falls back to the condition's own form).
        let test = |i: usize| match i % 4 {
            0 => format!("has header h{i}"),
            1 => format!("misses cookie c{i}"),
            2 => format!("host = host{i}.example"),
            _ => format!("<path_beg /p{i}>"),
        };
        let all: Vec<String> = (0..12).map(test).collect();
        let cases = [
            ("nand_12", format!("not ({})", all.join(" and "))),
            (
                "pairs_12",
                (0..6)
                    .map(|i| format!("({} and {})", all[2 * i], all[(2 * i + 3) % 12]))
                    .collect::<Vec<_>>()
                    .join(" or "),
            ),
            (
                "and_of_ors_8",
                (0..4)
                    .map(|i| format!("({} or {})", all[2 * i], all[2 * i + 1]))
                    .collect::<Vec<_>>()
                    .join(" and "),
            ),
            (
                "and_of_ors_12",
                (0..6)
                    .map(|i| format!("({} or {})", all[2 * i], all[2 * i + 1]))
                    .collect::<Vec<_>>()
                    .join(" and "),
            ),
        ];
        let mut g = c.benchmark_group("haproxy_condition");
        g.sample_size(10);
        for (name, condition) in &cases {
            g.bench_with_input(BenchmarkId::new("resolve", name), condition, |b, c| {
                b.iter(|| vamp_haproxy::acl::resolve(black_box(c)).expect("resolves"))
            });
        }
        g.finish();
    }
    c.final_summary();
    for &n in &sizes {
        let config = render(&gateways(n), &opts).expect("render").render();
        match haproxy_check_time(&config) {
            Some((t, ok, msg)) => println!(
                "haproxy -c on {n} gateways ({} KiB): {:.3} s, {}{}",
                config.len() / 1024,
                t.as_secs_f64(),
                if ok { "valid" } else { "REJECTED" },
                if msg.is_empty() {
                    String::new()
                } else {
                    format!(" ({msg})")
                }
            ),
            None => println!("haproxy -c on {n} gateways: HAProxy not installed"),
        }
    }
}
