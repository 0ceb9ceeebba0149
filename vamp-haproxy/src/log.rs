//! Parses the JSON log lines of Vamp's log formats back into records
//! ([`vamp_core::metrics::RequestRecord`]), so request metrics need no Elasticsearch.
//!
//! HAProxy does not escape captured values, so a quote in a header or request line can break
//! the JSON; the parser then falls back to reading the fields it needs one by one.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;
use vamp_core::metrics::RequestRecord;

/// One HAProxy log line in Vamp's format (HTTP fields are `None` for TCP lines and back).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogLine {
    /// `ci`: client IP.
    pub client_ip: Option<String>,
    /// `cp`: client port.
    pub client_port: Option<u64>,
    /// `t`: accept date, `dd/MMM/yyyy:HH:mm:ss.SSS`.
    pub accept_date: Option<String>,
    /// `ft`: frontend (a gateway's or route's lookup, `~` suffix with SSL).
    pub frontend: String,
    /// `b`: backend.
    pub backend: Option<String>,
    /// `s`: server.
    pub server: Option<String>,
    /// `Tq`: time to receive the request (ms, HTTP).
    pub tq: Option<i64>,
    /// `Tw`: time in queues (ms).
    pub tw: Option<i64>,
    /// `Tc`: time to connect (ms).
    pub tc: Option<i64>,
    /// `Tr`: server response time (ms, HTTP).
    pub tr: Option<i64>,
    /// `Tt`: total time (ms).
    pub tt: Option<i64>,
    /// `ST`: HTTP status.
    pub status: Option<u16>,
    /// `B`: bytes read from the server.
    pub bytes_read: Option<u64>,
    /// `CC`: captured request cookie.
    pub captured_request_cookie: Option<String>,
    /// `CS`: captured response cookie.
    pub captured_response_cookie: Option<String>,
    /// `tsc` (HTTP) or `ts` (TCP): termination state.
    pub termination_state: Option<String>,
    /// `ac`: active connections of the process.
    pub actconn: Option<u64>,
    /// `fc`: frontend connections.
    pub feconn: Option<u64>,
    /// `bc`: backend connections.
    pub beconn: Option<u64>,
    /// `sc`: server connections.
    pub srv_conn: Option<u64>,
    /// `rc`: retries.
    pub retries: Option<u64>,
    /// `sq`: server queue.
    pub srv_queue: Option<u64>,
    /// `bq`: backend queue.
    pub backend_queue: Option<u64>,
    /// `hr`: captured request headers.
    pub captured_request_headers: Option<String>,
    /// `hs`: captured response headers.
    pub captured_response_headers: Option<String>,
    /// `r`: the request line.
    pub request: Option<String>,
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

impl LogLine {
    fn from_json(m: &serde_json::Map<String, Value>) -> Option<Self> {
        let get = |k: &str| m.get(k);
        let u = |k: &str| get(k).and_then(int).and_then(|i| u64::try_from(i).ok());
        Some(Self {
            client_ip: get("ci").and_then(string),
            client_port: u("cp"),
            accept_date: get("t").and_then(string),
            frontend: get("ft").and_then(string)?,
            backend: get("b").and_then(string),
            server: get("s").and_then(string),
            tq: get("Tq").and_then(int),
            tw: get("Tw").and_then(int),
            tc: get("Tc").and_then(int),
            tr: get("Tr").and_then(int),
            tt: get("Tt").and_then(int),
            status: get("ST").and_then(int).and_then(|s| u16::try_from(s).ok()),
            bytes_read: u("B"),
            captured_request_cookie: get("CC").and_then(string),
            captured_response_cookie: get("CS").and_then(string),
            termination_state: get("tsc").or_else(|| get("ts")).and_then(string),
            actconn: u("ac"),
            feconn: u("fc"),
            beconn: u("bc"),
            srv_conn: u("sc"),
            retries: u("rc"),
            srv_queue: u("sq"),
            backend_queue: u("bq"),
            captured_request_headers: get("hr").and_then(string),
            captured_response_headers: get("hs").and_then(string),
            request: get("r").and_then(string),
        })
    }

