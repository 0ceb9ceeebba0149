//! `canary-policies`: the DSL of a [`CanaryPolicy`], an extension of Vamp's DSL (Vamp had no
//! such artifact). Read, validated and written like the others.
//!
//! ```yaml
//! kind: canary-policies
//! name: sava-canary
//! gateway: sava/sava/webport              # the gateway whose weights move
//! stable: sava/sava/sava:1.0/webport      # route paths in that gateway
//! canary: sava/sava/sava:1.1/webport
//! steps: [10%, 25%, 50%, 100%]            # or: step: 10%  maximum: 100%
//! interval: 30s                           # between checks (ms, s, m, h; a number is seconds)
//! failures: 2                             # failed checks in a row before the rollback (default 2)
//! minimum_requests: 50                    # per compared route and check (default 50)
//! gates:
//!   error_rate: 5%                        # absolute: the canary's share of 5xx
//!   response_time: {percentile: 95, maximum: 500ms}
//!   relative:                             # the canary against the stable route, same interval
//!     error_rate: 1%                      # margin
//!     response_time: {percentile: 95, margin: 20%}
//!   confidence: 95%                       # of the statistical tests (default 95%)
//! slice_stable: true                      # after promotion, slice the stable service out
//! sticky: false                           # cookie stickiness while the release runs
//! status: {phase: progressing, step: 1}   # written by the control plane
//! ```
//!
//! Percentages may have decimals (`0.5%`). Errors are `InvalidCanaryPolicyError` naming the
//! field, or Vamp's `MissingPathValueError` / `UnexpectedTypeError`.

use super::source::*;
use crate::error::{Notification as N, ReadResult};
use crate::model::*;
use crate::node::{Map, Node};

fn invalid<T>(path: &str, message: impl Into<String>) -> ReadResult<T> {
    err(
        N::InvalidCanaryPolicyError {
            message: format!("{path}: {}", message.into()),
        },
        path,
    )
}

/// A percentage (`5%`, `0.5%`, or a number taken as percent) as a fraction of 1.
fn fraction(n: &Node, path: &str) -> ReadResult<f64> {
    let value = match n {
        Node::Int(i) => *i as f64,
        Node::Float(f) => *f,
        other => {
            let text = node_string(other, path)?;
            let Some(number) = text.trim().strip_suffix('%') else {
                return invalid(path, format!("'{text}' is not a percentage"));
            };
            match number.trim().parse::<f64>() {
                Ok(v) => v,
                Err(_) => return invalid(path, format!("'{text}' is not a percentage")),
            }
        }
    };
    if !(0.0..=100.0).contains(&value) || !value.is_finite() {
        return invalid(path, format!("{value}% is outside 0–100%"));
    }
    Ok(value / 100.0)
}

/// A duration in milliseconds: `500ms`, `30s`, `5m`, `1h`, or a number of seconds.
fn millis(n: &Node, path: &str) -> ReadResult<i64> {
    let (number, factor) = match n {
        Node::Int(i) => (*i as f64, 1000.0),
        Node::Float(f) => (*f, 1000.0),
        other => {
            let text = node_string(other, path)?;
            let t = text.trim();
            let split = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let factor = match t[split..].trim() {
                "" | "s" => 1000.0,
                "ms" => 1.0,
                "m" => 60_000.0,
                "h" => 3_600_000.0,
                _ => return invalid(path, format!("'{text}' is not a duration (ms, s, m, h)")),
            };
            match t[..split].parse::<f64>() {
                Ok(v) => (v, factor),
                Err(_) => return invalid(path, format!("'{text}' is not a duration")),
            }
        }
    };
    let ms = number * factor;
    if !ms.is_finite() || !(0.0..=1e12).contains(&ms) {
        return invalid(path, format!("{number} is not a usable duration"));
    }
    Ok(ms.round() as i64)
}

fn percentile(m: &mut Map, path: &str) -> ReadResult<f64> {
    let p = join(path, "percentile");
    let value = match take(m, "percentile") {
        None => 95.0,
        Some(Node::Int(i)) => i as f64,
        Some(Node::Float(f)) => f,
        Some(other) => fraction(&other, &p)? * 100.0,
    };
    if !(value > 0.0 && value < 100.0) {
        return invalid(&p, format!("{value} is not a percentile between 0 and 100"));
    }
    Ok(value)
}

