//! Unit values of the DSL: percentages (`50%`), memory (`512MB`), CPU quantities (`0.5`,
//! `500m`) and durations (`10s`, `1m`, `2hours`).
//!
//! Parsing follows Vamp's `UnitValue`, with two deliberate fixes recorded in
//! `COMPATIBILITY.md`: binary units are exact (`Ki` = 1024 bytes, `Mi` = 1024², `Gi` = 1024³;
//! Vamp computed `Mi` as ×1.024 and rejected `Gi`).

use std::fmt;
use std::sync::OnceLock;

use regex::Regex;

/// A percentage 0..=100, written `N%` (a string in the DSL; a bare integer is rejected).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percentage(pub u8);

impl Percentage {
    /// Parses `"50%"`, `" 50 %"`. Fails for numbers without `%`, negatives, fractions, > 100.
    ///
    /// ```
    /// use vamp_core::units::Percentage;
    /// assert_eq!(Percentage::parse(" 50 %"), Some(Percentage(50)));
    /// assert_eq!(Percentage::parse("100"), None);
    /// assert_eq!(Percentage::parse("101%"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Self> {
        static RE: OnceLock<Regex> = OnceLock::new();
        let re = RE.get_or_init(|| Regex::new(r"^\s*(\d{1,3})\s*%\s*$").expect("static regex"));
        let caps = re.captures(s)?;
        let v: u16 = caps[1].parse().ok()?;
        (v <= 100).then_some(Self(v as u8))
    }

    /// The value 0..=100.
    pub fn value(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Percentage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// Memory in megabytes (10⁶ bytes), written `512MB`, `0.5GB`, `128Mi`, `1Gi`, `64KB`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct MegaByte(pub f64);

impl MegaByte {
    /// Parses a memory string. Units are case-insensitive: `K`/`KB` (10³ bytes), `Ki` (2¹⁰),
    /// `M`/`MB` (10⁶), `Mi` (2²⁰), `G`/`GB` (10⁹), `Gi` (2³⁰). A unit is required.
    ///
    /// ```
    /// use vamp_core::units::MegaByte;
    /// assert_eq!(MegaByte::parse(".5GB"), Some(MegaByte(500.0)));
    /// assert_eq!(MegaByte::parse("128 mb"), Some(MegaByte(128.0)));
    /// assert_eq!(MegaByte::parse("128"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Self> {
        static RE: OnceLock<Regex> = OnceLock::new();
        let re = RE.get_or_init(|| {
            Regex::new(r"(?i)^\s*(\d*\.?\d*)\s*(kb|ki|k|mb|mi|m|gb|gi|g)\s*$")
                .expect("static regex")
        });
        let caps = re.captures(s)?;
        let number = &caps[1];
        if !number.bytes().any(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: f64 = number.parse().ok()?;
        let factor = match caps[2].to_ascii_lowercase().as_str() {
            "k" | "kb" => 1e-3,
            "ki" => 1024.0 / 1e6,
            "m" | "mb" => 1.0,
            "mi" => 1_048_576.0 / 1e6,
            "g" | "gb" => 1e3,
            "gi" => 1_073_741_824.0 / 1e6,
            _ => return None,
        };
        let v = n * factor;
        v.is_finite().then_some(Self(v))
    }

    /// Vamp's normalised form, `"%.2fMB"`.
    pub fn normalized(self) -> String {
        format!("{:.2}MB", self.0)
    }

    /// The value in megabytes.
    pub fn value(self) -> f64 {
        self.0
    }
}

impl fmt::Display for MegaByte {
    /// Writes the exact value with the `MB` unit (`512MB`, `0.131072MB`), which reads back equal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}MB", self.0)
    }
}

/// A CPU quantity: a number of cores, or milli-cores with `m` (`500m` = 0.5).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Quantity(pub f64);

impl Quantity {
    /// Parses `"0.5"`, `" 1m "`, `".1"`, `"-0.1"`.
    ///
    /// ```
    /// use vamp_core::units::Quantity;
    /// assert_eq!(Quantity::parse(" 1m "), Some(Quantity(0.001)));
    /// assert_eq!(Quantity::parse("-.1 "), Some(Quantity(-0.1)));
    /// assert_eq!(Quantity::parse("x"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Self> {
        static RE: OnceLock<Regex> = OnceLock::new();
        let re = RE.get_or_init(|| {
            Regex::new(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$").expect("static regex")
        });
        let t = s.trim();
        let (number, milli) = match t.strip_suffix('m') {
            Some(n) => (n.trim(), true),
            None => (t, false),
        };
        if !re.is_match(number) {
            return None;
        }
        let v: f64 = number.parse().ok()?;
        let v = if milli { v / 1000.0 } else { v };
        v.is_finite().then_some(Self(v))
    }