    /// Parses a line: a syslog line (`<134>… haproxy[1]: {…}`) or the bare JSON.
    /// Returns `None` when it is not a Vamp log line.
    ///
    /// ```
    /// use vamp_haproxy::log::LogLine;
    /// let line = r#"<134>Nov 24 18:00:00 haproxy[7]: {"ci":"127.0.0.1","cp":5000,"t":"24/Nov/2026:18:00:00.123","ft":"abc","b":"o_abc","s":"r1","Tq":0,"Tw":0,"Tc":1,"Tr":2,"Tt":3,"ST":200,"B":42,"CC":"-","CS":"-","tsc":"----","ac":1,"fc":1,"bc":0,"sc":0,"rc":0,"sq":0,"bq":0,"hr":"","hs":"","r":"GET / HTTP/1.1"}"#;
    /// let l = LogLine::parse(line).unwrap();
    /// assert_eq!((l.frontend.as_str(), l.status, l.tt), ("abc", Some(200), Some(3)));
    /// ```
    pub fn parse(line: &str) -> Option<Self> {
        let start = line.find('{')?;
        let json = line[start..].trim_end();
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(json) {
            return Self::from_json(&m);
        }
        Self::parse_lenient(json)
    }

    /// Reads the fields one by one when captured text broke the JSON.
    fn parse_lenient(json: &str) -> Option<Self> {
        static NUM: OnceLock<Regex> = OnceLock::new();
        static STR: OnceLock<Regex> = OnceLock::new();
        let num = NUM.get_or_init(|| {
            Regex::new(r#""(cp|Tq|Tw|Tc|Tr|Tt|ST|B|ac|fc|bc|sc|rc|sq|bq)":(-?[0-9]+)"#)
                .expect("static regex")
        });
        let strs = STR.get_or_init(|| {
            Regex::new(r#""(ci|t|ft|b|s|tsc|ts)":"([^"\\]*)""#).expect("static regex")
        });
        let mut m = serde_json::Map::new();
        for c in num.captures_iter(json) {
            m.entry(c[1].to_owned())
                .or_insert_with(|| Value::from(c[2].parse::<i64>().unwrap_or(0)));
        }
        for c in strs.captures_iter(json) {
            m.entry(c[1].to_owned())
                .or_insert_with(|| Value::String(c[2].to_owned()));
        }
        Self::from_json(&m)
    }

    /// The accept date as milliseconds since the Unix epoch, reading HAProxy's local time as
    /// `utc_offset_minutes` east of UTC.
    pub fn accept_millis(&self, utc_offset_minutes: i32) -> Option<i64> {
        let t = self.accept_date.as_deref()?;
        // dd/MMM/yyyy:HH:mm:ss.SSS
        let (date, time) = t.split_once(':')?;
        let mut d = date.split('/');
        let (day, month, year) = (d.next()?, d.next()?, d.next()?);
        let month = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .iter()
        .position(|m| *m == month)?
            + 1;
        let iso = format!("{year}-{month:02}-{day}T{time}Z");
        vamp_core::time::parse_millis(&iso).map(|ms| ms - i64::from(utc_offset_minutes) * 60_000)
    }

    /// The request record for the metrics store.
    pub fn to_request(&self, utc_offset_minutes: i32) -> Option<RequestRecord> {
        Some(RequestRecord {
            timestamp_ms: self.accept_millis(utc_offset_minutes)?,
            frontend: self.frontend.trim_end_matches('~').to_owned(),
            backend: self.backend.clone().unwrap_or_default(),
            server: self.server.clone().filter(|s| s != "<NOSRV>"),
            status: self.status.filter(|s| *s > 0),
            total_time_ms: self.tt.and_then(|t| u64::try_from(t).ok()).unwrap_or(0),
            bytes_read: self.bytes_read.unwrap_or(0),
        })
    }
}