fn map_at(n: Node, path: &str) -> ReadResult<Map> {
    match n {
        Node::Map(m) => Ok(m),
        other => err(
            N::UnexpectedTypeError {
                path: path.to_owned(),
                expected: "Map".into(),
                actual: other.type_name().into(),
            },
            path,
        ),
    }
}

fn done(m: Map, path: &str) -> ReadResult<()> {
    if let Some((key, _)) = m.into_iter().next() {
        return invalid(&join(path, &key), "unexpected field");
    }
    Ok(())
}

fn gates(n: Node, path: &str) -> ReadResult<CanaryGates> {
    let mut m = map_at(n, path)?;
    let mut g = CanaryGates {
        confidence: 0.95,
        ..CanaryGates::default()
    };
    if let Some(e) = take(&mut m, "error_rate") {
        g.max_error_rate = Some(fraction(&e, &join(path, "error_rate"))?);
    }
    if let Some(r) = take(&mut m, "response_time") {
        let rp = join(path, "response_time");
        let mut rm = map_at(r, &rp)?;
        let p = percentile(&mut rm, &rp)?;
        let max = take(&mut rm, "maximum").ok_or_else(|| missing(&join(&rp, "maximum")))?;
        let max = millis(&max, &join(&rp, "maximum"))? as f64;
        done(rm, &rp)?;
        g.max_response_time = Some((p, max));
    }
    if let Some(rel) = take(&mut m, "relative") {
        let relp = join(path, "relative");
        let mut rel = map_at(rel, &relp)?;
        if let Some(e) = take(&mut rel, "error_rate") {
            g.relative_error_rate = Some(fraction(&e, &join(&relp, "error_rate"))?);
        }
        if let Some(r) = take(&mut rel, "response_time") {
            let rp = join(&relp, "response_time");
            let mut rm = map_at(r, &rp)?;
            let p = percentile(&mut rm, &rp)?;
            let margin = take(&mut rm, "margin").ok_or_else(|| missing(&join(&rp, "margin")))?;
            let margin = fraction(&margin, &join(&rp, "margin"))?;
            done(rm, &rp)?;
            g.relative_response_time = Some((p, margin));
        }
        done(rel, &relp)?;
    }
    if let Some(c) = take(&mut m, "confidence") {
        let cp = join(path, "confidence");
        g.confidence = fraction(&c, &cp)?;
        if !(0.5..=0.9999).contains(&g.confidence) {
            return invalid(&cp, "the confidence must be between 50% and 99.99%");
        }
    }
    done(m, path)?;
    Ok(g)
}

fn steps(m: &mut Map, path: &str) -> ReadResult<Vec<u8>> {
    let whole = |f: f64, p: &str| -> ReadResult<u8> {
        let pct = (f * 100.0).round();
        if pct < 1.0 || (f * 100.0 - pct).abs() > 1e-9 {
            return invalid(p, "a step is a whole percentage from 1% to 100%");
        }
        Ok(pct as u8)
    };
    let out = if let Some(list) = take(m, "steps") {
        let sp = join(path, "steps");
        let Node::Seq(items) = list else {
            return invalid(&sp, "a list of percentages");
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = join(&sp, &i.to_string());
            out.push(whole(fraction(item, &ip)?, &ip)?);
        }
        out
    } else {
        let step = take(m, "step").ok_or_else(|| missing(&join(path, "steps")))?;
        let step = whole(fraction(&step, &join(path, "step"))?, &join(path, "step"))?;
        let maximum = match take(m, "maximum") {
            None => 100,
            Some(n) => whole(
                fraction(&n, &join(path, "maximum"))?,
                &join(path, "maximum"),
            )?,
        };
        if maximum < step {
            return invalid(&join(path, "maximum"), "the maximum is below the step");
        }
        let mut out: Vec<u8> = (1..)
            .map(|i| u32::from(step) * i)
            .take_while(|w| *w <= u32::from(maximum))
            .map(|w| w as u8)
            .collect();
        if out.last() != Some(&maximum) {
            out.push(maximum);
        }
        out
    };
    if out.is_empty() {
        return invalid(&join(path, "steps"), "at least one step");
    }
    if out.windows(2).any(|w| w[0] >= w[1]) {
        return invalid(&join(path, "steps"), "steps must increase");
    }
    Ok(out)
}