    /// Vamp's normalised form, `"%.2f"`.
    pub fn normalized(self) -> String {
        format!("{:.2}", self.0)
    }

    /// The value in cores.
    pub fn value(self) -> f64 {
        self.0
    }
}

/// Parses a duration string in seconds: `10s`/`sec`/`second`/`seconds`, `1m`/`min`/`minute`/
/// `minutes`, `2h`/`hrs`/`hour`/`hours`.
///
/// ```
/// use vamp_core::units::parse_time;
/// assert_eq!(parse_time("5minutes"), Some(300));
/// assert_eq!(parse_time("2hrs"), Some(7200));
/// assert_eq!(parse_time("10"), None);
/// ```
pub fn parse_time(s: &str) -> Option<i64> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^(\d+)\s*(s|sec|second|seconds|m|min|minute|minutes|h|hrs|hour|hours)$")
            .expect("static regex")
    });
    let caps = re.captures(s.trim())?;
    let n: i64 = caps[1].parse().ok()?;
    let factor = match &caps[2] {
        "s" | "sec" | "second" | "seconds" => 1,
        "m" | "min" | "minute" | "minutes" => 60,
        _ => 3600,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    // reader-fixtures.md §10 UnitValueSpec.
    #[test]
    fn percentage() {
        for (s, v) in [("0 %", 0), (" 50 %", 50), ("100%", 100)] {
            assert_eq!(Percentage::parse(s), Some(Percentage(v)), "{s}");
        }
        for s in ["x", "-50", "1.5", "100", "101%", "1.5%"] {
            assert_eq!(Percentage::parse(s), None, "{s}");
        }
    }

    #[test]
    fn megabyte() {
        let cases = [
            ("128mb", 128.0),
            (" 128mb ", 128.0),
            (" 128 mb ", 128.0),
            (".1m", 0.1),
            ("10.1Mb", 10.1),
            ("64.MB", 64.0),
            (".1gb", 100.0),
            (".1gB", 100.0),
            ("1GB", 1000.0),
            ("1.5G", 1500.0),
            ("128KB ", 0.128),
        ];
        for (s, v) in cases {
            let got = MegaByte::parse(s).unwrap_or_else(|| panic!("{s}")).0;
            assert!((got - v).abs() < 1e-9, "{s}: {got} != {v}");
        }
        // Vamp's test compares normalised text for Ki; ours is exact (0.131072 MB).
        assert_eq!(MegaByte::parse("128Ki ").unwrap().normalized(), "0.13MB");
        assert_eq!(MegaByte::parse("128KB ").unwrap().normalized(), "0.13MB");
        // Deliberate difference: Mi is 2^20 bytes (Vamp: ×1.024 → 131.072), Gi is supported.
        assert!((MegaByte::parse(" 128 Mi ").unwrap().0 - 134.217728).abs() < 1e-9);
        assert!((MegaByte::parse(" 128 mi ").unwrap().0 - 134.217728).abs() < 1e-9);
        assert!((MegaByte::parse("1Gi").unwrap().0 - 1073.741824).abs() < 1e-9);
        for s in ["1", "-1", "1Tb", ".", "", "MB", "-1MB"] {
            assert_eq!(MegaByte::parse(s), None, "{s}");
        }
    }

    #[test]
    fn quantity() {
        let cases = [
            ("128", 128.0),
            ("-128.5", -128.5),
            (" 1m ", 0.001),
            (" 0.1 ", 0.1),
            (".1", 0.1),
            ("-0.1 ", -0.1),
            ("-.1 ", -0.1),
        ];
        for (s, v) in cases {
            assert_eq!(Quantity::parse(s), Some(Quantity(v)), "{s}");
        }
        for s in ["x", "", "NaN", "Infinity", "1e999", "m"] {
            assert_eq!(Quantity::parse(s), None, "{s}");
        }
    }

    #[test]
    fn time() {
        let cases = [
            ("1sec", 1),
            ("20s", 20),
            ("1second", 1),
            ("2seconds", 2),
            ("20m", 1200),
            ("1min", 60),
            ("1minute", 60),
            ("5minutes", 300),
            ("1h", 3600),
            ("2hrs", 7200),
            ("1hour", 3600),
            ("4hours", 14400),
        ];
        for (s, v) in cases {
            assert_eq!(parse_time(s), Some(v), "{s}");
        }
        for s in ["", "10", "s", "1d", "-1s"] {
            assert_eq!(parse_time(s), None, "{s}");
        }
    }
}