fn status(n: Node, path: &str, steps: usize) -> ReadResult<CanaryStatus> {
    let mut m = map_at(n, path)?;
    let phase = match string(&mut m, "phase", path)? {
        None => CanaryPhase::Pending,
        Some(p) => match CanaryPhase::parse(&p) {
            Some(p) => p,
            None => return invalid(&join(path, "phase"), format!("unknown phase '{p}'")),
        },
    };
    let step = match int(&mut m, "step", path)? {
        None => None,
        Some(s) if s >= 0 && (s as usize) < steps => Some(s as usize),
        Some(s) => return invalid(&join(path, "step"), format!("no step {s}")),
    };
    let failed_checks = int(&mut m, "failed_checks", path)?.unwrap_or(0);
    let time = |m: &mut Map, key: &str| -> ReadResult<Option<i64>> {
        match string(m, key, path)? {
            None => Ok(None),
            Some(t) => crate::time::parse_millis(&t).map(Some).ok_or_else(|| {
                crate::error::ReadError::new(
                    N::InvalidCanaryPolicyError {
                        message: format!("{}: '{t}' is not a date-time", join(path, key)),
                    },
                    join(path, key),
                )
            }),
        }
    };
    let since_ms = time(&mut m, "since")?;
    let last_check_ms = time(&mut m, "last_check")?;
    let reason = string(&mut m, "reason", path)?;
    done(m, path)?;
    Ok(CanaryStatus {
        phase,
        step,
        failed_checks: u32::try_from(failed_checks.max(0)).unwrap_or(u32::MAX),
        since_ms,
        last_check_ms,
        reason,
    })
}

/// Reads a canary policy.
pub(crate) fn canary_policy(m: &mut Map, path: &str) -> ReadResult<CanaryPolicy> {
    let name = req_string(m, "name", path)?;
    validate_name(&name, &join(path, "name"))?;
    kind_check(m, "canary-policies", path)?;
    let metadata = metadata(m, path)?;
    let gateway = req_string(m, "gateway", path)?;
    let stable = req_string(m, "stable", path)?;
    let canary = req_string(m, "canary", path)?;
    if stable == canary {
        return invalid(
            &join(path, "canary"),
            "the canary and the stable route are the same",
        );
    }
    for (key, value) in [
        ("gateway", &gateway),
        ("stable", &stable),
        ("canary", &canary),
    ] {
        if value.trim().is_empty() {
            return invalid(&join(path, key), "must not be empty");
        }
    }
    let steps = steps(m, path)?;
    let interval_ms = match take(m, "interval") {
        None => 30_000,
        Some(n) => millis(&n, &join(path, "interval"))?,
    };
    if interval_ms < 1000 {
        return invalid(&join(path, "interval"), "at least one second");
    }
    let failures = match int(m, "failures", path)? {
        None => 2,
        Some(f) if f >= 1 => u32::try_from(f).unwrap_or(u32::MAX),
        Some(f) => return invalid(&join(path, "failures"), format!("{f}: at least 1")),
    };
    let minimum_requests = match int(m, "minimum_requests", path)? {
        None => 50,
        Some(n) if n >= 1 => n as u64,
        Some(n) => return invalid(&join(path, "minimum_requests"), format!("{n}: at least 1")),
    };
    let gates = match take(m, "gates") {
        None => CanaryGates {
            confidence: 0.95,
            ..CanaryGates::default()
        },
        Some(n) => gates(n, &join(path, "gates"))?,
    };
    let slice_stable = boolean(m, "slice_stable", path)?.unwrap_or(false);
    let sticky = boolean(m, "sticky", path)?.unwrap_or(false);
    let status = match take(m, "status") {
        None => CanaryStatus::default(),
        Some(n) => status(n, &join(path, "status"), steps.len())?,
    };
    Ok(CanaryPolicy {
        name,
        metadata,
        gateway,
        stable,
        canary,
        steps,
        interval_ms,
        failures,
        minimum_requests,
        gates,
        slice_stable,
        sticky,
        status,
    })
}

fn pct(f: f64) -> Node {
    let v = (f * 100.0 * 1e6).round() / 1e6;
    Node::Str(format!("{}%", crate::node::format_float(v)))
}

fn ms(v: f64) -> Node {
    Node::Str(format!("{}ms", crate::node::format_float(v)))
}

/// The canonical form of a canary policy.
pub(crate) fn canary_policy_node(c: &CanaryPolicy) -> Node {
    let mut m = Map::new();
    m.insert("kind".into(), Node::Str("canary-policies".into()));
    m.insert("name".into(), Node::Str(c.name.clone()));
    if !c.metadata.is_empty() {
        m.insert("metadata".into(), Node::Map(c.metadata.clone()));
    }
    m.insert("gateway".into(), Node::Str(c.gateway.clone()));
    m.insert("stable".into(), Node::Str(c.stable.clone()));
    m.insert("canary".into(), Node::Str(c.canary.clone()));
    m.insert(
        "steps".into(),
        Node::Seq(c.steps.iter().map(|s| Node::Str(format!("{s}%"))).collect()),
    );
    m.insert("interval".into(), Node::Str(format!("{}ms", c.interval_ms)));
    m.insert("failures".into(), Node::Int(i64::from(c.failures)));
    m.insert(
        "minimum_requests".into(),
        Node::Int(i64::try_from(c.minimum_requests).unwrap_or(i64::MAX)),
    );
    let g = &c.gates;
    let mut gm = Map::new();
    if let Some(e) = g.max_error_rate {
        gm.insert("error_rate".into(), pct(e));
    }
    if let Some((p, max)) = g.max_response_time {
        let mut r = Map::new();
        r.insert("percentile".into(), Node::Float(p));
        r.insert("maximum".into(), ms(max));
        gm.insert("response_time".into(), Node::Map(r));
    }
    let mut rel = Map::new();
    if let Some(e) = g.relative_error_rate {
        rel.insert("error_rate".into(), pct(e));
    }
    if let Some((p, margin)) = g.relative_response_time {
        let mut r = Map::new();
        r.insert("percentile".into(), Node::Float(p));
        r.insert("margin".into(), pct(margin));
        rel.insert("response_time".into(), Node::Map(r));
    }
    if !rel.is_empty() {
        gm.insert("relative".into(), Node::Map(rel));
    }
    gm.insert("confidence".into(), pct(g.confidence));
    m.insert("gates".into(), Node::Map(gm));
    m.insert("slice_stable".into(), Node::Bool(c.slice_stable));
    m.insert("sticky".into(), Node::Bool(c.sticky));
    let s = &c.status;
    let mut sm = Map::new();
    sm.insert("phase".into(), Node::Str(s.phase.as_str().into()));
    if let Some(step) = s.step {
        sm.insert("step".into(), Node::Int(step as i64));
    }
    sm.insert(
        "failed_checks".into(),
        Node::Int(i64::from(s.failed_checks)),
    );
    if let Some(t) = s.since_ms {
        sm.insert(
            "since".into(),
            Node::Str(crate::time::format_epoch_millis(t)),
        );
    }
    if let Some(t) = s.last_check_ms {
        sm.insert(
            "last_check".into(),
            Node::Str(crate::time::format_epoch_millis(t)),
        );
    }
    if let Some(r) = &s.reason {
        sm.insert("reason".into(), Node::Str(r.clone()));
    }
    m.insert("status".into(), Node::Map(sm));
    Node::Map(m)
}

#[cfg(test)]
mod tests {
    use crate::dsl::{AnyArtifact, read_str, to_yaml};
    use crate::model::*;

    fn read(yaml: &str) -> Result<CanaryPolicy, String> {
        match read_str(yaml, Some(ArtifactKind::CanaryPolicy)) {
            Ok(mut v) => match v.remove(0) {
                AnyArtifact::CanaryPolicy(c) => Ok(c),
                other => Err(format!("{other:?}")),
            },
            Err(e) => Err(e.to_string()),
        }
    }

    const FULL: &str = "name: sava-canary
gateway: sava/sava/webport
stable: sava/sava/sava:1.0/webport
canary: sava/sava/sava:1.1/webport
steps: [10%, 25%, 50%, 100%]
interval: 30s
failures: 3
minimum_requests: 100
gates:
  error_rate: 5%
  response_time: {percentile: 95, maximum: 500ms}
  relative:
    error_rate: 0.5%
    response_time: {percentile: 99, margin: 20%}
  confidence: 99%
slice_stable: true
sticky: true
";

    #[test]
    fn a_policy_reads_with_every_field() {
        let c = read(FULL).unwrap();
        assert_eq!(c.steps, vec![10, 25, 50, 100]);
        assert_eq!(
            (c.interval_ms, c.failures, c.minimum_requests),
            (30_000, 3, 100)
        );
        assert_eq!(c.gates.max_error_rate, Some(0.05));
        assert_eq!(c.gates.max_response_time, Some((95.0, 500.0)));
        assert!((c.gates.relative_error_rate.unwrap() - 0.005).abs() < 1e-12);
        assert_eq!(c.gates.relative_response_time, Some((99.0, 0.2)));
        assert_eq!(c.gates.confidence, 0.99);
        assert!(c.slice_stable && c.sticky);
        assert_eq!(c.status, CanaryStatus::default());
    }

    #[test]
    fn the_canonical_form_reads_back_equal() {
        let mut c = read(FULL).unwrap();
        c.status = CanaryStatus {
            phase: CanaryPhase::Progressing,
            step: Some(2),
            failed_checks: 1,
            since_ms: Some(1_800_000_000_000),
            last_check_ms: Some(1_800_000_030_000),
            reason: Some("canary error rate 0.2% within 5%".into()),
        };
        let yaml = to_yaml(&AnyArtifact::CanaryPolicy(c.clone()));
        assert_eq!(read(&yaml).unwrap(), c, "{yaml}");
    }

    #[test]
    fn step_and_maximum_expand_to_steps() {
        let base = "name: c\ngateway: g\nstable: a\ncanary: b\n";
        assert_eq!(
            read(&format!("{base}step: 20%\n")).unwrap().steps,
            vec![20, 40, 60, 80, 100]
        );
        assert_eq!(
            read(&format!("{base}step: 30%\nmaximum: 50%\n"))
                .unwrap()
                .steps,
            vec![30, 50]
        );
    }

    #[test]
    fn invalid_policies_are_named_errors() {
        let base = "name: c\ngateway: g\nstable: a\ncanary: b\n";
        for (doc, needle) in [
            (format!("{base}steps: [50%, 20%]\n"), "steps must increase"),
            (format!("{base}steps: []\n"), "at least one step"),
            (format!("{base}steps: [0%]\n"), "whole percentage"),
            (format!("{base}steps: [101%]\n"), "outside 0–100%"),
            (
                format!("{base}step: 10%\ninterval: 10ms\n"),
                "at least one second",
            ),
            (format!("{base}step: 10%\nfailures: 0\n"), "at least 1"),
            (
                format!("{base}step: 10%\ngates: {{confidence: 20%}}\n"),
                "confidence",
            ),
            (
                format!(
                    "{base}step: 10%\ngates: {{response_time: {{percentile: 100, maximum: 1s}}}}\n"
                ),
                "percentile",
            ),
            (
                format!("{base}step: 10%\ngates: {{latency: 1s}}\n"),
                "unexpected field",
            ),
            (
                format!("{base}step: 10%\nstatus: {{phase: flying}}\n"),
                "unknown phase",
            ),
            (
                format!("{base}step: 10%\nstatus: {{step: 99}}\n"),
                "no step 99",
            ),
            (
                "name: c\ngateway: g\nstable: a\ncanary: a\nstep: 10%\n".into(),
                "the same",
            ),
            (format!("{base}step: 10%\nmaximum: 5%\n"), "below the step"),
            (
                format!("{base}step: 10%\ninterval: soon\n"),
                "not a duration",
            ),
        ] {
            let e = read(&doc).unwrap_err();
            assert!(e.contains(needle), "{doc}: {e}");
        }
        let e = read("name: c\nstable: a\ncanary: b\nstep: 10%\n").unwrap_err();
        assert!(e.contains("gateway"), "{e}");
    }
}
